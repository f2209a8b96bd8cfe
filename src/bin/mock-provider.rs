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
//! | `POST /v1/messages/count_tokens` | Anthropic token counting: `{"input_tokens":N}` (needs `model` and `messages`) |
//! | `GET /v1/models` | OpenAI list, or Anthropic list when `anthropic-version` or `x-api-key` is sent |
//! | `GET /v1/models/{id}` | one model, same choice of shape: OpenAI `{"id","object":"model","created","owned_by"}`, Anthropic `{"type":"model","id","display_name","created_at"}` |
//!
//! `GET /v1/models/{id}` answers every id, as the other routes accept every
//! model name: a listed one with its list entry, any other with made-up dates
//! (`x-mock-status: 404` gives the provider's "model not found").
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
//! token per stream event. **The reply is short unless a length is asked for**:
//! the output token count is `x-mock-tokens`, else `--tokens`, else 8; then it
//! is capped by the request's own limit (`max_completion_tokens` / `max_tokens`
//! on chat, `max_tokens` on completions and Anthropic, `max_output_tokens` on
//! Responses) and by 4096. A limit is a ceiling, as for a real model, never a
//! length to fill: Claude Code's `max_tokens: 32000` still gets 8 words, and a
//! test that needs N output tokens sends `x-mock-tokens: N` (or starts the mock
//! with `--tokens N`). Input tokens are counted from the text, as a tokenizer counts
//! them, not from the JSON around it: `ceil(bytes of every string value / 4)` plus 3 per
//! message (or Responses input item) plus 3 per request (`input_tokens`). Usage is
//! the same in JSON and stream replies. OpenAI chat and completions streams
//! carry usage only when the request asked for
//! `"stream_options":{"include_usage":true}`. The mock stops naturally (`stop` /
//! `end_turn` / `completed`) unless it answers with a tool call.
//!
//! ## Tool calls
//!
//! Chat, Responses and Anthropic Messages answer with one tool call instead of
//! text when either
//!
//! * the request has `x-mock-tool-call: NAME` (optionally `x-mock-tool-args: JSON`,
//!   a JSON object; `{}` without it), or
//! * the text of the **last message**, when the user sent it, contains
//!   `mock:tool:NAME`, optionally followed at once by a JSON object of arguments:
//!   `what's the weather? mock:tool:get_weather{"city":"Paris"}`. For headless
//!   agents (Claude Code `-p`, Codex `exec`) that cannot add headers. The last
//!   message is `messages[-1]` (chat: `content` string or `text` parts;
//!   Anthropic: `text` blocks) or `input` / `input[-1]` (Responses: a string or
//!   `input_text` parts). Once the agent sends the tool's result, the last
//!   message is a `tool` message, a `tool_result` block or a
//!   `function_call_output` item, so the next turn is text: no loop.
//!
//! NAME is 1 to 128 of `[A-Za-z0-9_-]`; the header wins over the trigger; the
//! tool need not be declared in the request's `tools`; bad arguments get a 400.
//! The call replaces the text; usage is reported as usual (output tokens as
//! above). Ids: `call_<id>` (chat), `fc_<id>` with `call_id` `call_<id>`
//! (Responses), `toolu_<id>` (Anthropic). As the providers send it:
//!
//! * chat: `message.content: null`, `message.tool_calls[0]` `{id, type:"function",
//!   function:{name, arguments}}` (arguments a JSON string), `finish_reason:
//!   "tool_calls"`. Streamed: the first chunk's `delta.tool_calls[0]` has `index: 0`,
//!   `id`, `type`, `function.name` and `arguments: ""`; then one chunk per
//!   arguments fragment (`index` and `function.arguments` only); then
//!   `finish_reason: "tool_calls"`, the usage chunk if asked for, `[DONE]`.
//! * Responses: one `function_call` output item `{id, type, status, arguments,
//!   call_id, name}`. Streamed: `response.created`, `response.in_progress`,
//!   `response.output_item.added` (arguments `""`), one
//!   `response.function_call_arguments.delta` per fragment,
//!   `response.function_call_arguments.done` (with `name` and `arguments`),
//!   `response.output_item.done`, `response.completed` (with usage).
//! * Anthropic: a `tool_use` content block `{id, name, input}`, `stop_reason:
//!   "tool_use"`. Streamed: `message_start`, `content_block_start` with
//!   `{"type":"tool_use",id,name,"input":{}}`, `ping`, `content_block_delta`s with
//!   `input_json_delta` (`partial_json` `""` first, then the fragments),
//!   `content_block_stop`, `message_delta` (`stop_reason: "tool_use"`, usage),
//!   `message_stop`.
//!
//! The arguments are streamed in fragments of up to 8 bytes that concatenate to
//! the compact JSON.
//!
//! ## Control headers (per request)
//!
//! * `x-mock-latency-ms: N`: wait N ms before the response head.
//! * `x-mock-chunk-delay-ms: N`: wait N ms between stream events.
//! * `x-mock-tokens: N`: number of output tokens (overrides `--tokens`; still capped by
//!   the request's `max_tokens` / `max_output_tokens` and by 4096).
//! * `x-mock-prompt-tokens: N`: report N input tokens instead of the text's count (a
//!   provider whose count exceeds any bound, for overrun tests).
//! * `x-mock-cached-tokens: N`: OpenAI reports N of its prompt tokens as cached (a subset
//!   of the prompt tokens, as OpenAI counts, so capped at them): chat
//!   `usage.prompt_tokens_details.cached_tokens`, Responses
//!   `usage.input_tokens_details.cached_tokens` (JSON, and the stream's usage chunk /
//!   `response.completed`). 0 by default.
//! * `x-mock-cache-read-tokens: N`: Anthropic `cache_read_input_tokens: N` (in addition to
//!   `input_tokens`, as Anthropic counts), in the JSON usage and in the stream's
//!   `message_start` and `message_delta` usage. On OpenAI routes, the same as
//!   `x-mock-cached-tokens` when that is not sent.
//! * `x-mock-cache-write-tokens: N`: Anthropic `cache_creation_input_tokens: N` (and
//!   `cache_creation.ephemeral_5m_input_tokens`), same places. Ignored on OpenAI
//!   routes (OpenAI reports no cache writes).
//! * `x-mock-tool-call: NAME`, `x-mock-tool-args: JSON`: answer with a tool call (see
//!   "Tool calls"); ignored on routes without tool calls (completions, embeddings,
//!   count_tokens, models). `x-mock-tool-args` alone is a 400.
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
//! * `GET /_mock/requests` returns `{"requests":[{"method","path","headers":[[name,value],...],"body","body_len","prompt_tokens"}]}`
//!   (`prompt_tokens`: the input tokens the mock reported for it).
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
//!
//! ## Unit tests
//!
//! `cargo test --bin mock-provider` runs the parser (framing, pipelining,
//! `Expect`, malformed input) and whole exchanges over an in-memory pipe: every
//! reply checked as JSON or as SSE events whose data is JSON and whose `event:`
//! name is its `type`, with usage where the gateway's scanner reads it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A connection: a TCP socket when serving, an in-memory pipe in the unit tests.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
[--no-record] [--log] [--provider-headers]";

