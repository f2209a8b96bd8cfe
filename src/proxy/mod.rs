//! The Pingora `ProxyHttp` implementation: the phase table, each phase a few lines of glue
//! around the pure engine.
//!
//! | phase | here |
//! |---|---|
//! | `request_filter` | [`admit`]: facts → `engine::admission` → rate limit, body read, ledger reservation. Blocks are answered here and never reach a provider. |
//! | `upstream_peer` | [`attempts`]: the current try of the plan (circuit permitting); its provider's address from the resolver cache, timeouts, TLS with SNI |
//! | `upstream_request_filter` | path prefix, `Host`, project key out, provider credential in, identity encoding, exact `Content-Length` |
//! | `request_body_filter` | put the prepared body in place of the replayed one (every try) |
//! | `upstream_response_filter` | [`attempts`]: a 5xx or 429 with tries left is not forwarded: it becomes a retry |
//! | `fail_to_connect`, `error_while_proxy` | [`attempts`]: record the try's outcome; retry while nothing reached the client and the deadline allows |
//! | `response_filter` | request id and provider headers; pick the usage scanner |
//! | `response_body_filter` | feed the scanner; bytes pass untouched unless the injected usage chunk must go, or the project's `report_cost` adds the cost to the usage |
//! | `fail_to_proxy` | the one place an upstream failure becomes a response (the last provider answer, or a SPEC error) |
//! | `logging` | [`finish`]: always runs once: usage → cost → settle → record → metrics → access log |
//!
//! Every response Tollgate writes itself goes through [`respond`]. Must not hold a lock across
//! a phase or do blocking I/O.

mod admit;
mod attempts;
mod body_replay;
mod ctx;
mod finish;
mod respond;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::engine::auth;
use crate::engine::error::GatewayError;
use crate::engine::usage::{Charge, Feed, UsageScanner};
use crate::ledger::fleet::Fleet;
use crate::ledger::Ledger;
use crate::ratelimit::RateLimiter;
use crate::resolver::Resolver;
use admit::Admit;
use attempts::Outcome;
pub use ctx::{in_flight, Ctx};
use respond::respond;

/// Pingora replays a consumed body from its retry buffer only up to this size; larger bodies
/// go through [`body_replay`].
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Idle upstream connections are dropped before providers drop them (OpenAI and Anthropic
/// close idle keep-alive connections after about a minute), so a POST is never sent on a
/// connection the provider is closing.
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// Request headers that never reach a provider: the client's key (the provider gets its own
/// credential), Tollgate's own (the end user, tags, the cache directive: the body's `user`, if
/// any, is the client's to send), `accept-encoding` (usage is read from the response bytes, so
/// they must arrive uncompressed), `expect` (Tollgate holds the whole body by then and
/// answered the client's Expect itself) and, when Tollgate sends a body it prepared,
/// `transfer-encoding` (that body goes with a content-length).
const NEVER_FORWARDED: [&str; 9] = [
    auth::KEY_HEADERS[0],
    auth::KEY_HEADERS[1],
    auth::KEY_HEADERS[2],
    "x-tollgate-user",
    "x-tollgate-tags",
    "x-tollgate-cache",
    "accept-encoding",
    "expect",
    "transfer-encoding",
];
const TRANSFER_ENCODING: usize = 8;

pub struct Gateway {
    pub config: Arc<ArcSwap<Config>>,
    pub resolver: Arc<Resolver>,
    pub ledger: Arc<Ledger>,
    pub limits: Arc<RateLimiter>,
    /// Fleet mode: budgets, rate limits and freezes shared on Redis.
    pub fleet: Option<Arc<Fleet>>,
    /// The response cache (kept across reloads).
    pub cache: Arc<crate::cache::ResponseCache>,
    ids: RequestIds,
}

use crate::engine::config::Config;

impl Gateway {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        resolver: Arc<Resolver>,
        ledger: Arc<Ledger>,
        limits: Arc<RateLimiter>,
        fleet: Option<Arc<Fleet>>,
        cache: Arc<crate::cache::ResponseCache>,
    ) -> Gateway {
        Gateway {
            config,
            resolver,
            ledger,
            limits,
            fleet,
            cache,
            ids: RequestIds::new(),
        }
    }
}

/// Request ids: a random per-process prefix and a counter, unique across restarts and cheap.
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        RequestIds {
            prefix: u32::from_le_bytes(b),
            counter: AtomicU64::new(0),
        }
    }

    /// `{prefix:08x}{counter:012x}`, written without the formatting machinery (a `format!`
    /// here was 2,000 instructions of every request).
    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut s = String::with_capacity(20);
        push_hex(&mut s, u64::from(self.prefix), 8);
        push_hex(&mut s, n, 12);
        s
    }
}

/// `v` in lowercase hex, zero-padded to `width` digits (more when it needs more), as
/// `format!("{v:0width$x}")` writes it.
fn push_hex(out: &mut String, v: u64, width: usize) {
    let digits = (64 - v.leading_zeros() as usize).div_ceil(4);
    for i in (0..width.max(digits).min(16)).rev() {
        out.push(char::from(
            b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize],
        ));
    }
}

