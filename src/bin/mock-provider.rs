//! # mock-provider: a fault-injectable mock of the OpenAI and Anthropic HTTP APIs
//!
//! A test fixture for Tollgate. Integration tests start it on an ephemeral
//! loopback port to stand in for the upstream providers. The Python SDK
//! end-to-end tests talk to it through the gateway, and load tests hammer it.
//! It is a small HTTP/1.1 server written directly on tokio. There is no HTTP
//! library in between, so faults can be injected exactly.
//!
//! ## Running
//!
//! ```text
//! mock-provider [--listen 127.0.0.1:0] [--threads N] [--require-key K]
//!               [--latency-ms N] [--chunk-delay-ms N] [--tokens N]
//!               [--status CODE] [--fault LIST] [--no-record] [--log]
//! ```
//!
//! After binding, it prints exactly one line, `LISTENING <addr>`, to stdout
//! (flushed), then serves until it is killed. The `--latency-ms`,
//! `--chunk-delay-ms`, `--tokens`, `--status` and `--fault` flags (each also
//! accepted as `--default-*`) set the default for every request. The matching
//! header overrides the flag. `--no-record` turns off request recording for
//! long load runs. `--log` prints one line per request to stderr.
//!
//! ## Routes
//!
//! | route | provider |
//! | --- | --- |
//! | `POST /v1/chat/completions` | OpenAI chat completions (JSON, or SSE with `stream`) |
//! | `POST /v1/completions` | OpenAI legacy completions (JSON or SSE) |
//! | `POST /v1/embeddings` | OpenAI embeddings (`float` or `base64`) |
//! | `POST /v1/responses` | OpenAI Responses API (JSON or typed SSE events) |
//! | `POST /v1/messages` | Anthropic Messages (JSON or SSE) |
//! | `POST /v1/messages/count_tokens` | Anthropic token counting |
//! | `GET /v1/models` | OpenAI list, or Anthropic list when `anthropic-version` or `x-api-key` is sent |
//!
//! An unknown route gets a 404 in the provider's error shape. OpenAI routes
//! need `Authorization: Bearer <key>`. Anthropic routes need a key in
//! `x-api-key`, or in `Authorization: Bearer <key>` as the Python Anthropic
//! SDK 2.x sends it (401 if both are missing). They also need
//! `anthropic-version` (400 if missing, like the real API). Any non-empty key
//! is accepted unless `--require-key K` is given.
//!
//! ## Deterministic content
//!
//! The reply text is built from a fixed word list, one word per token and one
//! token per stream event. The output token count comes from the first of
//! these that is set: `x-mock-tokens`, the request's `max_completion_tokens` /
//! `max_tokens` / `max_output_tokens`, `--tokens`, or 8. It is capped at 4096.
//! Input tokens are `ceil(request_body_len / 4)`. Usage is the same in JSON
//! and stream replies. OpenAI chat and completions streams carry usage only
//! when the request asked for `"stream_options":{"include_usage":true}`. The
//! mock always stops naturally (`stop` / `end_turn` / `completed`).
//!
//! ## Control headers (per request)
//!
//! * `x-mock-latency-ms: N`: wait N ms before the response head.
//! * `x-mock-chunk-delay-ms: N`: wait N ms between stream events.
//! * `x-mock-tokens: N`: number of output tokens (overrides `max_tokens`).
//! * `x-mock-prompt-tokens: N`: report N input tokens instead of `ceil(body_len / 4)` (a
//!   provider whose count exceeds any bound, for overrun tests).
//! * `x-mock-cached-tokens: N`: OpenAI chat reports N of its prompt tokens as
//!   `prompt_tokens_details.cached_tokens` (a subset of `prompt_tokens`, as OpenAI counts).
//! * `x-mock-status: CODE`: answer with that 4xx/5xx status and a
//!   provider-shaped error body. 429 also sends `retry-after: 1`. `none` or a
//!   2xx code cancels a `--status` default.
//! * `x-mock-fault: F[,F...]`, where each F is one of:
//!   * `close-before-headers`: read the request, then close the socket
//!     without answering.
//!   * `close-mid-stream`: send the first 3 stream events, then close without
//!     the chunked terminator. On a non-stream request, send the head and half
//!     of the body, then close.
//!   * `hang`: never answer; the connection stays open until the client
//!     leaves.
//!   * `no-usage`: leave usage out of the JSON and of the stream.
//!   * `no-retry-after`: a 429 comes without its `retry-after` header.
//!   * `none`: no fault (cancels a `--fault` default).
//!
//! A bad control value, or an unknown `x-mock-*` header, gets a 400 that names
//! the header, so a typo in a test fails loudly.
//!
//! ## Introspection (never needs auth, never recorded)
//!
//! * `GET /_mock/requests` returns `{"requests":[{"method","path","headers":[[name,value],...],"body","body_len"}]}`.
//!   It holds the last 10,000 requests, with at most 256 MiB of bodies.
//!   Header names are lowercased, `path` is the request target as sent, and
//!   `body` is lossy UTF-8.
//! * `GET /_mock/count` returns `{"count":N}`, the requests received since the
//!   start or last reset (not capped).
//! * `POST /_mock/reset` clears both.
//!
//! ## HTTP
//!
//! The server supports keep-alive, pipelined requests (handled in order),
//! `Content-Length` and chunked request bodies, and `Expect: 100-continue`.
//! Heads are limited to 64 KiB and bodies to 64 MiB. A malformed request gets
//! a 400 and the connection is closed. JSON replies carry `Content-Length`.
//! SSE replies use `Transfer-Encoding: chunked` with one chunk written per
//! event.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_LINE: usize = 4096;
const MAX_OUT_TOKENS: u64 = 4096;
const DEFAULT_OUT_TOKENS: u64 = 8;
const RECORD_CAP: usize = 10_000;
const RECORD_BODY_BUDGET: usize = 256 * 1024 * 1024;
const DEFAULT_EMBED_DIMS: u64 = 1536;
const MAX_EMBED_DIMS: u64 = 8192;
const MAX_EMBED_INPUTS: usize = 2048;
const CLOSE_MID_STREAM_AFTER: usize = 3;

const USAGE: &str = "usage: mock-provider [--listen ADDR] [--threads N] [--require-key K] \
[--latency-ms N] [--chunk-delay-ms N] [--tokens N] [--status CODE] [--fault LIST] \
[--no-record] [--log]";

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Faults {
    close_before_headers: bool,
    close_mid_stream: bool,
    hang: bool,
    no_usage: bool,
    no_retry_after: bool,
}

impl Faults {
    fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in s.split(',') {
            let item = item.trim();
            if item.eq_ignore_ascii_case("close-before-headers") {
                f.close_before_headers = true;
            } else if item.eq_ignore_ascii_case("close-mid-stream") {
                f.close_mid_stream = true;
            } else if item.eq_ignore_ascii_case("hang") {
                f.hang = true;
            } else if item.eq_ignore_ascii_case("no-usage") {
                f.no_usage = true;
            } else if item.eq_ignore_ascii_case("no-retry-after") {
                f.no_retry_after = true;
            } else if item.is_empty() || item.eq_ignore_ascii_case("none") {
            } else {
                return Err(format!("unknown fault '{item}'"));
            }
        }
        Ok(f)
    }
}