/// The rest of the headers OpenAI sends with every answer (`--provider-headers`): its rate
/// limits, processing time, organisation and version, and its CDN's. Without the flag the mock
/// sends only what the answer needs, so a proxy's header maps are sized for 3 or 4 headers
/// where a real provider's answer carries about 20.
const OPENAI_HEADERS: &str = "date: Thu, 03 Dec 2026 18:00:00 GMT\r\n\
openai-organization: org-mock\r\nopenai-processing-ms: 312\r\nopenai-project: proj_mock\r\n\
openai-version: 2020-10-01\r\nx-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-limit-tokens: 30000000\r\nx-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-remaining-tokens: 29999980\r\nx-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-reset-tokens: 0s\r\n\
strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n\
cf-cache-status: DYNAMIC\r\nx-content-type-options: nosniff\r\nserver: cloudflare\r\n\
cf-ray: 8f0a1b2c3d4e5f60-IAD\r\nalt-svc: h3=\":443\"; ma=86400\r\n\
access-control-expose-headers: X-Request-ID\r\n";

/// Anthropic's counterpart of [`OPENAI_HEADERS`].
const ANTHROPIC_HEADERS: &str = "date: Thu, 03 Dec 2026 18:00:00 GMT\r\n\
anthropic-ratelimit-requests-limit: 4000\r\nanthropic-ratelimit-requests-remaining: 3999\r\n\
anthropic-ratelimit-requests-reset: 2026-12-03T18:00:01Z\r\n\
anthropic-ratelimit-input-tokens-limit: 400000\r\n\
anthropic-ratelimit-input-tokens-remaining: 399000\r\n\
anthropic-ratelimit-input-tokens-reset: 2026-12-03T18:00:01Z\r\n\
anthropic-ratelimit-output-tokens-limit: 80000\r\n\
anthropic-ratelimit-output-tokens-remaining: 79900\r\n\
anthropic-ratelimit-output-tokens-reset: 2026-12-03T18:00:01Z\r\n\
anthropic-organization-id: 00000000-0000-4000-8000-000000000000\r\nvia: 1.1 google\r\n\
cf-cache-status: DYNAMIC\r\nx-robots-tag: none\r\nserver: cloudflare\r\n\
cf-ray: 8f0a1b2c3d4e5f61-IAD\r\n";

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
    /// Send the rest of a real provider's headers ([`OPENAI_HEADERS`]).
    provider_headers: bool,
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

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
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
        provider_headers: false,
    };
    let mut args = args.into_iter();
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
            "--provider-headers" => cfg.provider_headers = true,
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
    fn new(cfg: Config) -> State {
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
        State {
            cfg,
            log: Mutex::new(Log::default()),
            total: AtomicU64::new(0),
            ids: AtomicU64::new(1),
            boot,
        }
    }

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

async fn fill(sock: &mut dyn Io, buf: &mut BytesMut, want: usize) -> Result<(), ReadError> {
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
async fn read_request(sock: &mut dyn Io, buf: &mut BytesMut) -> Result<Option<Request>, ReadError> {
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

async fn read_chunked(sock: &mut dyn Io, buf: &mut BytesMut) -> Result<Bytes, ReadError> {
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
async fn read_line(sock: &mut dyn Io, buf: &mut BytesMut) -> Result<usize, ReadError> {
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
    sock: &mut dyn Io,
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
    sock: &'a mut dyn Io,
    chunked: bool,
    keep_alive: bool,
    delay: Duration,
    sent: usize,
    cut_after: Option<usize>,
    buf: Vec<u8>,
}

impl<'a> Sse<'a> {
    async fn begin(sock: &'a mut dyn Io, job: &Job<'_>) -> Result<Sse<'a>, Close> {
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
    /// `GET /v1/models/{id}`.
    Model(Provider),
}

impl Route {
    fn provider(self) -> Provider {
        match self {
            Route::Messages | Route::CountTokens => Provider::Anthropic,
            Route::Models(p) | Route::Model(p) => p,
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
        ("GET", p)
            if p.strip_prefix("/v1/models/")
                .is_some_and(|id| !id.is_empty()) =>
        {
            Some(Route::Model(if looks_anthropic(req) {
                Provider::Anthropic
            } else {
                Provider::OpenAi
            }))
        }
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
    /// OpenAI `cached_tokens` (`x-mock-cached-tokens`, or `x-mock-cache-read-tokens`).
    cached_tokens: u64,
    /// Anthropic `cache_read_input_tokens` (`x-mock-cache-read-tokens`).
    cache_read_tokens: u64,
    /// Anthropic `cache_creation_input_tokens` (`x-mock-cache-write-tokens`).
    cache_write_tokens: u64,
    /// `x-mock-tool-call`: answer with a call of this tool.
    tool_call: Option<String>,
    /// `x-mock-tool-args`: its arguments, compact JSON (an object).
    tool_args: Option<String>,
    status: Option<u16>,
    faults: Faults,
}

fn is_tool_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// A tool name as both providers accept it: 1 to 128 of `[A-Za-z0-9_-]`.
fn parse_tool_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 128 || !s.chars().all(is_tool_name_char) {
        return Err(format!("expected a tool name of [A-Za-z0-9_-], got '{s}'"));
    }
    Ok(s.to_string())
}

/// The in-band trigger for a tool call, for clients that cannot add headers.
const TOOL_TRIGGER: &str = "mock:tool:";

/// The texts of the request's last message, if the user sent it (not a tool result):
/// `messages[-1]` (chat, Anthropic) or `input` / `input[-1]` (Responses).
fn last_user_texts(route: Route, body: &Value) -> Vec<&str> {
    let last = match route {
        Route::Chat | Route::Messages => body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last()),
        Route::Responses => match body.get("input") {
            Some(Value::String(s)) => return vec![s.as_str()],
            Some(Value::Array(items)) => items.last(),
            _ => None,
        },
        _ => None,
    };
    let Some(last) = last else {
        return Vec::new();
    };
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return Vec::new();
    }
    match last.get("content") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("text" | "input_text")
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

/// A tool call asked for in band: `mock:tool:NAME` in the last user message, optionally
/// followed at once by a JSON object of arguments (`mock:tool:get_weather{"city":"Paris"}`).
/// `Err` when a `{` follows the name but is not a JSON object.
fn tool_trigger(route: Route, body: &Value) -> Result<Option<ToolCall>, String> {
    for text in last_user_texts(route, body) {
        let Some(at) = text.find(TOOL_TRIGGER) else {
            continue;
        };
        let rest = &text[at + TOOL_TRIGGER.len()..];
        let end = rest
            .find(|c: char| !is_tool_name_char(c))
            .unwrap_or(rest.len());
        let Ok(name) = parse_tool_name(&rest[..end]) else {
            continue;
        };
        let after = &rest[end..];
        let args = if after.starts_with('{') {
            match serde_json::Deserializer::from_str(after)
                .into_iter::<Value>()
                .next()
            {
                Some(Ok(v @ Value::Object(_))) => v.to_string(),
                _ => {
                    let what = "are not a JSON object";
                    return Err(format!(
                        "mock-provider: the arguments after {TOOL_TRIGGER}{name} {what}"
                    ));
                }
            }
        } else {
            "{}".to_string()
        };
        return Ok(Some(ToolCall { name, args }));
    }
    Ok(None)
}

/// The tool call a reply carries instead of text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ToolCall {
    name: String,
    /// Compact JSON object.
    args: String,
}

impl ToolCall {
    /// The arguments cut into the fragments a stream carries (up to 8 bytes each, on char
    /// boundaries), as providers stream them: concatenated they are the JSON.
    fn fragments(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = self.args.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(8);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            out.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        out
    }
}

/// Tool arguments: a JSON object, returned compact.
fn parse_tool_args(s: &str) -> Result<String, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v.to_string()),
        _ => Err(format!("expected a JSON object, got '{s}'")),
    }
}