fn internal(what: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, what)
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: pingora keeps the context inside its per-request future, which is moved and
    /// copied as a whole (and can hold more than one slot for it); a pointer keeps that future
    /// small, so every request copies less and every open stream holds less memory.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new(self.ids.next()))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        if crate::handover::upgrading() {
            // The successor has (or is about to get) the sockets: this answer closes the
            // connection, so the client's next request opens one to the successor.
            session.set_keepalive(None);
        }
        match self.admit(session, ctx).await {
            Ok(Admit::Local { status, body }) => {
                respond::json(session, &ctx.request_id, status, body, None).await?;
                Ok(true)
            }
            Ok(Admit::Cached(entry)) => {
                respond::cached(session, ctx, &entry).await?;
                Ok(true)
            }
            Ok(Admit::Forward { body, buffered }) => {
                if !buffered || body.len() > RETRY_BUFFER_LIMIT || session.retry_buffer_truncated()
                {
                    body_replay::install(&mut session.downstream_session, body.clone())?;
                }
                ctx.admitted.body = Some(body);
                Ok(false)
            }
            Err(e) => {
                respond(session, ctx, &e).await?;
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        // Only the try that produces the final response is scanned and charged.
        ctx.upstream = Default::default();
        ctx.error = None;
        ctx.attempts.retry = None;
        if let Some(wait) = ctx.attempts.wait_before.take() {
            tokio::time::sleep(wait).await;
        }
        let (Some(cfg), Some(p)) = (ctx.cfg.clone(), self.next_provider(ctx)) else {
            return Err(internal("no provider chosen"));
        };
        let provider = &cfg.providers[p];
        let addr = match self
            .resolver
            .resolve(&provider.base.host, provider.base.port)
            .await
        {
            Ok(a) => a,
            Err(msg) => {
                ctx.error = Some(GatewayError::UpstreamUnavailable(format!(
                    "Provider {} is unreachable: {msg}",
                    provider.name
                )));
                let e = Error::explain(ErrorType::HTTPStatus(502), "dns");
                return Err(self.attempt_failed(session, ctx, Outcome::ConnectError, e));
            }
        };
        // SNI is always the host name: pingora skips certificate verification on empty SNI.
        let sni = if provider.base.tls {
            provider.base.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, provider.base.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(provider.connect_timeout);
        o.total_connection_timeout = Some(provider.connect_timeout);
        o.read_timeout = Some(provider.read_timeout);
        o.write_timeout = Some(provider.read_timeout);
        o.idle_timeout = Some(UPSTREAM_IDLE);
        o.verify_cert = true;
        o.verify_hostname = true;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let (Some(cfg), Some(p)) = (ctx.cfg.as_ref(), ctx.attempts.provider) else {
            return Err(internal("no provider chosen"));
        };
        let provider = &cfg.providers[p];
        if !provider.base.path.is_empty() {
            let pq = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            let uri = provider
                .upstream_path(pq)
                .parse::<http::Uri>()
                .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream path"))?;
            req.set_uri(uri);
        }
        let wire = &provider.wire;
        req.insert_header(http::header::HOST, wire.host.clone())?;
        // One pass over the client's headers finds which of those never forwarded are there;
        // only those are removed (a removal parses and hashes its name in two maps).
        let mut present = 0u32;
        for name in req.headers.keys() {
            if let Some(i) = NEVER_FORWARDED.iter().position(|n| *n == name.as_str()) {
                present |= 1 << i;
            }
        }
        if ctx.admitted.body.is_none() {
            // The body goes as the client framed it.
            present &= !(1 << TRANSFER_ENCODING);
        }
        for (i, name) in NEVER_FORWARDED.iter().enumerate() {
            if present & (1 << i) != 0 {
                req.remove_header(*name);
            }
        }
        if let Some((name, value)) = &wire.credential {
            req.insert_header(name, value.clone())?;
        }
        if let Some(v) = &wire.anthropic_version {
            if req.headers.get("anthropic-version").is_none() {
                req.insert_header("anthropic-version", v.clone())?;
            }
        }
        req.insert_header("x-tollgate-request-id", ctx.request_id_value.clone())?;
        if let Some(b) = &ctx.admitted.body {
            req.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()))?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(prepared) = &ctx.admitted.body {
            // Pingora replays what it buffered; send the prepared body instead, once, at the end.
            *body = if end_of_stream {
                Some(prepared.clone())
            } else {
                None
            };
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        self.on_response_status(session, resp, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        e: Box<Error>,
    ) -> Box<Error> {
        let outcome = Outcome::of_error(&e);
        self.attempt_failed(session, ctx, outcome, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        _client_reused: bool,
    ) -> Box<Error> {
        self.on_proxy_error(session, e.more_context(format!("Peer: {peer}")), ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.upstream.first_byte.get_or_insert_with(Instant::now);
        let status = resp.status.as_u16();
        ctx.upstream.status = Some(status);
        resp.insert_header("x-tollgate-request-id", ctx.request_id_value.clone())?;
        if let (Some(cfg), Some(p)) = (ctx.cfg.as_ref(), ctx.attempts.provider) {
            resp.insert_header("x-tollgate-provider", cfg.providers[p].wire.name.clone())?;
        }
        if let Some(rem) = ctx.admitted.remaining {
            resp.insert_header("x-tollgate-budget-remaining-usd", rem.usd_6dp())?;
        }
        if let Some(c) = ctx.cache.as_mut() {
            resp.insert_header("x-tollgate-cache", HeaderValue::from_static(c.result))?;
            if c.recording.is_some() {
                if (200..300).contains(&status) {
                    c.status = status;
                    c.content_type = resp
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                } else {
                    // Only complete 2xx answers are stored.
                    c.recording = None;
                }
            }
        }
        let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
        if let (Some(format), true) = (format, (200..300).contains(&status)) {
            let sse = resp
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let strip = sse && ctx.admitted.strip_usage_chunk;
            let mut scanner = UsageScanner::new(format, sse, strip);
            if ctx.admitted.report_cost {
                let charge = match &ctx.admitted.price {
                    Some(p) => Charge::Priced(p.clone()),
                    None => Charge::Unpriced,
                };
                scanner = scanner.with_report(charge, ctx.admitted.request_bytes);
            }
            if strip || scanner.edits_body() {
                // The body shrinks by the usage chunk, or grows by the cost; let pingora
                // frame it.
                resp.remove_header("content-length");
            }
            ctx.upstream.scanner = Some(scanner);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if let Some(c) = ctx.cache.as_mut() {
            // The body as the provider sent it (before the usage chunk is taken out for the
            // client), up to the entry limit.
            if let (Some(buf), Some(chunk)) = (c.recording.as_mut(), body.as_ref()) {
                if !buf.push(chunk, crate::engine::cache::MAX_ENTRY_BYTES) {
                    c.recording = None;
                }
            }
            if end_of_stream {
                c.complete = true;
            }
        }
        let Some(scanner) = ctx.upstream.scanner.as_mut() else {
            if end_of_stream {
                self.store_cached(ctx);
            }
            return Ok(None);
        };
        if ctx.admitted.report_cost {
            scanner.set_elapsed_ms(ctx.started.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(chunk) = body.as_ref() {
            if let Feed::Replace(b) = scanner.feed_bytes(chunk) {
                *body = Some(b);
            }
        }
        if end_of_stream {
            if let Some(rest) = scanner.finish() {
                *body = Some(match body.take() {
                    Some(b) if !b.is_empty() => {
                        let mut v = Vec::with_capacity(b.len() + rest.len());
                        v.extend_from_slice(&b);
                        v.extend_from_slice(&rest);
                        Bytes::from(v)
                    }
                    _ => rest,
                });
            }
            self.store_cached(ctx);
        }
        Ok(None)
    }

    /// A client that goes away mid-response (a closed tab, a cancelled SDK call) is routine, not
    /// an error of the gateway's: pingora would log each one at error level, so an operator
    /// would see thousands of error lines for ordinary traffic. The request's access-log line
    /// still records how it ended.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let mut err = ctx
            .error
            .clone()
            .unwrap_or_else(|| finish::classify(e, ctx));
        if let (Some(last), false) = (ctx.attempts.last_answer.as_ref(), err.is_block()) {
            // A provider answered an earlier try with an error status, and no later try got an
            // answer at all: that answer is the truest thing to tell the client.
            let provider = ctx
                .cfg
                .as_deref()
                .zip(ctx.attempts.provider)
                .map_or("-", |(c, p)| c.providers[p].name.as_str());
            err = GatewayError::UpstreamStatus {
                status: last.status.as_u16(),
                message: format!(
                    "An earlier try answered {}; the last try (provider {provider}) got no answer: {}",
                    last.status,
                    err.message()
                ),
            };
        }
        let code = match e.esource() {
            // The client went away: nobody to answer.
            ErrorSource::Downstream if !matches!(e.etype(), ErrorType::HTTPStatus(_)) => 0,
            _ => err.status(),
        };
        if code > 0 && session.response_written().is_none() {
            let last = ctx.attempts.last_answer.take();
            let written = match (&err, last) {
                (GatewayError::UpstreamStatus { .. }, Some(last)) => {
                    respond::provider_error(session, ctx, &err, &last).await
                }
                _ => respond(session, ctx, &err).await,
            };
            if let Err(w) = written {
                log::debug!("{}: could not write error response: {w}", ctx.request_id);
            }
        }
        ctx.error = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        self.finish(session, e, ctx);
    }
}

#[cfg(test)]
mod ids_tests {
    use super::*;

    #[test]
    fn request_ids_are_written_as_format_writes_them() {
        for v in [
            0,
            1,
            0xf,
            0x10,
            0xffff_ffff,
            1 << 47,
            (1 << 48) - 1,
            1 << 48,
            u64::MAX,
        ] {
            for width in [8, 12] {
                let mut s = String::new();
                push_hex(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$x}"), "{v:#x} in {width}");
            }
        }
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_eq!(a.len(), 20);
        assert_eq!(a, format!("{:08x}{:012x}", ids.prefix, 0));
        assert_eq!(b, format!("{:08x}{:012x}", ids.prefix, 1));
    }
}