#[derive(Debug)]
struct Config {
    listen: String,
    threads: Option<usize>,
    require_key: Option<String>,
    latency_ms: u64,
    chunk_delay_ms: u64,
    tokens: Option<u64>,
    status: Option<u16>,
    faults: Faults,
    record: bool,
    log: bool,
}

/// Parses a `x-mock-status` / `--status` value; `None` means "no injected error".
fn parse_status(s: &str) -> Result<Option<u16>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match s.parse::<u16>() {
        Ok(c) if (200..300).contains(&c) => Ok(None),
        Ok(c) if (400..600).contains(&c) => Ok(Some(c)),
        _ => Err(format!("status must be 4xx/5xx (or 2xx/none), got '{s}'")),
    }
}

fn parse_num(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a non-negative integer, got '{s}'"))
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        listen: "127.0.0.1:0".to_string(),
        threads: None,
        require_key: None,
        latency_ms: 0,
        chunk_delay_ms: 0,
        tokens: None,
        status: None,
        faults: Faults::default(),
        record: true,
        log: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let flag = match flag.strip_prefix("--default-") {
            Some(rest) => format!("--{rest}"),
            None => flag,
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--no-record" => cfg.record = false,
            "--log" => cfg.log = true,
            "--listen" | "--threads" | "--require-key" | "--latency-ms" | "--chunk-delay-ms"
            | "--tokens" | "--status" | "--fault" => {
                let v = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                let ctx = |e: String| format!("{flag}: {e}");
                match flag.as_str() {
                    "--listen" => cfg.listen = v,
                    "--threads" => {
                        let n = parse_num(&v).map_err(ctx)?;
                        cfg.threads = Some(n.clamp(1, 1024) as usize);
                    }
                    "--require-key" => {
                        if v.is_empty() {
                            return Err("--require-key needs a non-empty key".into());
                        }
                        cfg.require_key = Some(v);
                    }
                    "--latency-ms" => cfg.latency_ms = parse_num(&v).map_err(ctx)?,
                    "--chunk-delay-ms" => cfg.chunk_delay_ms = parse_num(&v).map_err(ctx)?,
                    "--tokens" => cfg.tokens = Some(parse_num(&v).map_err(ctx)?),
                    "--status" => cfg.status = parse_status(&v).map_err(ctx)?,
                    _ => cfg.faults = Faults::parse(&v).map_err(ctx)?,
                }
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------
// Shared state and request recording
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Log {
    requests: VecDeque<Arc<Request>>,
    body_bytes: usize,
}

struct State {
    cfg: Config,
    log: Mutex<Log>,
    total: AtomicU64,
    ids: AtomicU64,
    boot: u32,
}

impl State {
    fn record(&self, req: &Arc<Request>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if !self.cfg.record {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        while log.requests.len() >= RECORD_CAP
            || (log.body_bytes + req.body.len() > RECORD_BODY_BUDGET && !log.requests.is_empty())
        {
            if let Some(old) = log.requests.pop_front() {
                log.body_bytes -= old.body.len();
            }
        }
        log.body_bytes += req.body.len();
        log.requests.push_back(Arc::clone(req));
    }

    /// A unique, id-shaped suffix: 8 hex digits of boot time + 16 of counter.
    fn next_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:016x}", self.boot, n)
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 request parsing
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    target: String,
    path: String,
    minor: u8,
    headers: Vec<(String, String)>,
    body: Bytes,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

enum ReadError {
    /// Connection ended or failed; nothing to answer.
    Io,
    /// Malformed or oversized request: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Io
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.min(buf.len());
    buf[start..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + start)
}

async fn fill(sock: &mut TcpStream, buf: &mut BytesMut, want: usize) -> Result<(), ReadError> {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let n = sock.read_buf(buf).await?;
    if n == 0 {
        return Err(ReadError::Io);
    }
    Ok(())
}

struct Head {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
}

fn parse_head(head: &[u8]) -> Result<Head, ReadError> {
    const BAD: ReadError = ReadError::Bad(400, "malformed request head");
    let mut lines = head.split(|&b| b == b'\n');
    let total = head.split(|&b| b == b'\n').count();
    let strip = |idx: usize, line: &[u8]| -> Result<Vec<u8>, ReadError> {
        // Every line but the last was followed by "\r\n"; the last one's CRLF was cut off.
        let line = if idx + 1 < total {
            line.strip_suffix(b"\r").ok_or(BAD)?
        } else {
            line
        };
        if line.iter().any(|&b| b == b'\r' || b == 0) {
            return Err(BAD);
        }
        Ok(line.to_vec())
    };
    let first = strip(0, lines.next().ok_or(BAD)?)?;
    let mut parts = first.split(|&b| b == b' ');
    let (m, t, v) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(BAD),
    };
    if m.is_empty() || !m.iter().all(|&b| is_tchar(b)) {
        return Err(BAD);
    }
    if t.is_empty() || t.iter().any(|&b| b <= 0x20 || b == 0x7f) {
        return Err(BAD);
    }
    let minor = match v {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err(ReadError::Bad(505, "unsupported HTTP version")),
    };
    let mut headers = Vec::with_capacity(16);
    for (i, raw) in lines.enumerate() {
        let line = strip(i + 1, raw)?;
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(BAD); // obsolete line folding
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(BAD)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(BAD);
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Head {
        method: String::from_utf8_lossy(m).into_owned(),
        target: String::from_utf8_lossy(t).into_owned(),
        minor,
        headers,
    })
}

fn path_of(target: &str) -> String {
    let mut t = target;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = t.strip_prefix(scheme) {
            t = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    t.split(['?', '#']).next().unwrap_or("").to_string()
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads one request. `Ok(None)` means the peer closed cleanly between requests.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<Request>, ReadError> {
    // ---- head ----
    let mut scanned = 0usize;
    let head_end = loop {
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
            scanned = 0;
        }
        let from = scanned.saturating_sub(3);
        if let Some(p) = buf[from.min(buf.len())..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            break p + from;
        }
        scanned = buf.len();
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "request header fields too large"));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        if sock.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io)
            };
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Bad(431, "request header fields too large"));
    }
    let head = parse_head(&buf[..head_end])?;
    buf.advance(head_end + 4);

    // ---- framing ----
    let te: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    let cls: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let chunked = if te.is_empty() {
        false
    } else {
        if !cls.is_empty() || head.minor == 0 {
            return Err(ReadError::Bad(400, "ambiguous message framing"));
        }
        let codings: Vec<&str> = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(ReadError::Bad(501, "unsupported transfer-encoding"));
        }
        true
    };
    let content_length = if chunked || cls.is_empty() {
        0usize
    } else {
        let first = cls[0];
        if cls.iter().any(|v| *v != first)
            || first.is_empty()
            || first.len() > 19
            || !first.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ReadError::Bad(400, "invalid content-length"));
        }
        let n: u64 = first
            .parse()
            .map_err(|_| ReadError::Bad(400, "invalid content-length"))?;
        if n > MAX_BODY as u64 {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        n as usize
    };

    // ---- expect ----
    if let Some(expect) = head
        .headers
        .iter()
        .find(|(n, _)| n == "expect")
        .map(|(_, v)| v)
    {
        if !expect.eq_ignore_ascii_case("100-continue") {
            return Err(ReadError::Bad(417, "expectation failed"));
        }
        if head.minor == 1 && (chunked || buf.len() < content_length) {
            sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
    }

    // ---- body ----
    let body = if chunked {
        read_chunked(sock, buf).await?
    } else {
        while buf.len() < content_length {
            fill(sock, buf, (content_length - buf.len()).min(1 << 20)).await?;
        }
        let b = Bytes::copy_from_slice(&buf[..content_length]);
        buf.advance(content_length);
        b
    };

    let keep_alive = if head.minor == 1 {
        !has_token(&head.headers, "connection", "close")
    } else {
        has_token(&head.headers, "connection", "keep-alive")
    };
    let path = path_of(&head.target);
    Ok(Some(Request {
        method: head.method,
        target: head.target,
        path,
        minor: head.minor,
        headers: head.headers,
        body,
        keep_alive,
    }))
}