fn controls(req: &Request, cfg: &Config) -> Result<Ctl, String> {
    let mut ctl = Ctl {
        latency_ms: cfg.latency_ms,
        chunk_delay_ms: cfg.chunk_delay_ms,
        tokens: cfg.tokens,
        prompt_tokens: None,
        cached_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        tool_call: None,
        tool_args: None,
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
            "cache-read-tokens" => ctl.cache_read_tokens = parse_num(value).map_err(bad)?,
            "cache-write-tokens" => ctl.cache_write_tokens = parse_num(value).map_err(bad)?,
            "tool-call" => ctl.tool_call = Some(parse_tool_name(value).map_err(bad)?),
            "tool-args" => ctl.tool_args = Some(parse_tool_args(value).map_err(bad)?),
            "status" => ctl.status = parse_status(value).map_err(bad)?,
            "fault" => ctl.faults = Faults::parse(value).map_err(bad)?,
            _ => return Err(format!("mock-provider: unknown control header {name}")),
        }
    }
    if ctl.tool_args.is_some() && ctl.tool_call.is_none() {
        return Err("mock-provider: x-mock-tool-args needs x-mock-tool-call".to_string());
    }
    if ctl.cached_tokens == 0 {
        ctl.cached_tokens = ctl.cache_read_tokens;
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
    tool: Option<ToolCall>,
}

async fn handle(st: &State, sock: &mut dyn Io, req: Arc<Request>) -> Flow {
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
    let mut extra = match provider {
        Provider::OpenAi => format!("x-request-id: req_{id}\r\n"),
        Provider::Anthropic => format!("request-id: req_{id}\r\n"),
    };
    if st.cfg.provider_headers {
        extra.push_str(match provider {
            Provider::OpenAi => OPENAI_HEADERS,
            Provider::Anthropic => ANTHROPIC_HEADERS,
        });
    }

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
    if let Route::Model(p) = route {
        let path = req.path.strip_suffix('/').unwrap_or(&req.path);
        let id = path.strip_prefix("/v1/models/").unwrap_or(path);
        let body = model_object(p, id);
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
    if route == Route::CountTokens && !body.get("messages").is_some_and(Value::is_array) {
        let body = invalid_request(provider, "messages: Field required", None);
        return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
    }
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
    let tool = match route {
        Route::Chat | Route::Responses | Route::Messages => match &ctl.tool_call {
            Some(name) => Some(ToolCall {
                name: name.clone(),
                args: ctl.tool_args.clone().unwrap_or_else(|| "{}".to_string()),
            }),
            None => match tool_trigger(route, &body) {
                Ok(t) => t,
                Err(msg) => {
                    let body = invalid_request(provider, &msg, None);
                    return send_json(sock, &req, 400, &extra, body.as_bytes(), false).await;
                }
            },
        },
        _ => None,
    };
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
    let prompt = ctl.prompt_tokens.unwrap_or_else(|| input_tokens(&body));
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
        tool,
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
        Route::Models(_) | Route::Model(_) => Ok(()),
    }
}

async fn finish_json(sock: &mut dyn Io, job: &Job<'_>, body: String) -> Flow {
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
async fn hang(sock: &mut dyn Io) -> Flow {
    let mut scratch = [0u8; 4096];
    loop {
        match sock.read(&mut scratch).await {
            Ok(0) | Err(_) => return Err(Close),
            Ok(_) => {}
        }
    }
}

async fn admin(st: &State, sock: &mut dyn Io, req: &Request) -> Flow {
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
                let prompt = r
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("x-mock-prompt-tokens"))
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| {
                        serde_json::from_slice::<Value>(&r.body).map_or(0, |b| input_tokens(&b))
                    });
                let _ = write!(
                    out,
                    r#","body_len":{},"prompt_tokens":{prompt}}}"#,
                    r.body.len()
                );
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

/// The input tokens the mock reports for a request, counted as a provider's tokenizer counts
/// them: the text, not the JSON around it. Every string value in the body (keys and JSON syntax
/// excluded), four bytes a token, rounded up, plus 3 tokens per message or input item and 3 for
/// the request (OpenAI's documented per-message overhead). Deterministic, so tests recompute it
/// from the recorded body; `GET /_mock/requests` reports it as `prompt_tokens`.
fn input_tokens(body: &Value) -> u64 {
    fn text_bytes(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(a) => a.iter().map(text_bytes).sum(),
            Value::Object(o) => o.values().map(text_bytes).sum(),
            _ => 0,
        }
    }
    let items = ["messages", "input"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_array))
        .map_or(1, |a| a.len() as u64);
    text_bytes(body).div_ceil(4) + 3 * items + 3
}