async fn read_chunked(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<Bytes, ReadError> {
    const BAD: ReadError = ReadError::Bad(400, "malformed chunked body");
    let mut body = BytesMut::new();
    loop {
        let line_end = read_line(sock, buf).await?;
        let line = &buf[..line_end];
        let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_part = size_part.trim_ascii();
        if size_part.is_empty() || size_part.len() > 15 {
            return Err(BAD);
        }
        let mut size = 0usize;
        for &b in size_part {
            let d = (b as char).to_digit(16).ok_or(BAD)? as usize;
            size = size * 16 + d;
        }
        buf.advance(line_end + 2);
        if size == 0 {
            // trailers, up to the empty line
            let mut trailer_bytes = 0usize;
            loop {
                let end = read_line(sock, buf).await?;
                buf.advance(end + 2);
                if end == 0 {
                    break;
                }
                trailer_bytes += end + 2;
                if trailer_bytes > MAX_HEAD {
                    return Err(ReadError::Bad(431, "trailers too large"));
                }
            }
            return Ok(body.freeze());
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        while buf.len() < size + 2 {
            fill(sock, buf, (size + 2 - buf.len()).min(1 << 20)).await?;
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(BAD);
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

/// Waits until `buf` holds a CRLF-terminated line; returns the index of the CR.
async fn read_line(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<usize, ReadError> {
    let mut from = 0;
    loop {
        if let Some(p) = find_crlf(buf, from) {
            return Ok(p);
        }
        if buf.len() > MAX_LINE {
            return Err(ReadError::Bad(400, "chunk line too long"));
        }
        from = buf.len().saturating_sub(1);
        fill(sock, buf, 4096).await?;
    }
}

// ---------------------------------------------------------------------------
// Response writing
// ---------------------------------------------------------------------------

/// The connection must be closed (write error, fault, or `Connection: close`).
struct Close;

impl From<std::io::Error> for Close {
    fn from(_: std::io::Error) -> Self {
        Close
    }
}

type Flow = Result<(), Close>;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// Writes a complete JSON response. With `truncate`, only the head and half
/// of the body are sent and the connection is closed (close-mid-stream fault).
async fn send_json(
    sock: &mut TcpStream,
    req: &Request,
    status: u16,
    extra: &str,
    body: &[u8],
    truncate: bool,
) -> Flow {
    let mut out = Vec::with_capacity(body.len() + 256);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}",
        status,
        reason(status),
        body.len(),
        extra
    );
    if !req.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if req.method != "HEAD" {
        if truncate {
            out.extend_from_slice(&body[..body.len() / 2]);
        } else {
            out.extend_from_slice(body);
        }
    }
    sock.write_all(&out).await?;
    if truncate {
        let _ = sock.shutdown().await;
        return Err(Close);
    }
    if req.keep_alive {
        Ok(())
    } else {
        let _ = sock.shutdown().await;
        Err(Close)
    }
}

/// A server-sent-events response: one chunk written per event.
struct Sse<'a> {
    sock: &'a mut TcpStream,
    chunked: bool,
    keep_alive: bool,
    delay: Duration,
    sent: usize,
    cut_after: Option<usize>,
    buf: Vec<u8>,
}

impl<'a> Sse<'a> {
    async fn begin(sock: &'a mut TcpStream, job: &Job<'_>) -> Result<Sse<'a>, Close> {
        let chunked = job.req.minor == 1;
        let mut head = String::with_capacity(256);
        head.push_str(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n",
        );
        head.push_str(&job.extra);
        if chunked {
            head.push_str("transfer-encoding: chunked\r\n");
            if !job.req.keep_alive {
                head.push_str("connection: close\r\n");
            }
        } else {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        Ok(Sse {
            sock,
            chunked,
            keep_alive: job.req.keep_alive && chunked,
            delay: Duration::from_millis(job.ctl.chunk_delay_ms),
            sent: 0,
            cut_after: job
                .ctl
                .faults
                .close_mid_stream
                .then_some(CLOSE_MID_STREAM_AFTER),
            buf: Vec::with_capacity(512),
        })
    }

    /// Sends `event: NAME\n` (if given) + `data: DATA\n\n` as one chunk.
    async fn send(&mut self, event: Option<&str>, data: &str) -> Flow {
        if self.sent > 0 && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let len = event.map_or(0, |e| 8 + e.len()) + 8 + data.len();
        self.buf.clear();
        if self.chunked {
            let _ = write!(self.buf, "{len:x}\r\n");
        }
        if let Some(e) = event {
            self.buf.extend_from_slice(b"event: ");
            self.buf.extend_from_slice(e.as_bytes());
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(b"data: ");
        self.buf.extend_from_slice(data.as_bytes());
        self.buf.extend_from_slice(b"\n\n");
        if self.chunked {
            self.buf.extend_from_slice(b"\r\n");
        }
        self.sock.write_all(&self.buf).await?;
        self.sent += 1;
        if Some(self.sent) == self.cut_after {
            let _ = self.sock.shutdown().await;
            return Err(Close);
        }
        Ok(())
    }

    async fn data(&mut self, data: &str) -> Flow {
        self.send(None, data).await
    }

    async fn event(&mut self, name: &str, data: &str) -> Flow {
        self.send(Some(name), data).await
    }

    async fn end(self) -> Flow {
        if self.chunked {
            self.sock.write_all(b"0\r\n\r\n").await?;
        }
        if self.keep_alive {
            Ok(())
        } else {
            let _ = self.sock.shutdown().await;
            Err(Close)
        }
    }
}

// ---------------------------------------------------------------------------
// JSON helpers and error shapes
// ---------------------------------------------------------------------------

/// Appends `s` as a JSON string literal (with quotes): the gateway's own escaping.
fn json_str(out: &mut String, s: &str) {
    tollgate::push_json_string(out, s);
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    json_str(&mut out, s);
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    OpenAi,
    Anthropic,
}

fn openai_error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    let opt = |v: Option<&str>| v.map_or_else(|| "null".to_string(), quoted);
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":{},"code":{}}}}}"#,
        quoted(message),
        quoted(kind),
        opt(param),
        opt(code)
    )
}

fn anthropic_error(kind: &str, message: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":{},"message":{}}}}}"#,
        quoted(kind),
        quoted(message)
    )
}

/// A 400-class "invalid request" in the provider's shape.
fn invalid_request(provider: Provider, message: &str, param: Option<&str>) -> String {
    match provider {
        Provider::OpenAi => openai_error(message, "invalid_request_error", param, None),
        Provider::Anthropic => anthropic_error("invalid_request_error", message),
    }
}

/// Body for an injected `x-mock-status`, mimicking what each provider sends.
fn status_error(provider: Provider, status: u16) -> String {
    match provider {
        Provider::OpenAi => match status {
            429 => openai_error(
                "Rate limit reached for requests (mock-provider). Please try again in 1s.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            401 => openai_error(
                "Incorrect API key provided (mock-provider).",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            404 => openai_error(
                "The model does not exist or you do not have access to it (mock-provider).",
                "invalid_request_error",
                None,
                Some("model_not_found"),
            ),
            503 => openai_error(
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                None,
            ),
            s if s >= 500 => openai_error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            s => openai_error(
                &format!("mock-provider: injected status {s}"),
                "invalid_request_error",
                None,
                None,
            ),
        },
        Provider::Anthropic => {
            let (kind, msg) = match status {
                400 => (
                    "invalid_request_error",
                    "mock-provider: injected status 400",
                ),
                401 => ("authentication_error", "invalid x-api-key"),
                402 => ("billing_error", "mock-provider: injected status 402"),
                403 => ("permission_error", "mock-provider: injected status 403"),
                404 => ("not_found_error", "mock-provider: injected status 404"),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed size.",
                ),
                429 => (
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit (mock-provider).",
                ),
                503 | 529 => ("overloaded_error", "Overloaded"),
                s if s >= 500 => ("api_error", "Internal server error"),
                _ => (
                    "invalid_request_error",
                    "mock-provider: injected 4xx status",
                ),
            };
            anthropic_error(kind, msg)
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic text
// ---------------------------------------------------------------------------

const WORDS: [&str; 24] = [
    "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "then", "it",
    "runs", "far", "away", "into", "the", "quiet", "green", "forest", "before", "night", "falls",
    "again",
];

struct Text {
    full: String,
    /// `offs[i]` is the byte offset where token `i` starts; `offs[n]` is the end.
    offs: Vec<usize>,
}

fn text() -> &'static Text {
    static TEXT: OnceLock<Text> = OnceLock::new();
    TEXT.get_or_init(|| {
        let n = MAX_OUT_TOKENS as usize;
        let mut full = String::with_capacity(n * 7);
        let mut offs = Vec::with_capacity(n + 1);
        for i in 0..n {
            offs.push(full.len());
            if i > 0 {
                full.push(' ');
            }
            full.push_str(WORDS[i % WORDS.len()]);
        }
        offs.push(full.len());
        Text { full, offs }
    })
}

fn token(i: usize) -> &'static str {
    let t = text();
    &t.full[t.offs[i]..t.offs[i + 1]]
}

fn text_of(n: usize) -> &'static str {
    let t = text();
    &t.full[..t.offs[n]]
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    Models(Provider),
}

impl Route {
    fn provider(self) -> Provider {
        match self {
            Route::Messages | Route::CountTokens => Provider::Anthropic,
            Route::Models(p) => p,
            _ => Provider::OpenAi,
        }
    }
}

/// Anthropic clients always send `anthropic-version` (and older ones `x-api-key`);
/// OpenAI clients send neither.
fn looks_anthropic(req: &Request) -> bool {
    req.header("anthropic-version").is_some() || req.header("x-api-key").is_some()
}

fn route(req: &Request) -> Option<Route> {
    let p = req.path.strip_suffix('/').unwrap_or(&req.path);
    match (req.method.as_str(), p) {
        ("POST", "/v1/chat/completions") => Some(Route::Chat),
        ("POST", "/v1/completions") => Some(Route::Completions),
        ("POST", "/v1/embeddings") => Some(Route::Embeddings),
        ("POST", "/v1/responses") => Some(Route::Responses),
        ("POST", "/v1/messages") => Some(Route::Messages),
        ("POST", "/v1/messages/count_tokens") => Some(Route::CountTokens),
        ("GET", "/v1/models") => Some(Route::Models(if looks_anthropic(req) {
            Provider::Anthropic
        } else {
            Provider::OpenAi
        })),
        _ => None,
    }
}

/// The key from `Authorization: Bearer <key>`, if present.
fn bearer(req: &Request) -> Option<&str> {
    let (scheme, key) = req.header("authorization")?.trim().split_at_checked(7)?;
    scheme.eq_ignore_ascii_case("bearer ").then(|| key.trim())
}

/// Checks credentials like the real provider; `Err((status, body))` on failure.
fn check_auth(req: &Request, provider: Provider, cfg: &Config) -> Result<(), (u16, String)> {
    match provider {
        Provider::OpenAi => {
            match bearer(req) {
                None | Some("") => Err((
                    401,
                    openai_error(
                        "You didn't provide an API key. You need to provide your API key in an \
                         Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                        "invalid_request_error",
                        None,
                        Some("invalid_api_key"),
                    ),
                )),
                Some(k) if cfg.require_key.as_deref().is_some_and(|want| want != k) => {
                    let shown = if k.len() > 8 && k.is_char_boundary(3) && k.is_char_boundary(k.len() - 4) {
                        format!("{}{}{}", &k[..3], "*".repeat(k.len().min(40) - 7), &k[k.len() - 4..])
                    } else {
                        "****".to_string()
                    };
                    Err((
                        401,
                        openai_error(
                            &format!(
                                "Incorrect API key provided: {shown}. You can find your API key at \
                                 https://platform.openai.com/account/api-keys."
                            ),
                            "invalid_request_error",
                            None,
                            Some("invalid_api_key"),
                        ),
                    ))
                }
                Some(_) => Ok(()),
            }
        }
        Provider::Anthropic => {
            // Older Anthropic SDKs send `x-api-key`; the Python SDK 2.x sends the API key as
            // `Authorization: Bearer <key>`. Accept both.
            let key = req
                .header("x-api-key")
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .or_else(|| bearer(req));
            match key {
                None | Some("") => {
                    return Err((
                        401,
                        anthropic_error(
                            "authentication_error",
                            "x-api-key or authorization header is required",
                        ),
                    ))
                }
                Some(k) if cfg.require_key.as_deref().is_some_and(|want| want != k) => {
                    return Err((
                        401,
                        anthropic_error("authentication_error", "invalid x-api-key"),
                    ))
                }
                Some(_) => {}
            }
            if req.header("anthropic-version").is_none_or(|v| v.trim().is_empty()) {
                return Err((
                    400,
                    anthropic_error(
                        "invalid_request_error",
                        "anthropic-version: header is required",
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Per-request controls: headers override the command-line defaults.
struct Ctl {
    latency_ms: u64,
    chunk_delay_ms: u64,
    tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    cached_tokens: u64,
    status: Option<u16>,
    faults: Faults,
}

fn controls(req: &Request, cfg: &Config) -> Result<Ctl, String> {
    let mut ctl = Ctl {
        latency_ms: cfg.latency_ms,
        chunk_delay_ms: cfg.chunk_delay_ms,
        tokens: cfg.tokens,
        prompt_tokens: None,
        cached_tokens: 0,
        status: cfg.status,
        faults: cfg.faults,
    };
    for (name, value) in &req.headers {
        let Some(ctl_name) = name.strip_prefix("x-mock-") else {
            continue;
        };
        let bad = |e: String| format!("mock-provider: invalid {name} header: {e}");
        match ctl_name {
            "latency-ms" => ctl.latency_ms = parse_num(value).map_err(bad)?,
            "chunk-delay-ms" => ctl.chunk_delay_ms = parse_num(value).map_err(bad)?,
            "tokens" => ctl.tokens = Some(parse_num(value).map_err(bad)?),
            "prompt-tokens" => ctl.prompt_tokens = Some(parse_num(value).map_err(bad)?),
            "cached-tokens" => ctl.cached_tokens = parse_num(value).map_err(bad)?,
            "status" => ctl.status = parse_status(value).map_err(bad)?,
            "fault" => ctl.faults = Faults::parse(value).map_err(bad)?,
            _ => return Err(format!("mock-provider: unknown control header {name}")),
        }
    }
    Ok(ctl)
}

/// The output token count: `x-mock-tokens`, else `--tokens` (both in `tokens`), else 8; then capped by the
/// request's own limit (`max_tokens` and friends are a ceiling, as for a real model, never a
/// length to fill) and by [`MAX_OUT_TOKENS`].
fn out_tokens(tokens: Option<u64>, requested: Option<u64>) -> usize {
    tokens
        .unwrap_or(DEFAULT_OUT_TOKENS)
        .min(requested.unwrap_or(u64::MAX))
        .min(MAX_OUT_TOKENS) as usize
}

/// Everything a generator needs for one API request.
struct Job<'a> {
    req: &'a Request,
    ctl: Ctl,
    extra: String,
    body: Value,
    id: String,
    model: String,
    created: u64,
    prompt: u64,
    out: usize,
    stream: bool,
    include_usage: bool,
    usage: bool,
}

async fn handle(st: &State, sock: &mut TcpStream, req: Arc<Request>) -> Flow {
    if req.path == "/_mock" || req.path.starts_with("/_mock/") {
        return admin(st, sock, &req).await;
    }
    st.record(&req);
    if st.cfg.log {
        eprintln!("mock-provider: {} {}", req.method, req.target);
    }
    let route = route(&req);
    let provider = match route {
        Some(r) => r.provider(),
        None if req.path.starts_with("/v1/messages") || looks_anthropic(&req) => {
            Provider::Anthropic
        }
        None => Provider::OpenAi,
    };
    let id = st.next_id();
    let extra = match provider {
        Provider::OpenAi => format!("x-request-id: req_{id}\r\n"),
        Provider::Anthropic => format!("request-id: req_{id}\r\n"),
    };

    let Some(route) = route else {
        let body = match provider {
            Provider::OpenAi => openai_error(
                &format!("Invalid URL ({} {})", req.method, req.path),
                "invalid_request_error",
                None,
                None,
            ),
            Provider::Anthropic => anthropic_error("not_found_error", "Not Found"),
        };
        return send_json(sock, &req, 404, &extra, body.as_bytes(), false).await;
    };
    if let Err((status, body)) = check_auth(&req, provider, &st.cfg) {
        return send_json(sock, &req, status, &extra, body.as_bytes(), false).await;
    }
    let ctl = match controls(&req, &st.cfg) {
        Ok(c) => c,
        Err(msg) => {
            let body = invalid_request(provider, &msg, None);
            return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
        }
    };
    if ctl.faults.hang {
        return hang(sock).await;
    }
    if ctl.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(ctl.latency_ms)).await;
    }
    if ctl.faults.close_before_headers {
        let _ = sock.shutdown().await;
        return Err(Close);
    }
    if let Some(status) = ctl.status {
        let mut extra = extra;
        if status == 429 && !ctl.faults.no_retry_after {
            extra.push_str("retry-after: 1\r\n");
        }
        let body = status_error(provider, status);
        return send_json(sock, &req, status, &extra, body.as_bytes(), false).await;
    }
    if let Route::Models(p) = route {
        let body = match p {
            Provider::OpenAi => OPENAI_MODELS,
            Provider::Anthropic => ANTHROPIC_MODELS,
        };
        return send_json(
            sock,
            &req,
            200,
            &extra,
            body.as_bytes(),
            ctl.faults.close_mid_stream,
        )
        .await;
    }

    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let msg = match provider {
                Provider::OpenAi => {
                    "We could not parse the JSON body of your request. (HINT: This likely means \
                     you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
                     payload, but what was sent was not valid JSON.)"
                }
                Provider::Anthropic => "There was an error parsing the body of your request.",
            };
            let body = invalid_request(provider, msg, None);
            return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
        }
    };
    let model = match body.get("model").and_then(Value::as_str) {
        Some(m) => quoted(m),
        None => {
            let msg = match provider {
                Provider::OpenAi => "you must provide a model parameter",
                Provider::Anthropic => "model: Field required",
            };
            let body = invalid_request(provider, msg, None);
            return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
        }
    };
    if route == Route::Messages && !body.get("max_tokens").is_some_and(Value::is_u64) {
        let body = invalid_request(provider, "max_tokens: Field required", None);
        return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
    }

    let limit_field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| body.get(*n).and_then(Value::as_u64))
    };
    let requested = match route {
        Route::Chat => limit_field(&["max_completion_tokens", "max_tokens"]),
        Route::Completions | Route::Messages => limit_field(&["max_tokens"]),
        Route::Responses => limit_field(&["max_output_tokens"]),
        _ => None,
    };
    let out = out_tokens(ctl.tokens, requested);
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let usage = !ctl.faults.no_usage;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prompt = ctl
        .prompt_tokens
        .unwrap_or((req.body.len() as u64).div_ceil(4));
    let job = Job {
        req: &req,
        ctl,
        extra,
        body,
        id,
        model,
        created,
        prompt,
        out,
        stream,
        include_usage,
        usage,
    };
    match route {
        Route::Chat => chat(sock, &job).await,
        Route::Completions => completions(sock, &job).await,
        Route::Embeddings => embeddings(sock, &job).await,
        Route::Responses => responses(sock, &job).await,
        Route::Messages => messages(sock, &job).await,
        Route::CountTokens => {
            let body = format!(r#"{{"input_tokens":{}}}"#, job.prompt);
            finish_json(sock, &job, body).await
        }
        Route::Models(_) => Ok(()),
    }
}

async fn finish_json(sock: &mut TcpStream, job: &Job<'_>, body: String) -> Flow {
    send_json(
        sock,
        job.req,
        200,
        &job.extra,
        body.as_bytes(),
        job.ctl.faults.close_mid_stream,
    )
    .await
}

/// Never answers; returns once the client closes or resets the connection.
async fn hang(sock: &mut TcpStream) -> Flow {
    let mut scratch = [0u8; 4096];
    loop {
        match sock.read(&mut scratch).await {
            Ok(0) | Err(_) => return Err(Close),
            Ok(_) => {}
        }
    }
}

async fn admin(st: &State, sock: &mut TcpStream, req: &Request) -> Flow {
    let (status, body) = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/_mock/requests") => {
            let snapshot: Vec<Arc<Request>> = st
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .requests
                .iter()
                .cloned()
                .collect();
            let mut out = String::with_capacity(64 + snapshot.len() * 512);
            out.push_str(r#"{"requests":["#);
            for (i, r) in snapshot.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"method":"#);
                json_str(&mut out, &r.method);
                out.push_str(r#","path":"#);
                json_str(&mut out, &r.target);
                out.push_str(r#","headers":["#);
                for (j, (n, v)) in r.headers.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push('[');
                    json_str(&mut out, n);
                    out.push(',');
                    json_str(&mut out, v);
                    out.push(']');
                }
                out.push_str(r#"],"body":"#);
                json_str(&mut out, &String::from_utf8_lossy(&r.body));
                let _ = write!(out, r#","body_len":{}}}"#, r.body.len());
            }
            out.push_str("]}");
            (200, out)
        }
        ("GET", "/_mock/count") => (
            200,
            format!(r#"{{"count":{}}}"#, st.total.load(Ordering::Relaxed)),
        ),
        ("POST", "/_mock/reset") => {
            *st.log.lock().unwrap_or_else(PoisonError::into_inner) = Log::default();
            st.total.store(0, Ordering::Relaxed);
            (200, r#"{"ok":true}"#.to_string())
        }
        _ => (
            404,
            openai_error(
                &format!("mock-provider: no admin route {} {}", req.method, req.path),
                "invalid_request_error",
                None,
                None,
            ),
        ),
    };
    send_json(sock, req, status, "", body.as_bytes(), false).await
}

// ---------------------------------------------------------------------------
// OpenAI: chat completions
// ---------------------------------------------------------------------------

fn chat_usage(prompt: u64, out: usize, cached: u64) -> String {
    format!(
        r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"prompt_tokens_details":{{"cached_tokens":{cached},"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
        p = prompt,
        c = out,
        t = prompt.saturating_add(out as u64),
        cached = cached.min(prompt)
    )
}

async fn chat(sock: &mut TcpStream, job: &Job<'_>) -> Flow {
    let id = format!("chatcmpl-{}", job.id);
    if !job.stream {
        let usage = if job.usage {
            format!(
                r#""usage":{},"#,
                chat_usage(job.prompt, job.out, job.ctl.cached_tokens)
            )
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"id":"{id}","object":"chat.completion","created":{cr},"model":{m},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],{usage}"service_tier":"default","system_fingerprint":"fp_mock"}}"#,
            cr = job.created,
            m = job.model,
            text = text_of(job.out),
        );
        return finish_json(sock, job, body).await;
    }
    let with_usage = job.include_usage && job.usage;
    let pre = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{cr},"model":{m},"service_tier":"default","system_fingerprint":"fp_mock","choices":["#,
        cr = job.created,
        m = job.model,
    );
    let post = if with_usage {
        r#"],"usage":null}"#
    } else {
        "]}"
    };
    let mut s = Sse::begin(sock, job).await?;
    let mut d = String::with_capacity(pre.len() + 160);
    d.push_str(&pre);
    d.push_str(r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#);
    d.push_str(post);
    s.data(&d).await?;
    for i in 0..job.out {
        d.clear();
        d.push_str(&pre);
        d.push_str(r#"{"index":0,"delta":{"content":""#);
        d.push_str(token(i));
        d.push_str(r#""},"logprobs":null,"finish_reason":null}"#);
        d.push_str(post);
        s.data(&d).await?;
    }
    d.clear();
    d.push_str(&pre);
    d.push_str(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#);
    d.push_str(post);
    s.data(&d).await?;
    if with_usage {
        d.clear();
        d.push_str(&pre);
        d.push_str(r#"],"usage":"#);
        d.push_str(&chat_usage(job.prompt, job.out, job.ctl.cached_tokens));
        d.push('}');
        s.data(&d).await?;
    }
    s.data("[DONE]").await?;
    s.end().await
}

// ---------------------------------------------------------------------------
// OpenAI: legacy completions
// ---------------------------------------------------------------------------

fn completion_usage(prompt: u64, out: usize) -> String {
    format!(
        r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t}}}"#,
        p = prompt,
        c = out,
        t = prompt + out as u64
    )
}

async fn completions(sock: &mut TcpStream, job: &Job<'_>) -> Flow {
    let id = format!("cmpl-{}", job.id);
    if !job.stream {
        let usage = if job.usage {
            format!(r#","usage":{}"#, completion_usage(job.prompt, job.out))
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"id":"{id}","object":"text_completion","created":{cr},"model":{m},"system_fingerprint":"fp_mock","choices":[{{"text":"{text}","index":0,"logprobs":null,"finish_reason":"stop"}}]{usage}}}"#,
            cr = job.created,
            m = job.model,
            text = text_of(job.out),
        );
        return finish_json(sock, job, body).await;
    }
    let with_usage = job.include_usage && job.usage;
    let pre = format!(
        r#"{{"id":"{id}","object":"text_completion","created":{cr},"choices":["#,
        cr = job.created
    );
    let post = format!(
        r#"],"model":{m},"system_fingerprint":"fp_mock"{u}}}"#,
        m = job.model,
        u = if with_usage { r#","usage":null"# } else { "" }
    );
    let mut s = Sse::begin(sock, job).await?;
    let mut d = String::with_capacity(pre.len() + post.len() + 96);
    for i in 0..job.out {
        d.clear();
        d.push_str(&pre);
        d.push_str(r#"{"text":""#);
        d.push_str(token(i));
        d.push_str(r#"","index":0,"logprobs":null,"finish_reason":null}"#);
        d.push_str(&post);
        s.data(&d).await?;
    }
    d.clear();
    d.push_str(&pre);
    d.push_str(r#"{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}"#);
    d.push_str(&post);
    s.data(&d).await?;
    if with_usage {
        d.clear();
        d.push_str(&pre);
        let _ = write!(
            d,
            r#"],"model":{m},"system_fingerprint":"fp_mock","usage":{u}}}"#,
            m = job.model,
            u = completion_usage(job.prompt, job.out)
        );
        s.data(&d).await?;
    }
    s.data("[DONE]").await?;
    s.end().await
}

// ---------------------------------------------------------------------------
// OpenAI: embeddings
// ---------------------------------------------------------------------------

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A deterministic unit-length vector derived from `seed` (splitmix64 stream).
fn embedding_values(seed: u64, dims: usize) -> Vec<f32> {
    let mut state = seed;
    let mut raw = Vec::with_capacity(dims);
    let mut norm = 0f64;
    for _ in 0..dims {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let f = (z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0;
        norm += f * f;
        raw.push(f);
    }
    let inv = if norm > 0.0 { 1.0 / norm.sqrt() } else { 1.0 };
    raw.into_iter().map(|f| (f * inv) as f32).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

async fn embeddings(sock: &mut TcpStream, job: &Job<'_>) -> Flow {
    let fail = |msg: &str, param: &str| invalid_request(Provider::OpenAi, msg, Some(param));
    // One seed per input: same text (or token array) => same vector.
    let seeds: Result<Vec<u64>, String> = match job.body.get("input") {
        Some(Value::String(s)) => Ok(vec![fnv1a(s.as_bytes())]),
        Some(Value::Array(a)) if a.is_empty() => Err(fail("'$.input' is invalid.", "input")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            Ok(vec![fnv1a(Value::Array(a.clone()).to_string().as_bytes())])
        }
        Some(Value::Array(a)) if a.len() > MAX_EMBED_INPUTS => Err(fail(
            "'$.input' is invalid: at most 2048 inputs are allowed.",
            "input",
        )),
        Some(Value::Array(a)) => a
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(fnv1a(s.as_bytes())),
                Value::Array(t) if t.iter().all(Value::is_number) => {
                    Ok(fnv1a(item.to_string().as_bytes()))
                }
                _ => Err(fail("'$.input' is invalid.", "input")),
            })
            .collect(),
        _ => Err(fail("'input' is a required property", "input")),
    };
    let seeds = match seeds {
        Ok(s) => s,
        Err(body) => {
            return send_json(sock, job.req, 400, &job.extra, body.as_bytes(), false).await
        }
    };
    let dims = match job.body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBED_DIMS,
        Some(v) => match v.as_u64() {
            Some(d) if (1..=MAX_EMBED_DIMS).contains(&d) => d,
            _ => {
                let body = fail("Invalid value for 'dimensions'.", "dimensions");
                return send_json(sock, job.req, 400, &job.extra, body.as_bytes(), false).await;
            }
        },
    } as usize;
    let b64 = match job.body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => {
            let body = fail(
                "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
                "encoding_format",
            );
            return send_json(sock, job.req, 400, &job.extra, body.as_bytes(), false).await;
        }
    };
    let per = if b64 {
        dims * 16 / 3 + 64
    } else {
        dims * 12 + 64
    };
    let mut body = String::with_capacity(128 + seeds.len() * per);
    body.push_str(r#"{"object":"list","data":["#);
    let mut raw = Vec::with_capacity(if b64 { dims * 4 } else { 0 });
    for (i, seed) in seeds.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, r#"{{"object":"embedding","index":{i},"embedding":"#);
        let values = embedding_values(*seed, dims);
        if b64 {
            raw.clear();
            for v in &values {
                raw.extend_from_slice(&v.to_le_bytes());
            }
            body.push('"');
            body.push_str(&base64(&raw));
            body.push('"');
        } else {
            body.push('[');
            for (k, v) in values.iter().enumerate() {
                if k > 0 {
                    body.push(',');
                }
                let _ = write!(body, "{v}");
            }
            body.push(']');
        }
        body.push('}');
    }
    let _ = write!(body, r#"],"model":{}"#, job.model);
    if job.usage {
        let _ = write!(
            body,
            r#","usage":{{"prompt_tokens":{p},"total_tokens":{p}}}"#,
            p = job.prompt
        );
    }
    body.push('}');
    finish_json(sock, job, body).await
}

// ---------------------------------------------------------------------------
// OpenAI: Responses API
// ---------------------------------------------------------------------------

fn responses_usage(prompt: u64, out: usize) -> String {
    format!(
        r#"{{"input_tokens":{p},"input_tokens_details":{{"cached_tokens":0,"cache_write_tokens":0}},"output_tokens":{c},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{t}}}"#,
        p = prompt,
        c = out,
        t = prompt + out as u64
    )
}

/// The request parameters a real Response object echoes back.
struct EchoParams {
    instructions: String,
    max_output_tokens: String,
    previous_response_id: String,
    store: String,
    temperature: String,
    top_p: String,
    metadata: String,
}

impl EchoParams {
    fn from(body: &Value) -> EchoParams {
        let pick = |name: &str, ok: fn(&Value) -> bool, default: &str| {
            body.get(name)
                .filter(|v| ok(v))
                .map_or_else(|| default.to_string(), Value::to_string)
        };
        EchoParams {
            instructions: pick("instructions", |v| v.is_string() || v.is_array(), "null"),
            max_output_tokens: pick("max_output_tokens", Value::is_u64, "null"),
            previous_response_id: pick("previous_response_id", Value::is_string, "null"),
            store: pick("store", Value::is_boolean, "true"),
            temperature: pick("temperature", Value::is_number, "1.0"),
            top_p: pick("top_p", Value::is_number, "1.0"),
            metadata: pick("metadata", Value::is_object, "{}"),
        }
    }
}

fn response_object(
    job: &Job<'_>,
    p: &EchoParams,
    rid: &str,
    status: &str,
    output: &str,
    usage: &str,
) -> String {
    format!(
        r#"{{"id":"{rid}","object":"response","created_at":{cr},"status":"{status}","background":false,"error":null,"incomplete_details":null,"instructions":{instr},"max_output_tokens":{mot},"max_tool_calls":null,"model":{m},"output":[{output}],"parallel_tool_calls":true,"previous_response_id":{prev},"prompt_cache_key":null,"reasoning":{{"effort":null,"summary":null}},"safety_identifier":null,"service_tier":"default","store":{store},"temperature":{temp},"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":{top_p},"truncation":"disabled","usage":{usage},"user":null,"metadata":{meta}}}"#,
        cr = job.created,
        instr = p.instructions,
        mot = p.max_output_tokens,
        m = job.model,
        prev = p.previous_response_id,
        store = p.store,
        temp = p.temperature,
        top_p = p.top_p,
        meta = p.metadata,
    )
}

fn output_text_part(text: &str) -> String {
    format!(r#"{{"type":"output_text","annotations":[],"logprobs":[],"text":"{text}"}}"#)
}

fn message_item(mid: &str, status: &str, content: &str) -> String {
    format!(
        r#"{{"id":"{mid}","type":"message","status":"{status}","content":[{content}],"role":"assistant"}}"#
    )
}

async fn responses(sock: &mut TcpStream, job: &Job<'_>) -> Flow {
    let rid = format!("resp_{}", job.id);
    let mid = format!("msg_{}", job.id);
    let params = EchoParams::from(&job.body);
    let full = text_of(job.out);
    let part = output_text_part(full);
    let done_item = message_item(&mid, "completed", &part);
    let usage = if job.usage {
        responses_usage(job.prompt, job.out)
    } else {
        "null".to_string()
    };
    if !job.stream {
        let body = response_object(job, &params, &rid, "completed", &done_item, &usage);
        return finish_json(sock, job, body).await;
    }
    let mut s = Sse::begin(sock, job).await?;
    let mut seq = 0u64;
    let mut d = String::with_capacity(1024);
    macro_rules! emit {
        ($name:expr, $($fmt:tt)*) => {{
            d.clear();
            let _ = write!(d, r#"{{"type":"{}","sequence_number":{}"#, $name, seq);
            let _ = write!(d, $($fmt)*);
            d.push('}');
            seq += 1;
            s.event($name, &d).await?;
        }};
    }
    let pending = response_object(job, &params, &rid, "in_progress", "", "null");
    emit!("response.created", r#","response":{pending}"#);
    emit!("response.in_progress", r#","response":{pending}"#);
    let empty_item = message_item(&mid, "in_progress", "");
    emit!(
        "response.output_item.added",
        r#","output_index":0,"item":{empty_item}"#
    );
    let empty_part = output_text_part("");
    emit!(
        "response.content_part.added",
        r#","item_id":"{mid}","output_index":0,"content_index":0,"part":{empty_part}"#
    );
    for i in 0..job.out {
        emit!(
            "response.output_text.delta",
            r#","item_id":"{mid}","output_index":0,"content_index":0,"delta":"{}","logprobs":[]"#,
            token(i)
        );
    }
    emit!(
        "response.output_text.done",
        r#","item_id":"{mid}","output_index":0,"content_index":0,"text":"{full}","logprobs":[]"#
    );
    emit!(
        "response.content_part.done",
        r#","item_id":"{mid}","output_index":0,"content_index":0,"part":{part}"#
    );
    emit!(
        "response.output_item.done",
        r#","output_index":0,"item":{done_item}"#
    );
    let done = response_object(job, &params, &rid, "completed", &done_item, &usage);
    emit!("response.completed", r#","response":{done}"#);
    debug_assert_eq!(
        seq,
        job.out as u64 + 8,
        "responses stream is N deltas + 8 events"
    );
    s.end().await
}

// ---------------------------------------------------------------------------
// Anthropic: Messages
// ---------------------------------------------------------------------------

fn anthropic_usage(prompt: u64, out: usize) -> String {
    format!(
        r#"{{"input_tokens":{prompt},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0}},"output_tokens":{out},"service_tier":"standard"}}"#
    )
}

async fn messages(sock: &mut TcpStream, job: &Job<'_>) -> Flow {
    let id = format!("msg_{}", job.id);
    if !job.stream {
        let usage = if job.usage {
            format!(r#","usage":{}"#, anthropic_usage(job.prompt, job.out))
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":{m},"content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null{usage}}}"#,
            m = job.model,
            text = text_of(job.out),
        );
        return finish_json(sock, job, body).await;
    }
    let mut s = Sse::begin(sock, job).await?;
    let start_usage = if job.usage {
        format!(
            r#","usage":{}"#,
            anthropic_usage(job.prompt, job.out.min(1))
        )
    } else {
        String::new()
    };
    s.event(
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":"{id}","type":"message","role":"assistant","model":{m},"content":[],"stop_reason":null,"stop_sequence":null{start_usage}}}}}"#,
            m = job.model
        ),
    )
    .await?;
    s.event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    )
    .await?;
    s.event("ping", r#"{"type": "ping"}"#).await?;
    let mut d = String::with_capacity(128);
    for i in 0..job.out {
        d.clear();
        d.push_str(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""#,
        );
        d.push_str(token(i));
        d.push_str(r#""}}"#);
        s.event("content_block_delta", &d).await?;
    }
    s.event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    )
    .await?;
    let delta_usage = if job.usage {
        format!(
            r#","usage":{{"input_tokens":{p},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{c}}}"#,
            p = job.prompt,
            c = job.out
        )
    } else {
        String::new()
    };
    s.event(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}}{delta_usage}}}"#
        ),
    )
    .await?;
    s.event("message_stop", r#"{"type":"message_stop"}"#)
        .await?;
    s.end().await
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

const OPENAI_MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"gpt-4.1","object":"model","created":1744316542,"owned_by":"system"},{"id":"gpt-3.5-turbo-instruct","object":"model","created":1692901427,"owned_by":"system"},{"id":"text-embedding-3-small","object":"model","created":1705948997,"owned_by":"system"}]}"#;

const ANTHROPIC_MODELS: &str = r#"{"data":[{"type":"model","id":"claude-sonnet-4-20250514","display_name":"Claude Sonnet 4","created_at":"2025-05-22T00:00:00Z"},{"type":"model","id":"claude-3-5-haiku-20241022","display_name":"Claude Haiku 3.5","created_at":"2024-10-22T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-20250514","last_id":"claude-3-5-haiku-20241022"}"#;

// ---------------------------------------------------------------------------
// Connections and main
// ---------------------------------------------------------------------------

async fn serve_conn(st: Arc<State>, mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let req = match read_request(&mut sock, &mut buf).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(status, msg)) => {
                let body = openai_error(msg, "invalid_request_error", None, None);
                let head = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    status,
                    reason(status),
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
                return;
            }
        };
        let keep_alive = req.keep_alive;
        if handle(&st, &mut sock, Arc::new(req)).await.is_err() || !keep_alive {
            return;
        }
    }
}

async fn run(cfg: Config) {
    let listener = match TcpListener::bind(cfg.listen.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-provider: cannot listen on {}: {e}", cfg.listen);
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-provider: local_addr: {e}");
            std::process::exit(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "LISTENING {addr}");
        let _ = out.flush();
    }
    let _ = text(); // build the word table before the first request
    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    let st = Arc::new(State {
        cfg,
        log: Mutex::new(Log::default()),
        total: AtomicU64::new(0),
        ids: AtomicU64::new(1),
        boot,
    });
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let st = Arc::clone(&st);
                tokio::spawn(serve_conn(st, sock));
            }
            // e.g. EMFILE under load: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mock-provider: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let threads = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run(cfg)),
        Err(e) => {
            eprintln!("mock-provider: cannot start runtime: {e}");
            std::process::exit(1);
        }
    }
}