fn chat_usage(prompt: u64, out: usize, cached: u64) -> String {
    format!(
        r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"prompt_tokens_details":{{"cached_tokens":{cached},"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
        p = prompt,
        c = out,
        t = prompt.saturating_add(out as u64),
        cached = cached.min(prompt)
    )
}

async fn chat(sock: &mut dyn Io, job: &Job<'_>) -> Flow {
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
        let (content, calls, finish) = match &job.tool {
            Some(t) => (
                "null".to_string(),
                format!(
                    r#""tool_calls":[{{"id":"call_{id}","type":"function","function":{{"name":"{name}","arguments":{args}}}}}],"#,
                    id = job.id,
                    name = t.name,
                    args = quoted(&t.args)
                ),
                "tool_calls",
            ),
            None => (format!(r#""{}""#, text_of(job.out)), String::new(), "stop"),
        };
        let body = format!(
            r#"{{"id":"{id}","object":"chat.completion","created":{cr},"model":{m},"choices":[{{"index":0,"message":{{"role":"assistant","content":{content},{calls}"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"{finish}"}}],{usage}"service_tier":"default","system_fingerprint":"fp_mock"}}"#,
            cr = job.created,
            m = job.model,
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
    match &job.tool {
        // As OpenAI streams a call: the id and name first, then the arguments in fragments.
        Some(t) => {
            let _ = write!(
                d,
                r#"{{"index":0,"delta":{{"role":"assistant","content":null,"tool_calls":[{{"index":0,"id":"call_{id}","type":"function","function":{{"name":"{name}","arguments":""}}}}],"refusal":null}},"logprobs":null,"finish_reason":null}}"#,
                id = job.id,
                name = t.name
            );
            d.push_str(post);
            s.data(&d).await?;
            for frag in t.fragments() {
                d.clear();
                d.push_str(&pre);
                d.push_str(
                    r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"#,
                );
                json_str(&mut d, frag);
                d.push_str(r#"}}]},"logprobs":null,"finish_reason":null}"#);
                d.push_str(post);
                s.data(&d).await?;
            }
        }
        None => {
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
        }
    }
    d.clear();
    d.push_str(&pre);
    let finish = if job.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    let _ = write!(
        d,
        r#"{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}"#
    );
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

async fn completions(sock: &mut dyn Io, job: &Job<'_>) -> Flow {
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

async fn embeddings(sock: &mut dyn Io, job: &Job<'_>) -> Flow {
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

fn responses_usage(prompt: u64, out: usize, cached: u64) -> String {
    format!(
        r#"{{"input_tokens":{p},"input_tokens_details":{{"cached_tokens":{cached},"cache_write_tokens":0}},"output_tokens":{c},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{t}}}"#,
        p = prompt,
        c = out,
        t = prompt.saturating_add(out as u64),
        cached = cached.min(prompt)
    )
}

/// A Responses `function_call` output item; `args` is already a JSON string literal.
fn function_call_item(job: &Job<'_>, t: &ToolCall, status: &str, args: &str) -> String {
    format!(
        r#"{{"id":"fc_{id}","type":"function_call","status":"{status}","arguments":{args},"call_id":"call_{id}","name":"{name}"}}"#,
        id = job.id,
        name = t.name
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

async fn responses(sock: &mut dyn Io, job: &Job<'_>) -> Flow {
    let rid = format!("resp_{}", job.id);
    let mid = format!("msg_{}", job.id);
    let params = EchoParams::from(&job.body);
    let full = text_of(job.out);
    let part = output_text_part(full);
    let done_item = message_item(&mid, "completed", &part);
    let usage = if job.usage {
        responses_usage(job.prompt, job.out, job.ctl.cached_tokens)
    } else {
        "null".to_string()
    };
    if let Some(t) = &job.tool {
        return responses_tool(sock, job, t, &params, &rid, &usage).await;
    }
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

/// A Responses reply whose one output item is a `function_call`.
async fn responses_tool(
    sock: &mut dyn Io,
    job: &Job<'_>,
    t: &ToolCall,
    params: &EchoParams,
    rid: &str,
    usage: &str,
) -> Flow {
    let done_item = function_call_item(job, t, "completed", &quoted(&t.args));
    if !job.stream {
        let body = response_object(job, params, rid, "completed", &done_item, usage);
        return finish_json(sock, job, body).await;
    }
    let fid = format!("fc_{}", job.id);
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
    let pending = response_object(job, params, rid, "in_progress", "", "null");
    emit!("response.created", r#","response":{pending}"#);
    emit!("response.in_progress", r#","response":{pending}"#);
    let empty_item = function_call_item(job, t, "in_progress", r#""""#);
    emit!(
        "response.output_item.added",
        r#","output_index":0,"item":{empty_item}"#
    );
    for frag in t.fragments() {
        emit!(
            "response.function_call_arguments.delta",
            r#","item_id":"{fid}","output_index":0,"delta":{}"#,
            quoted(frag)
        );
    }
    emit!(
        "response.function_call_arguments.done",
        r#","item_id":"{fid}","name":"{}","output_index":0,"arguments":{}"#,
        t.name,
        quoted(&t.args)
    );
    emit!(
        "response.output_item.done",
        r#","output_index":0,"item":{done_item}"#
    );
    let done = response_object(job, params, rid, "completed", &done_item, usage);
    emit!("response.completed", r#","response":{done}"#);
    let _ = seq;
    s.end().await
}

// ---------------------------------------------------------------------------
// Anthropic: Messages
// ---------------------------------------------------------------------------

/// Anthropic's usage object; the cache counts are in addition to `input_tokens`.
fn anthropic_usage(job: &Job<'_>, out: usize) -> String {
    format!(
        r#"{{"input_tokens":{p},"cache_creation_input_tokens":{w},"cache_read_input_tokens":{r},"cache_creation":{{"ephemeral_5m_input_tokens":{w},"ephemeral_1h_input_tokens":0}},"output_tokens":{out},"service_tier":"standard"}}"#,
        p = job.prompt,
        w = job.ctl.cache_write_tokens,
        r = job.ctl.cache_read_tokens,
    )
}

async fn messages(sock: &mut dyn Io, job: &Job<'_>) -> Flow {
    let id = format!("msg_{}", job.id);
    if !job.stream {
        let usage = if job.usage {
            format!(r#","usage":{}"#, anthropic_usage(job, job.out))
        } else {
            String::new()
        };
        let (content, stop) = match &job.tool {
            Some(t) => (
                format!(
                    r#"{{"type":"tool_use","id":"toolu_{tid}","name":"{name}","input":{args}}}"#,
                    tid = job.id,
                    name = t.name,
                    args = t.args
                ),
                "tool_use",
            ),
            None => (
                format!(r#"{{"type":"text","text":"{}"}}"#, text_of(job.out)),
                "end_turn",
            ),
        };
        let body = format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":{m},"content":[{content}],"stop_reason":"{stop}","stop_sequence":null{usage}}}"#,
            m = job.model,
        );
        return finish_json(sock, job, body).await;
    }
    let mut s = Sse::begin(sock, job).await?;
    let start_usage = if job.usage {
        format!(r#","usage":{}"#, anthropic_usage(job, job.out.min(1)))
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
    let mut d = String::with_capacity(128);
    match &job.tool {
        // As Anthropic streams a tool_use block: empty `input`, then `input_json_delta`
        // fragments (the first one empty) that concatenate to the arguments.
        Some(t) => {
            let _ = write!(
                d,
                r#"{{"type":"content_block_start","index":0,"content_block":{{"type":"tool_use","id":"toolu_{tid}","name":"{name}","input":{{}}}}}}"#,
                tid = job.id,
                name = t.name
            );
            s.event("content_block_start", &d).await?;
            s.event("ping", r#"{"type": "ping"}"#).await?;
            for frag in std::iter::once("").chain(t.fragments()) {
                d.clear();
                d.push_str(
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"#,
                );
                json_str(&mut d, frag);
                d.push_str("}}");
                s.event("content_block_delta", &d).await?;
            }
        }
        None => {
            s.event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            )
            .await?;
            s.event("ping", r#"{"type": "ping"}"#).await?;
            for i in 0..job.out {
                d.clear();
                d.push_str(
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""#,
                );
                d.push_str(token(i));
                d.push_str(r#""}}"#);
                s.event("content_block_delta", &d).await?;
            }
        }
    }
    s.event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    )
    .await?;
    let delta_usage = if job.usage {
        format!(
            r#","usage":{{"input_tokens":{p},"cache_creation_input_tokens":{w},"cache_read_input_tokens":{r},"output_tokens":{c}}}"#,
            p = job.prompt,
            w = job.ctl.cache_write_tokens,
            r = job.ctl.cache_read_tokens,
            c = job.out
        )
    } else {
        String::new()
    };
    s.event(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}","stop_sequence":null}}{delta_usage}}}"#,
            stop = if job.tool.is_some() { "tool_use" } else { "end_turn" }
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

/// `GET /v1/models/{id}`: the listed model, or any other id answered alike (the mock serves
/// every model name on its other routes too), in the provider's shape.
fn model_object(provider: Provider, id: &str) -> String {
    let list = match provider {
        Provider::OpenAi => OPENAI_MODELS,
        Provider::Anthropic => ANTHROPIC_MODELS,
    };
    let listed: Value = serde_json::from_str(list).unwrap_or(Value::Null);
    if let Some(m) = listed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == id))
    {
        return m.to_string();
    }
    match provider {
        Provider::OpenAi => format!(
            r#"{{"id":{},"object":"model","created":1700000000,"owned_by":"system"}}"#,
            quoted(id)
        ),
        Provider::Anthropic => format!(
            r#"{{"type":"model","id":{id},"display_name":{id},"created_at":"2025-01-01T00:00:00Z"}}"#,
            id = quoted(id)
        ),
    }
}

// ---------------------------------------------------------------------------
// Connections and main
// ---------------------------------------------------------------------------

async fn serve_conn<S: Io>(st: Arc<State>, mut sock: S) {
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
    let st = Arc::new(State::new(cfg));
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                let st = Arc::clone(&st);
                tokio::spawn(serve_conn(st, sock));
            }
            // e.g. EMFILE under load: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn main() {
    let cfg = match parse_args(std::env::args().skip(1)) {
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

// ---------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    // ---- the request parser ----

    /// Parses `raw` (written in one go, then the client's write side closed) into requests.
    async fn parse_all(raw: &[u8]) -> (Vec<Request>, Option<ReadError>) {
        let (mut client, mut server) = duplex(1 << 20);
        client.write_all(raw).await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            match read_request(&mut server, &mut buf).await {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    async fn bad_status(raw: &[u8]) -> u16 {
        match parse_all(raw).await {
            (_, Some(ReadError::Bad(status, _))) => status,
            (reqs, Some(ReadError::Io)) => panic!("io error after {} requests", reqs.len()),
            (reqs, None) => panic!("accepted {} requests", reqs.len()),
        }
    }

    #[tokio::test]
    async fn parses_a_content_length_body() {
        let (reqs, err) = parse_all(
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Mixed-Case:  v \r\n\r\nhello",
        )
        .await;
        assert!(err.is_none());
        let r = &reqs[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(r.target, "/v1/chat/completions?x=1");
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.header("x-mixed-case"), Some("v"), "lowercased, trimmed");
        assert!(r.keep_alive);
    }

    #[tokio::test]
    async fn parses_a_chunked_body_with_extensions_and_trailers() {
        let (reqs, err) = parse_all(
            b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await;
        assert!(err.is_none());
        assert_eq!(&reqs[0].body[..], b"hello world");
    }

    #[tokio::test]
    async fn parses_pipelined_requests_in_order() {
        let (reqs, err) = parse_all(
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n3\r\n0\r\n\r\nGET /d HTTP/1.0\r\n\r\n",
        )
        .await;
        assert!(err.is_none());
        let paths: Vec<_> = reqs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
        assert_eq!(&reqs[0].body[..], b"1");
        assert_eq!(&reqs[2].body[..], b"3");
        assert!(!reqs[3].keep_alive, "HTTP/1.0 without keep-alive");
    }

    #[tokio::test]
    async fn answers_expect_100_continue_before_the_body_is_sent() {
        let (mut client, mut server) = duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let r = read_request(&mut server, &mut buf).await;
            r.ok().flatten().map(|r| r.body)
        });
        client
            .write_all(
                b"POST /v1/responses HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            )
            .await
            .unwrap();
        let mut got = [0u8; 25];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"body").await.unwrap();
        assert_eq!(&reader.await.unwrap().unwrap()[..], b"body");
    }

    #[tokio::test]
    async fn rejects_malformed_requests() {
        assert_eq!(bad_status(b"GET / HTTP/1.1 extra\r\n\r\n").await, 400);
        assert_eq!(bad_status(b"GET /\r\n\r\n").await, 400);
        assert_eq!(bad_status(b"GET / HTTP/2.0\r\n\r\n").await, 505);
        assert_eq!(bad_status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").await, 400);
        assert_eq!(
            bad_status(b"GET / HTTP/1.1\r\na: b\r\n folded\r\n\r\n").await,
            400
        );
        assert_eq!(
            bad_status(b"GET / HTTP/1.1\r\nbad name: v\r\n\r\n").await,
            400
        );
        assert_eq!(
            bad_status(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .await,
            400,
            "both framings"
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").await,
            400
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").await,
            400
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n").await,
            413
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").await,
            501
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await,
            400,
            "bad chunk size"
        );
        assert_eq!(
            bad_status(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"
            )
            .await,
            400,
            "chunk longer than its size"
        );
        assert_eq!(
            bad_status(b"POST / HTTP/1.1\r\nExpect: magic\r\n\r\n").await,
            417
        );
        let mut huge = b"GET / HTTP/1.1\r\nx: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(bad_status(&huge).await, 431);
    }

    #[tokio::test]
    async fn a_truncated_body_is_a_connection_error() {
        let (_, err) = parse_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(matches!(err, Some(ReadError::Io)));
    }

    // ---- whole exchanges: request bytes in, response bytes out ----

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        /// The SSE events, `(event name, data)`; every data but `[DONE]` must be JSON, and an
        /// event's name must match its `type`, as the gateway's scanner expects.
        fn events(&self) -> Vec<(Option<String>, Value)> {
            let text = String::from_utf8(self.body.clone()).expect("utf-8 stream");
            assert!(text.ends_with("\n\n"), "stream ends with a complete event");
            let mut out = Vec::new();
            for block in text.split("\n\n").filter(|b| !b.is_empty()) {
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                let data = data.expect("every event has data");
                if data == "[DONE]" {
                    out.push((name, Value::String(data)));
                    continue;
                }
                let v: Value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("{e}: event data {data}"));
                if let Some(n) = &name {
                    assert_eq!(v["type"], n.as_str(), "event name is its type: {data}");
                }
                out.push((name, v));
            }
            out
        }
    }

    /// Reads one response (after any 1xx) from `r`.
    async fn read_response(r: &mut DuplexStream) -> Option<Resp> {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        let head = loop {
            if r.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            raw.push(byte[0]);
            if raw.ends_with(b"\r\n\r\n") {
                let head = String::from_utf8(std::mem::take(&mut raw)).unwrap();
                if head.starts_with("HTTP/1.1 1") {
                    continue;
                }
                break head;
            }
        };
        let mut lines = head.lines();
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        let find = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            body.resize(len.parse().unwrap(), 0);
            r.read_exact(&mut body).await.ok()?;
        } else if find("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let mut line = Vec::new();
                while !line.ends_with(b"\r\n") {
                    r.read_exact(&mut byte).await.ok()?;
                    line.push(byte[0]);
                }
                let size =
                    usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
                let mut chunk = vec![0u8; size + 2];
                r.read_exact(&mut chunk).await.ok()?;
                assert_eq!(&chunk[size..], b"\r\n");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            r.read_to_end(&mut body).await.ok()?;
        }
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// Serves `raw` on a fresh mock started with `args`; every response.
    async fn exchange_with(args: &[&str], raw: &[u8]) -> Vec<Resp> {
        let cfg = parse_args(args.iter().map(|a| a.to_string())).unwrap();
        let st = Arc::new(State::new(cfg));
        let (mut client, server) = duplex(1 << 20);
        let task = tokio::spawn(serve_conn(st, server));
        client.write_all(raw).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        while let Some(r) = read_response(&mut client).await {
            out.push(r);
        }
        task.await.unwrap();
        out
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        raw.into_bytes()
    }

    const OPENAI: (&str, &str) = ("authorization", "Bearer sk-test");
    const ANTHROPIC: [(&str, &str); 2] =
        [("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")];

    /// One request to a default mock; its response.
    async fn call(path: &str, headers: &[(&str, &str)], body: Value) -> Resp {
        call_with(&[], path, headers, body).await
    }

    async fn call_with(args: &[&str], path: &str, headers: &[(&str, &str)], body: Value) -> Resp {
        let mut h: Vec<(&str, &str)> = if path.starts_with("/v1/messages") {
            ANTHROPIC.to_vec()
        } else {
            vec![OPENAI]
        };
        h.extend_from_slice(headers);
        let raw = request("POST", path, &h, &body.to_string());
        exchange_with(args, &raw).await.pop().expect("a response")
    }

    fn chat_body(max: u64, stream: bool) -> Value {
        serde_json::json!({"model": "gpt-4o-mini", "max_tokens": max, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]})
    }

    fn messages_body(max: u64, stream: bool) -> Value {
        serde_json::json!({"model": "claude-sonnet-4", "max_tokens": max, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
    }

    fn responses_body(max: u64, stream: bool) -> Value {
        serde_json::json!({"model": "gpt-4o-mini", "max_output_tokens": max, "stream": stream,
            "input": "hi"})
    }

    #[tokio::test]
    async fn provider_headers_add_a_real_providers_header_set_to_every_answer() {
        for (path, body, n) in [
            (
                "/v1/chat/completions",
                chat_body(4, false),
                "x-ratelimit-remaining-tokens",
            ),
            (
                "/v1/chat/completions",
                chat_body(4, true),
                "openai-processing-ms",
            ),
            (
                "/v1/messages",
                messages_body(4, false),
                "anthropic-ratelimit-requests-limit",
            ),
        ] {
            let plain = call(path, &[], body.clone()).await;
            let real = call_with(&["--provider-headers"], path, &[], body).await;
            assert_eq!((plain.status, real.status), (200, 200));
            assert!(plain.headers.iter().all(|(k, _)| k != n), "{path}");
            assert!(
                real.headers.iter().any(|(k, _)| k == n),
                "{path}: {:?}",
                real.headers
            );
            assert!(
                real.headers.len() >= 18,
                "{path}: {} headers",
                real.headers.len()
            );
            assert_eq!(
                plain.body.len(),
                real.body.len(),
                "{path}: the body is unchanged"
            );
        }
    }

    #[test]
    fn output_length_is_asked_for_and_max_tokens_only_caps_it() {
        assert_eq!(
            out_tokens(None, Some(32_000)),
            8,
            "a short reply by default"
        );
        assert_eq!(out_tokens(None, Some(3)), 3, "capped by the request");
        assert_eq!(out_tokens(Some(20), Some(5)), 5);
        assert_eq!(out_tokens(Some(20), None), 20);
        assert_eq!(out_tokens(Some(100_000), None), MAX_OUT_TOKENS as usize);
        assert_eq!(out_tokens(Some(0), Some(10)), 0);
    }

    #[tokio::test]
    async fn claude_code_sized_max_tokens_gets_a_short_reply() {
        let r = call("/v1/messages", &[], messages_body(32_000, false)).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["usage"]["output_tokens"], 8);
        assert_eq!(
            v["content"][0]["text"],
            "The quick brown fox jumps over the lazy"
        );
        let r = call_with(
            &["--tokens", "12"],
            "/v1/chat/completions",
            &[],
            chat_body(32_000, false),
        )
        .await;
        assert_eq!(
            r.json()["usage"]["completion_tokens"],
            12,
            "--tokens sets the length"
        );
        let r = call_with(
            &["--tokens", "12"],
            "/v1/chat/completions",
            &[("x-mock-tokens", "30")],
            chat_body(20, false),
        )
        .await;
        assert_eq!(
            r.json()["usage"]["completion_tokens"],
            20,
            "x-mock-tokens, capped"
        );
        let r = call(
            "/v1/responses",
            &[("x-mock-tokens", "30")],
            responses_body(32_000, false),
        )
        .await;
        assert_eq!(r.json()["usage"]["output_tokens"], 30);
    }

    const WEATHER: &str = r#"{"city":"Paris","days":[1,2],"note":"caf\u00e9 \"quoted\""}"#;

    fn weather() -> Value {
        serde_json::from_str(WEATHER).unwrap()
    }

    fn tool_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("x-mock-tool-call", "get_weather"),
            ("x-mock-tool-args", WEATHER),
        ]
    }

    #[tokio::test]
    async fn chat_tool_call_json() {
        let r = call(
            "/v1/chat/completions",
            &tool_headers(),
            chat_body(100, false),
        )
        .await;
        assert_eq!(r.status, 200);
        let v = r.json();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, weather());
        assert_eq!(v["usage"]["completion_tokens"], 8, "usage still reported");
    }

    #[tokio::test]
    async fn chat_tool_call_stream() {
        let r = call(
            "/v1/chat/completions",
            &tool_headers(),
            chat_body(100, true),
        )
        .await;
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let ev = r.events();
        assert_eq!(ev.last().unwrap().1, "[DONE]");
        let chunks: Vec<&Value> = ev
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v.is_object())
            .collect();
        let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first["index"], 0);
        assert!(first["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(first["function"]["name"], "get_weather");
        assert_eq!(first["function"]["arguments"], "");
        let mut args = String::new();
        for c in &chunks[1..] {
            if let Some(tc) = c["choices"][0]["delta"]["tool_calls"].as_array() {
                assert_eq!(tc[0]["index"], 0);
                assert!(tc[0].get("id").is_none(), "id only in the first fragment");
                args.push_str(tc[0]["function"]["arguments"].as_str().unwrap());
            }
        }
        assert!(chunks.len() > 4, "arguments come in several fragments");
        assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), weather());
        let fin = chunks
            .iter()
            .find(|c| c["choices"][0]["finish_reason"].is_string())
            .unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], 8);
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn responses_tool_call_json_and_stream() {
        let r = call("/v1/responses", &tool_headers(), responses_body(100, false)).await;
        let v = r.json();
        let item = &v["output"][0];
        assert_eq!(v["output"].as_array().unwrap().len(), 1);
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["name"], "get_weather");
        assert_eq!(item["status"], "completed");
        assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
        assert!(item["id"].as_str().unwrap().starts_with("fc_"));
        let args: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, weather());
        assert_eq!(v["usage"]["output_tokens"], 8);

        let r = call("/v1/responses", &tool_headers(), responses_body(100, true)).await;
        let ev = r.events();
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        let mut deduped = names.clone();
        deduped.dedup();
        assert_eq!(
            deduped,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (_, v)) in ev.iter().enumerate() {
            assert_eq!(v["sequence_number"], i, "sequence numbers count up");
        }
        let added = &ev[2].1["item"];
        assert_eq!(
            (added["type"].as_str(), added["arguments"].as_str()),
            (Some("function_call"), Some(""))
        );
        let args: String = ev
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.function_call_arguments.delta"))
            .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), weather());
        let done = &ev[names.len() - 3].1;
        assert_eq!(done["arguments"].as_str().unwrap(), args);
        assert_eq!(done["item_id"], added["id"]);
        let completed = &ev.last().unwrap().1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["output"][0]["type"], "function_call");
        assert_eq!(completed["usage"]["output_tokens"], 8);
    }

    #[tokio::test]
    async fn anthropic_tool_use_json_and_stream() {
        let r = call("/v1/messages", &tool_headers(), messages_body(100, false)).await;
        let v = r.json();
        assert_eq!(v["stop_reason"], "tool_use");
        let block = &v["content"][0];
        assert_eq!(block["type"], "tool_use");
        assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(block["name"], "get_weather");
        assert_eq!(block["input"], weather());
        assert_eq!(v["usage"]["output_tokens"], 8);

        let r = call("/v1/messages", &tool_headers(), messages_body(100, true)).await;
        let ev = r.events();
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            &names[..3],
            ["message_start", "content_block_start", "ping"]
        );
        assert_eq!(
            &names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let start = &ev[1].1["content_block"];
        assert_eq!(start["type"], "tool_use");
        assert_eq!(start["name"], "get_weather");
        assert_eq!(start["input"], serde_json::json!({}));
        let mut json = String::new();
        for (n, v) in &ev {
            if n.as_deref() == Some("content_block_delta") {
                assert_eq!(v["delta"]["type"], "input_json_delta");
                json.push_str(v["delta"]["partial_json"].as_str().unwrap());
            }
        }
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), weather());
        let delta = &ev[names.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["output_tokens"], 8);
        assert_eq!(ev[0].1["message"]["usage"]["output_tokens"], 1);
    }

    #[tokio::test]
    async fn the_last_user_message_can_ask_for_a_tool_call() {
        let ask = format!("please mock:tool:get_weather{WEATHER} now");
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": [{"type": "text", "text": ask}]}]});
        let v = call("/v1/chat/completions", &[], body).await.json();
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        // The tool's result comes back: a text reply, no loop.
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": ask},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]});
        let v = call("/v1/chat/completions", &[], body).await.json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let body = serde_json::json!({"model": "claude-sonnet-4", "max_tokens": 32000, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                                         {"type": "text", "text": "run mock:tool:Bash"}]}]});
        let v = call("/v1/messages", &[], body).await.json();
        assert_eq!(v["content"][0]["name"], "Bash");
        assert_eq!(
            v["content"][0]["input"],
            serde_json::json!({}),
            "no arguments: {{}}"
        );
        let body = serde_json::json!({"model": "claude-sonnet-4", "max_tokens": 100, "messages": [
            {"role": "user", "content": "run mock:tool:Bash"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]});
        let v = call("/v1/messages", &[], body).await.json();
        assert_eq!(v["stop_reason"], "end_turn");

        let body = serde_json::json!({"model": "gpt-4o-mini", "input": "mock:tool:shell{\"cmd\":[\"ls\"]}"});
        let v = call("/v1/responses", &[], body).await.json();
        assert_eq!(v["output"][0]["name"], "shell");
        assert_eq!(v["output"][0]["arguments"], r#"{"cmd":["ls"]}"#);
        let body = serde_json::json!({"model": "gpt-4o-mini", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "mock:tool:shell"}]},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"}]});
        let v = call("/v1/responses", &[], body).await.json();
        assert_eq!(v["output"][0]["type"], "message");

        let body = serde_json::json!({"model": "gpt-4o-mini", "input": "mock:tool:shell{oops"});
        let r = call("/v1/responses", &[], body).await;
        assert_eq!(r.status, 400, "bad in-band arguments fail loudly");
    }

    #[tokio::test]
    async fn bad_tool_controls_get_a_400() {
        for h in [
            vec![("x-mock-tool-call", "has space")],
            vec![("x-mock-tool-call", "f"), ("x-mock-tool-args", "[1]")],
            vec![("x-mock-tool-call", "f"), ("x-mock-tool-args", "{")],
            vec![("x-mock-tool-args", "{}")],
        ] {
            let r = call("/v1/chat/completions", &h, chat_body(5, false)).await;
            assert_eq!(r.status, 400, "{h:?}");
            assert!(
                String::from_utf8_lossy(&r.body).contains("x-mock-tool"),
                "names the header"
            );
        }
    }

    #[tokio::test]
    async fn openai_cached_tokens_in_chat_and_responses() {
        let h = [
            ("x-mock-prompt-tokens", "1000"),
            ("x-mock-cached-tokens", "800"),
        ];
        let v = call("/v1/chat/completions", &h, chat_body(5, false))
            .await
            .json();
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 800);
        let v = call("/v1/responses", &h, responses_body(5, false))
            .await
            .json();
        assert_eq!(v["usage"]["input_tokens"], 1000);
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 800);
        let ev = call("/v1/responses", &h, responses_body(5, true))
            .await
            .events();
        let (name, done) = ev.last().unwrap();
        assert_eq!(name.as_deref(), Some("response.completed"));
        assert_eq!(
            done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
            800
        );
        // A subset of the prompt, as OpenAI counts; cache-read is accepted as an alias.
        let h = [
            ("x-mock-prompt-tokens", "10"),
            ("x-mock-cache-read-tokens", "800"),
        ];
        let v = call("/v1/responses", &h, responses_body(5, false))
            .await
            .json();
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 10);
    }

    #[tokio::test]
    async fn anthropic_cache_tokens_in_json_and_stream() {
        let h = [
            ("x-mock-prompt-tokens", "10"),
            ("x-mock-cache-read-tokens", "5000"),
            ("x-mock-cache-write-tokens", "300"),
        ];
        let v = call("/v1/messages", &h, messages_body(5, false))
            .await
            .json();
        let u = &v["usage"];
        assert_eq!(
            (
                &u["input_tokens"],
                &u["cache_read_input_tokens"],
                &u["cache_creation_input_tokens"]
            ),
            (&Value::from(10), &Value::from(5000), &Value::from(300)),
            "in addition to input_tokens, as Anthropic counts"
        );
        assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], 300);
        let ev = call("/v1/messages", &h, messages_body(5, true))
            .await
            .events();
        let start = &ev[0].1["message"]["usage"];
        assert_eq!(start["cache_read_input_tokens"], 5000);
        assert_eq!(start["cache_creation_input_tokens"], 300);
        let delta = &ev
            .iter()
            .find(|(n, _)| n.as_deref() == Some("message_delta"))
            .unwrap()
            .1;
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 5000);
        assert_eq!(delta["usage"]["cache_creation_input_tokens"], 300);
        assert_eq!(delta["usage"]["output_tokens"], 5);
        // Nothing asked: zeros, as a first uncached call reports.
        let v = call("/v1/messages", &[], messages_body(5, false))
            .await
            .json();
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    }

    #[tokio::test]
    async fn models_retrieve_in_both_shapes() {
        let get = |path: &str, headers: &[(&str, &str)]| request("GET", path, headers, "");
        let mut raw = get("/v1/models/gpt-4o", &[OPENAI]);
        raw.extend(get("/v1/models/some-new-model", &[OPENAI]));
        raw.extend(get("/v1/models/claude-sonnet-4-20250514", &ANTHROPIC));
        raw.extend(get("/v1/models/claude-x", &ANTHROPIC));
        raw.extend(get("/v1/models/gpt-4o", &[]));
        raw.extend(get(
            "/v1/models/gpt-4o",
            &[OPENAI, ("x-mock-status", "404")],
        ));
        let r = exchange_with(&[], &raw).await;
        assert_eq!(r.len(), 6, "keep-alive: every request answered");
        assert_eq!(
            r[0].json(),
            serde_json::json!({"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"})
        );
        assert_eq!(r[1].json()["id"], "some-new-model");
        assert_eq!(r[1].json()["object"], "model");
        let a = r[2].json();
        assert_eq!(
            (a["type"].as_str(), a["display_name"].as_str()),
            (Some("model"), Some("Claude Sonnet 4"))
        );
        let a = r[3].json();
        assert_eq!(
            (a["type"].as_str(), a["id"].as_str()),
            (Some("model"), Some("claude-x"))
        );
        assert!(a["created_at"].is_string());
        assert_eq!(r[4].status, 401);
        assert_eq!(
            (r[5].status, r[5].json()["error"]["code"].as_str()),
            (404, Some("model_not_found"))
        );
    }

    #[tokio::test]
    async fn count_tokens_answers_like_anthropic() {
        let body = serde_json::json!({"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
        let mut raw = request("POST", "/v1/messages/count_tokens", &ANTHROPIC, &body);
        raw.extend(request(
            "POST",
            "/v1/messages/count_tokens",
            &[ANTHROPIC[0]],
            &body,
        ));
        raw.extend(request(
            "POST",
            "/v1/messages/count_tokens",
            &[ANTHROPIC[1]],
            &body,
        ));
        raw.extend(request(
            "POST",
            "/v1/messages/count_tokens",
            &ANTHROPIC,
            r#"{"model":"m"}"#,
        ));
        let r = exchange_with(&[], &raw).await;
        assert_eq!(r[0].status, 200);
        assert_eq!(
            r[0].json(),
            // "claude-sonnet-4", "user", "hi": 21 bytes of text → 6, one message 3, the request 3.
            serde_json::json!({"input_tokens": 12})
        );
        assert!(r[0].header("request-id").is_some());
        assert_eq!(
            (r[1].status, r[1].json()["type"].as_str()),
            (400, Some("error")),
            "no anthropic-version"
        );
        assert_eq!(r[2].status, 401, "no key");
        assert_eq!(r[3].status, 400, "no messages");
    }

    #[tokio::test]
    async fn text_streams_still_carry_usage_where_the_scanner_reads_it() {
        let ev = call("/v1/chat/completions", &[], chat_body(3, true))
            .await
            .events();
        let objs: Vec<&Value> = ev
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v.is_object())
            .collect();
        let text: String = objs
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "The quick brown");
        assert_eq!(objs.last().unwrap()["usage"]["completion_tokens"], 3);
        let ev = call("/v1/messages", &[], messages_body(3, true))
            .await
            .events();
        let delta = ev
            .iter()
            .find(|(n, _)| n.as_deref() == Some("message_delta"))
            .unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta.1["usage"]["output_tokens"], 3);
        let ev = call("/v1/responses", &[], responses_body(3, true))
            .await
            .events();
        assert_eq!(ev.len(), 3 + 8);
        assert_eq!(
            ev.last().unwrap().1["response"]["usage"]["output_tokens"],
            3
        );
    }

    #[test]
    fn fragments_concatenate_to_the_arguments_on_char_boundaries() {
        let t = ToolCall {
            name: "f".into(),
            args: r#"{"s":"ééééééé","n":1}"#.into(),
        };
        let f = t.fragments();
        assert!(f.len() > 2);
        assert!(f.iter().all(|p| !p.is_empty()));
        assert_eq!(f.concat(), t.args);
        let empty = ToolCall {
            name: "f".into(),
            args: String::new(),
        };
        assert!(empty.fragments().is_empty());
    }
}
