//! The Pingora `ProxyHttp` implementation: a few lines of glue per phase around the pure core.
//!
//! | phase | here |
//! |---|---|
//! | `request_filter` | load the config snapshot once; route by path; authenticate; read the size-capped body; parse; route by model; policy; prepare the upstream body. Blocks are answered here and never reach a provider. |
//! | `upstream_peer` | the current attempt of the plan (circuit permitting): its provider's address from the resolver cache, timeouts, TLS with SNI; per-attempt state reset |
//! | `upstream_request_filter` | path prefix, `Host`, project key out, provider credential in, identity encoding, exact `Content-Length` |
//! | `request_body_filter` | put the prepared body in place of the replayed one (every attempt) |
//! | `upstream_response_filter` | a 5xx or 429 with attempts left is not forwarded: it becomes a retryable error |
//! | `fail_to_connect`, `error_while_proxy` | record the attempt's outcome; retry on the plan's next attempt while nothing reached the client and the deadline allows |
//! | `response_filter` | request id header; pick the usage scanner |
//! | `response_body_filter` | feed the scanner; bytes pass untouched unless the injected usage chunk must go |
//! | `fail_to_proxy` | the one place an upstream failure becomes a SPEC JSON error |
//! | `logging` | always runs once: usage, cost, access log line |
//!
//! Every response Tollgate writes itself goes through [`respond`]. Must not hold a lock across
//! a phase or do blocking I/O.

mod body_replay;
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
use crate::engine::config::{Config, ProjectIdx, Unpriced};
use crate::engine::error::{ErrorShape, GatewayError};
use crate::engine::policy;
use crate::engine::pricing::{Nanos, Price};
use crate::engine::provider::Endpoint;
use crate::engine::request::{self, Rewrite};
use crate::engine::route::{Plan, ProviderIdx};
use crate::engine::usage::{Feed, Usage, UsageScanner, WireFormat};
use crate::health::{self, HEALTH};
use crate::ledger::{DecisionRecord, Ledger, Reservation};
use crate::ratelimit::RateLimiter;
use crate::resolver::Resolver;

pub use respond::respond;

/// Pingora replays a consumed body from its retry buffer only up to this size; larger bodies
/// go through [`body_replay`].
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Idle upstream connections are dropped before providers drop them (OpenAI and Anthropic
/// close idle keep-alive connections after about a minute), so a POST is never sent on a
/// connection the provider is closing.
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// A provider's `Retry-After` up to this long is waited out before trying it again; a longer
/// one (or none) moves the request to the next provider.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(2);

/// How one attempt at a provider ended: the `outcome` label of
/// `tollgate_upstream_attempts_total` (a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    ConnectError,
    Timeout,
    Status5xx,
    Status429,
    Broken,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Status5xx => "status_5xx",
            Outcome::Status429 => "status_429",
            Outcome::Broken => "broken",
        }
    }

    /// Counts against the provider's circuit. A 429 means the provider is up and throttling.
    fn is_failure(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Status429)
    }

    fn of_error(e: &Error) -> Outcome {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout => {
                Outcome::Timeout
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
            | BindError | TLSHandshakeFailure | InvalidCert | HandshakeError
            | TLSWantX509Lookup => Outcome::ConnectError,
            _ => Outcome::Broken,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form counts as long).
fn retry_after(resp: &ResponseHeader) -> Option<Duration> {
    let v = resp.headers.get("retry-after")?.to_str().ok()?.trim();
    let secs = v
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(secs.min(86_400.0)))
}

pub struct Gateway {
    pub config: Arc<ArcSwap<Config>>,
    pub resolver: Arc<Resolver>,
    pub ledger: Arc<Ledger>,
    pub limits: Arc<RateLimiter>,
    ids: RequestIds,
}

impl Gateway {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        resolver: Arc<Resolver>,
        ledger: Arc<Ledger>,
        limits: Arc<RateLimiter>,
    ) -> Gateway {
        Gateway {
            config,
            resolver,
            ledger,
            limits,
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

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:012x}", self.prefix)
    }
}

/// Per-request state, alive from `new_ctx` to the end of `logging`.
pub struct Ctx {
    pub request_id: String,
    /// The id as the `x-tollgate-request-id` value, upstream and downstream.
    request_id_value: HeaderValue,
    started: Instant,
    /// Wall-clock arrival time: the decision record's time, so records order by arrival.
    started_ms: i64,
    /// The config snapshot this request lives on, whatever reloads happen meanwhile.
    cfg: Option<Arc<Config>>,
    endpoint: Option<Endpoint>,
    shape: ErrorShape,
    project: Option<ProjectIdx>,
    model: Option<String>,
    upstream_model: Option<String>,
    /// The provider of the current (finally: the last) attempt.
    provider: Option<ProviderIdx>,
    /// The attempts this request may make, and which one is current.
    plan: Plan,
    /// Attempts started (the access log's `attempts=`).
    attempts: u32,
    /// The provider of each attempt started, in order (for the decision record).
    tried: Vec<ProviderIdx>,
    /// The attempt whose outcome is not recorded yet.
    attempt_open: Option<ProviderIdx>,
    /// No new attempt starts after this.
    deadline: Option<Instant>,
    /// Set when `upstream_response_filter` turned a 5xx/429 into a retry; true: skip the
    /// provider's remaining tries.
    swallowed: Option<bool>,
    /// Wait this long (a provider's short `Retry-After`) before the next attempt.
    wait_before: Option<Duration>,
    /// The exact body to send upstream.
    body: Option<Bytes>,
    request_bytes: usize,
    stream: bool,
    strip_usage_chunk: bool,
    scanner: Option<UsageScanner>,
    upstream_status: Option<u16>,
    first_byte: Option<Instant>,
    /// What Tollgate answered itself (a block or an upstream failure), for the log.
    error: Option<GatewayError>,
    /// First 8 hex digits of the key's SHA-256: identifies the key in records, reveals nothing.
    key_id: Option<String>,
    /// Money held for this request until `logging` settles it (or drop releases it).
    reservation: Option<Reservation>,
    /// The matched price (None: unpriced model, cost unknown).
    price: Option<Price>,
    /// The bounded `model` label: the matched price key.
    price_key: Option<String>,
    /// Remaining budget after this request's reservation, for the response header.
    remaining: Option<Nanos>,
    _in_flight: InFlight,
}

/// Counts the request in `tollgate_requests_in_flight` for exactly as long as its ctx lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        crate::metrics::METRICS.in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::METRICS.in_flight.dec();
    }
}

impl Ctx {
    fn shape(&self) -> ErrorShape {
        self.shape
    }
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

impl Gateway {
    /// Everything `request_filter` decides; `Err` is answered to the client as is.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Admit, GatewayError> {
        let cfg = self.config.load_full();
        ctx.cfg = Some(cfg.clone());
        let req = session.req_header();
        let path = req.uri.path();
        let endpoint = Endpoint::from_path(path).ok_or_else(|| {
            GatewayError::NotFound(format!("Unknown path {}", truncate(path, 200)))
        })?;
        ctx.endpoint = Some(endpoint);
        if endpoint == Endpoint::Messages {
            ctx.shape = ErrorShape::Anthropic;
        }
        if req.method.as_str() != endpoint.method() {
            return Err(GatewayError::MethodNotAllowed(format!(
                "{} {} is not supported; use {}",
                req.method,
                truncate(path, 200),
                endpoint.method()
            )));
        }
        if endpoint == Endpoint::Healthz {
            return Ok(Admit::Local(
                200,
                Bytes::from_static(b"{\"status\":\"ok\"}"),
            ));
        }

        let key = auth::presented_key(|h| header(req, h)).ok_or_else(|| {
            GatewayError::Unauthorized(
                "Missing project key: send `Authorization: Bearer KEY`, `x-api-key` or `x-tollgate-key`".into(),
            )
        })?;
        let digest = auth::key_digest(key);
        let project_idx = cfg
            .project_for_digest(&digest)
            .ok_or_else(|| GatewayError::Unauthorized("Unknown project key".into()))?;
        ctx.project = Some(project_idx);
        ctx.key_id = Some(auth::hex(&digest[..4]));
        let project = &cfg.projects[project_idx];
        self.ledger.check_frozen(project)?;

        if endpoint == Endpoint::Models {
            return Ok(Admit::Local(
                200,
                Bytes::from(models_list(&cfg, project_idx)),
            ));
        }

        self.limits.admit(project)?;

        let max = cfg.server.max_body_bytes;
        let declared = header(req, "content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large(max));
        }
        session.enable_retry_buffering();
        let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(4096, |n| n as usize));
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > max {
                        return Err(too_large(max));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(GatewayError::InvalidRequest(format!(
                        "Could not read the request body: {}",
                        e.etype().as_str()
                    )))
                }
            }
        }
        ctx.request_bytes = buf.len();

        let facts = request::parse(&buf)?;
        ctx.model = Some(facts.model.clone());
        ctx.stream = facts.stream;
        let route = cfg.routes.lookup(&facts.model).ok_or_else(|| {
            GatewayError::NotFound(format!(
                "No route for model {}",
                truncate(&facts.model, 200)
            ))
        })?;
        let upstream_model = route.upstream_model(&facts.model);
        ctx.upstream_model = Some(upstream_model.to_string());
        policy::check_model(project, &facts.model, upstream_model)?;
        let prompt_bound = match endpoint.prompt_format() {
            Some(format) => Some(policy::check_prompt(project, format, &buf)?),
            None => None,
        };

        let price = cfg.prices.lookup(upstream_model);
        if price.is_none() && project.unpriced == Unpriced::Block {
            return Err(GatewayError::PolicyBlocked(
                crate::engine::error::PolicyCode::UnpricedModel,
                format!(
                    "Model {} has no price, and project {} blocks unpriced models",
                    truncate(upstream_model, 200),
                    project.id
                ),
            ));
        }
        let produces_output = endpoint != Endpoint::Embeddings;
        let bound = policy::output_bound(
            project,
            facts.max_output_tokens,
            price.and_then(|(_, p)| p.max_output_tokens),
            produces_output,
            project.budget.is_some(),
        )?;
        let worst = match (price, prompt_bound) {
            (Some((_, p)), Some(prompt)) => p.worst_case(prompt, bound.tokens),
            _ => Nanos::ZERO,
        };
        let reservation = self.ledger.reserve(project, worst)?;
        ctx.remaining = reservation.remaining();
        ctx.reservation = Some(reservation);
        ctx.price = price.map(|(_, p)| p.clone());
        ctx.price_key = price.map(|(k, _)| k.to_string());

        let (inject, strip) = request::usage_injection(endpoint, &facts);
        ctx.strip_usage_chunk = strip;
        let rw = Rewrite {
            model: (upstream_model != facts.model).then_some(upstream_model),
            include_usage: inject,
            max_tokens: endpoint
                .max_tokens_field()
                .filter(|_| bound.inject)
                .map(|f| (f, bound.tokens)),
        };
        let body = match request::rewrite(&buf, &rw) {
            Some(new) => Bytes::from(new),
            None => Bytes::from(buf),
        };
        let attempts = route.attempt_plan(self.ids.counter.load(Ordering::Relaxed));
        // Providers whose circuit is open are left out, as long as another one is left in.
        let now = health::now_ms();
        let circuit = cfg.server.circuit;
        let usable: Vec<ProviderIdx> = attempts
            .iter()
            .copied()
            .filter(|&p| HEALTH.available(&cfg.providers[p].name, now, circuit))
            .collect();
        let attempts = if usable.is_empty() { attempts } else { usable };
        let longest = attempts
            .iter()
            .map(|&p| cfg.providers[p].read_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        ctx.deadline = Some(ctx.started + 2 * longest);
        ctx.provider = attempts.first().copied();
        ctx.plan = Plan::new(attempts);
        Ok(Admit::Forward(body))
    }
}

enum Admit {
    /// Answer locally with this status and JSON body.
    Local(u16, Bytes),
    /// Forward upstream with this body.
    Forward(Bytes),
}

fn too_large(max: usize) -> GatewayError {
    GatewayError::RequestTooLarge(format!(
        "The request body is larger than the limit of {max} bytes"
    ))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `GET /v1/models`: the priced models this project may use and that have a route, in the
/// names a client would send (bare, and with each stripping route's prefix).
fn models_list(cfg: &Config, project: ProjectIdx) -> String {
    let p = &cfg.projects[project];
    let mut names: Vec<String> = Vec::new();
    let mut consider = |name: String| {
        if let Some(route) = cfg.routes.lookup(&name) {
            if policy::model_allowed(p, &name, route.upstream_model(&name))
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    };
    for model in cfg.prices.keys() {
        consider(model.to_string());
        // `openai/gpt-4o-mini` is listed when the bare name would not reach the same
        // provider anyway; `openai/claude-sonnet-4` is not a model anyone serves.
        let bare_provider = cfg
            .routes
            .lookup(model)
            .and_then(|r| r.targets.first())
            .map(|t| t.provider);
        for r in cfg.routes.routes().iter().filter(|r| r.strip_prefix) {
            let via = r.targets.first().map(|t| t.provider);
            if bare_provider.is_none() || bare_provider == via {
                consider(format!("{}{model}", r.prefix));
            }
        }
    }
    if let Some(allow) = &p.allow_models {
        for g in allow.iter().filter(|g| !g.as_str().contains(['*', '?'])) {
            consider(g.as_str().to_string());
        }
    }
    names.sort();
    let data: Vec<String> = names
        .iter()
        .map(|n| {
            let owner = cfg
                .routes
                .lookup(n)
                .and_then(|r| r.targets.first())
                .map_or("tollgate", |t| cfg.providers[t.provider].name.as_str());
            format!(
                r#"{{"id":{},"object":"model","created":0,"owned_by":{}}}"#,
                crate::engine::error::json_string(n),
                crate::engine::error::json_string(owner)
            )
        })
        .collect();
    format!(r#"{{"object":"list","data":[{}]}}"#, data.join(","))
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: pingora keeps the context inside its per-request future, which is moved and
    /// copied as a whole (and can hold more than one slot for it); a pointer keeps that future
    /// small, so every request copies less and every open stream holds less memory.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        let request_id = self.ids.next();
        // Ids are hex digits, always a valid header value.
        let request_id_value =
            HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("-"));
        Box::new(Ctx {
            request_id,
            request_id_value,
            started: Instant::now(),
            started_ms: crate::clock::unix_ms(),
            cfg: None,
            endpoint: None,
            shape: ErrorShape::OpenAi,
            project: None,
            model: None,
            upstream_model: None,
            provider: None,
            plan: Plan::default(),
            attempts: 0,
            tried: Vec::new(),
            attempt_open: None,
            deadline: None,
            swallowed: None,
            wait_before: None,
            body: None,
            request_bytes: 0,
            stream: false,
            strip_usage_chunk: false,
            scanner: None,
            upstream_status: None,
            first_byte: None,
            error: None,
            key_id: None,
            reservation: None,
            price: None,
            price_key: None,
            remaining: None,
            _in_flight: InFlight::new(),
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(Admit::Local(status, body)) => {
                respond::json(session, &ctx.request_id, status, body, None).await?;
                Ok(true)
            }
            Ok(Admit::Forward(body)) => {
                if body.len() > RETRY_BUFFER_LIMIT || session.retry_buffer_truncated() {
                    body_replay::install(&mut session.downstream_session, body.clone())?;
                }
                ctx.body = Some(body);
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
        let Some(cfg) = ctx.cfg.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no provider chosen",
            ));
        };
        // Only the attempt that produces the final response is scanned and charged.
        ctx.scanner = None;
        ctx.upstream_status = None;
        ctx.first_byte = None;
        ctx.error = None;
        ctx.swallowed = None;
        if let Some(wait) = ctx.wait_before.take() {
            tokio::time::sleep(wait).await;
        }
        let circuit = cfg.server.circuit;
        let p = loop {
            let Some(p) = ctx.plan.current() else {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no provider chosen",
                ));
            };
            let now = health::now_ms();
            let name = cfg.providers[p].name.as_str();
            if HEALTH.try_acquire(name, now, circuit) {
                break p;
            }
            // Open (or its half-open probe is out): skip it if another provider can be tried.
            let other = ctx
                .plan
                .remaining()
                .iter()
                .any(|&q| q != p && HEALTH.available(&cfg.providers[q].name, now, circuit));
            if !other || !ctx.plan.advance(true) {
                break p;
            }
            log::info!("{}: provider {name} skipped: circuit open", ctx.request_id);
        };
        ctx.provider = Some(p);
        ctx.attempts += 1;
        ctx.tried.push(p);
        ctx.attempt_open = Some(p);
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
        let (Some(cfg), Some(p)) = (ctx.cfg.as_ref(), ctx.provider) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no provider chosen",
            ));
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
        for h in auth::KEY_HEADERS {
            req.remove_header(h);
        }
        if let Some((name, value)) = &wire.credential {
            req.insert_header(name, value.clone())?;
        }
        if let Some(v) = &wire.anthropic_version {
            if req.headers.get("anthropic-version").is_none() {
                req.insert_header("anthropic-version", v.clone())?;
            }
        }
        // Usage is read from the response bytes, so they must arrive uncompressed.
        req.remove_header("accept-encoding");
        req.insert_header("x-tollgate-request-id", ctx.request_id_value.clone())?;
        if let Some(b) = &ctx.body {
            req.remove_header("transfer-encoding");
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
        if let Some(prepared) = &ctx.body {
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
        let status = resp.status.as_u16();
        let outcome = match status {
            429 => Outcome::Status429,
            500..=599 => Outcome::Status5xx,
            _ => return Ok(()),
        };
        self.finish_attempt(ctx, outcome);
        if !self.may_retry(session, ctx) {
            // The last try: the client gets the provider's answer unchanged.
            return Ok(());
        }
        let mut skip_provider = true;
        if status == 429 {
            // A short Retry-After is waited out if the next try is the same provider.
            let same_next = ctx.plan.peek_next(false) == ctx.provider;
            if let Some(wait) = retry_after(resp).filter(|w| *w <= MAX_RETRY_AFTER_WAIT) {
                let in_time = ctx.deadline.is_none_or(|d| Instant::now() + wait < d);
                if same_next && in_time {
                    ctx.wait_before = Some(wait);
                    skip_provider = false;
                }
            }
            if skip_provider && ctx.plan.peek_next(true).is_none() {
                // Only this provider is left and it asks for a long wait: the client decides.
                return Ok(());
            }
        } else {
            skip_provider = false;
        }
        ctx.swallowed = Some(skip_provider);
        Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "provider error replaced by a retry",
        ))
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
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(skip_provider) = ctx.swallowed.take() {
            // upstream_response_filter already recorded the attempt and decided to retry.
            self.advance(ctx, skip_provider, "error status");
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            // The client went away or broke the request: nobody to retry for, and not the
            // provider's fault.
            if ctx.upstream_status.is_some() {
                self.finish_attempt(ctx, Outcome::Ok);
            }
            ctx.attempt_open = None;
            e.set_retry(false);
            return e;
        }
        let outcome = match Outcome::of_error(&e) {
            Outcome::ConnectError => Outcome::Broken,
            o => o,
        };
        self.attempt_failed(session, ctx, outcome, e)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.first_byte.get_or_insert_with(Instant::now);
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        resp.insert_header("x-tollgate-request-id", ctx.request_id_value.clone())?;
        if let (Some(cfg), Some(p)) = (ctx.cfg.as_ref(), ctx.provider) {
            resp.insert_header("x-tollgate-provider", cfg.providers[p].wire.name.clone())?;
        }
        if let Some(rem) = ctx.remaining {
            resp.insert_header("x-tollgate-budget-remaining-usd", rem.usd_6dp())?;
        }
        let format = ctx.endpoint.and_then(|e| e.wire_format());
        if let (Some(format), true) = (format, (200..300).contains(&status)) {
            let sse = resp
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let strip = sse && ctx.strip_usage_chunk;
            if strip {
                // The body shrinks by the usage chunk; let pingora frame it.
                resp.remove_header("content-length");
            }
            ctx.scanner = Some(UsageScanner::new(format, sse, strip));
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
        let Some(scanner) = ctx.scanner.as_mut() else {
            return Ok(None);
        };
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
        let err = ctx.error.clone().unwrap_or_else(|| classify(e, ctx));
        let code = match e.esource() {
            // The client went away: nobody to answer.
            ErrorSource::Downstream if !matches!(e.etype(), ErrorType::HTTPStatus(_)) => 0,
            _ => err.status(),
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(w) = respond(session, ctx, &err).await {
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
        if ctx.attempt_open.is_some() {
            // The forwarded response ran to its end (breaks were recorded in error_while_proxy).
            self.finish_attempt(ctx, Outcome::Ok);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.error.as_ref().map(|e| e.status()))
            .unwrap_or(0);
        let (usage, source) = final_usage(ctx);
        let format = ctx.endpoint.and_then(|e| e.wire_format());
        let cost = match (&ctx.price, format) {
            (Some(p), Some(f)) => Some(p.cost(&usage, f.cache_is_subset_of_prompt())),
            _ => None,
        };
        if let Some(r) = ctx.reservation.take() {
            r.settle(cost.unwrap_or(Nanos::ZERO));
        }
        if let (Some(cfg), Some(p)) = (ctx.cfg.as_deref(), ctx.project) {
            let tokens = usage.prompt_tokens.unwrap_or(0)
                + usage.cache_read_tokens.unwrap_or(0)
                + usage.cache_write_tokens.unwrap_or(0)
                + usage.completion_tokens.unwrap_or(0);
            self.limits.add_tokens(&cfg.projects[p], tokens);
        }
        let cfg = ctx.cfg.as_deref();
        self.observe(ctx, status, &usage, source, cost);
        let project = cfg
            .zip(ctx.project)
            .map_or("-", |(c, p)| c.projects[p].id.as_str());
        let provider = cfg
            .zip(ctx.provider)
            .map_or("-", |(c, p)| c.providers[p].name.as_str());
        let reason = ctx.error.as_ref().map_or("-", |e| e.code());
        let latency_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        if ctx.endpoint.is_some_and(|e| e.wire_format().is_some()) {
            let blocked = ctx.error.as_ref().is_some_and(|e| e.status() < 500)
                && ctx.upstream_status.is_none();
            self.ledger.record(DecisionRecord {
                id: ctx.request_id.clone(),
                time_ms: ctx.started_ms,
                project: cfg.zip(ctx.project).map(|(c, p)| c.projects[p].id.clone()),
                key_id: ctx.key_id.clone(),
                endpoint: ctx.endpoint.map(|e| e.as_str().to_string()),
                model: ctx.model.as_deref().map(|m| truncate(m, 200).to_string()),
                provider: ctx
                    .provider
                    .and_then(|p| cfg.map(|c| c.providers[p].name.clone())),
                decision: if blocked { "block" } else { "allow" }.to_string(),
                reason: if blocked || ctx.error.is_some() {
                    reason.to_string()
                } else {
                    "ok".to_string()
                },
                status,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                usage_source: source.to_string(),
                cost_nanos: cost.map(|c| c.0),
                latency_ms,
                stream: ctx.stream,
                attempts: ctx.attempts,
                providers_tried: (!ctx.tried.is_empty()).then(|| {
                    let names: Vec<&str> = ctx
                        .tried
                        .iter()
                        .filter_map(|&p| cfg.map(|c| c.providers[p].name.as_str()))
                        .collect();
                    names.join(",")
                }),
                overrun_nanos: 0,
            });
        }
        log::info!(
            target: "tollgate::access",
            "id={} project={} endpoint={} model={} provider={} attempts={} status={} reason={} stream={} prompt_tokens={} completion_tokens={} usage={} cost_usd={} latency_ms={:.1}{}",
            ctx.request_id,
            project,
            ctx.endpoint.map_or("-", |e| e.as_str()),
            ctx.model.as_deref().map_or("-", |m| truncate(m, 100)),
            if ctx.upstream_status.is_some() || ctx.error.as_ref().is_some_and(|e| e.status() >= 500) { provider } else { "-" },
            ctx.attempts,
            status,
            reason,
            ctx.stream,
            usage.prompt_tokens.map_or("-".to_string(), |n| n.to_string()),
            usage.completion_tokens.map_or("-".to_string(), |n| n.to_string()),
            source,
            cost.map_or("-".to_string(), |c| format!("{:.9}", c.as_usd())),
            latency_ms,
            match e {
                Some(e) if ctx.error.is_none() => format!(" error={}", e.etype().as_str()),
                _ => String::new(),
            }
        );
    }
}

impl Gateway {
    /// Record how the open attempt ended: the attempts metric and the provider's circuit.
    fn finish_attempt(&self, ctx: &mut Ctx, outcome: Outcome) {
        let (Some(p), Some(cfg)) = (ctx.attempt_open.take(), ctx.cfg.as_deref()) else {
            return;
        };
        let name = cfg.providers[p].name.as_str();
        crate::metrics::METRICS
            .upstream_attempts
            .with_label_values(&[name, outcome.as_str()])
            .inc();
        if !outcome.is_failure() {
            HEALTH.on_success(name);
        } else if HEALTH.on_failure(name, health::now_ms(), cfg.server.circuit) {
            log::warn!(
                "provider {name}: circuit open for {} ms after {} consecutive failed attempts",
                cfg.server.circuit.cooldown_ms,
                cfg.server.circuit.failures
            );
        }
    }

    /// May the request move on to another attempt? Only while one is left, nothing reached
    /// the client, and the request's deadline has not passed.
    fn may_retry(&self, session: &Session, ctx: &Ctx) -> bool {
        ctx.plan.has_next()
            && session.response_written().is_none()
            && ctx.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn advance(&self, ctx: &mut Ctx, skip_provider: bool, why: &str) {
        let from = ctx.provider;
        let attempt = ctx.plan.index() + 1;
        ctx.plan.advance(skip_provider);
        if let Some(cfg) = ctx.cfg.as_deref() {
            let name = |p: Option<ProviderIdx>| p.map_or("-", |p| cfg.providers[p].name.as_str());
            log::info!(
                "{}: attempt {attempt} at provider {} failed ({why}); retrying at provider {}",
                ctx.request_id,
                name(from),
                name(ctx.plan.current())
            );
        }
    }

    /// An attempt failed with `e` before anything was forwarded (or while streaming): record
    /// it, and mark `e` retryable when another attempt may follow.
    fn attempt_failed(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        outcome: Outcome,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.finish_attempt(ctx, outcome);
        if self.may_retry(session, ctx) {
            self.advance(ctx, false, outcome.as_str());
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Metrics for one finished request. Label values come only from the config or fixed sets.
    fn observe(
        &self,
        ctx: &Ctx,
        status: u16,
        usage: &Usage,
        source: &'static str,
        cost: Option<Nanos>,
    ) {
        use crate::metrics::{status_label, METRICS};
        let m = &*METRICS;
        let cfg = ctx.cfg.as_deref();
        let project_cfg = cfg.zip(ctx.project).map(|(c, p)| &c.projects[p]);
        let project = project_cfg.map_or("other", |p| p.id.as_str());
        let model = ctx.price_key.as_deref().unwrap_or("other");
        let provider = cfg
            .zip(ctx.provider)
            .map_or("other", |(c, p)| c.providers[p].name.as_str());
        if ctx.endpoint == Some(Endpoint::Healthz) {
            // Liveness probes are not traffic: counting them would inflate request rates.
            return;
        }
        m.requests
            .with_label_values(&[project, model, status_label(status)])
            .inc();
        if ctx.endpoint.is_some_and(|e| e.wire_format().is_some()) {
            let blocked = ctx.upstream_status.is_none()
                && ctx.error.as_ref().is_some_and(|e| e.status() < 500);
            let reason = match &ctx.error {
                Some(e) if blocked => e.code(),
                _ => "ok",
            };
            m.decisions
                .with_label_values(&[project, if blocked { "block" } else { "allow" }, reason])
                .inc();
            m.usage_source.with_label_values(&[project, source]).inc();
        }
        if let Some(n) = usage.prompt_tokens {
            let n =
                n + usage.cache_read_tokens.unwrap_or(0) + usage.cache_write_tokens.unwrap_or(0);
            m.tokens
                .with_label_values(&[project, model, "prompt"])
                .inc_by(n);
        }
        if let Some(n) = usage.completion_tokens {
            m.tokens
                .with_label_values(&[project, model, "completion"])
                .inc_by(n);
        }
        if let Some(c) = cost.filter(|c| c.0 > 0) {
            m.spend
                .with_label_values(&[project, model])
                .inc_by(c.as_usd());
        }
        let reached =
            ctx.upstream_status.is_some() || ctx.error.as_ref().is_some_and(|e| e.status() >= 500);
        if ctx.provider.is_some() && reached {
            m.request_duration
                .with_label_values(&[provider])
                .observe(ctx.started.elapsed().as_secs_f64());
            if let Some(fb) = ctx.first_byte {
                m.first_byte
                    .with_label_values(&[provider])
                    .observe((fb - ctx.started).as_secs_f64());
            }
            if let Some(e) = ctx.error.as_ref().filter(|e| e.status() >= 500) {
                m.upstream_errors
                    .with_label_values(&[provider, e.code()])
                    .inc();
            }
        }
    }
}

/// Usage as reported by the provider, or estimated from what was delivered, and which.
fn final_usage(ctx: &Ctx) -> (Usage, &'static str) {
    let Some(scanner) = ctx.scanner.as_ref() else {
        return (Usage::default(), "none");
    };
    if scanner.reported() {
        let mut u = scanner.usage();
        let estimate = scanner.estimated_completion_tokens();
        if u.completion_tokens.is_none() {
            if scanner.format() == WireFormat::OpenAiEmbeddings {
                // Embeddings produce no output tokens; the provider reports only the input.
                u.completion_tokens = Some(0);
                return (u, "reported");
            }
            u.completion_tokens = Some(estimate);
            return (u, "estimated");
        }
        if !scanner.stream_complete() {
            // Cut off before the final count (Anthropic's message_start says output_tokens: 1):
            // charge what was visibly delivered if that is more.
            let reported = u.completion_tokens.unwrap_or(0);
            if estimate > reported {
                u.completion_tokens = Some(estimate);
                return (u, "estimated");
            }
        }
        return (u, "reported");
    }
    let u = Usage {
        // An upper bound: no tokenizer turns fewer than 4 bytes of JSON into more than 1 token
        // often enough to matter, and the body includes every prompt byte.
        prompt_tokens: Some(ctx.request_bytes.div_ceil(4) as u64),
        completion_tokens: Some(scanner.estimated_completion_tokens()),
        ..Usage::default()
    };
    (u, "estimated")
}

/// A pingora error (connect, timeout, broken stream) as the SPEC error the client gets.
fn classify(e: &Error, ctx: &Ctx) -> GatewayError {
    let provider = ctx
        .cfg
        .as_ref()
        .zip(ctx.provider)
        .map_or("the provider".to_string(), |(c, p)| {
            format!("provider {}", c.providers[p].name)
        });
    // The message names the last attempt; say when it was not the only one.
    let after = if ctx.attempts > 1 {
        format!(" (the last of {} attempts)", ctx.attempts)
    } else {
        String::new()
    };
    use ErrorType::*;
    match e.etype() {
        ReadTimedout | WriteTimedout => {
            GatewayError::UpstreamTimeout(format!("Timed out waiting for {provider}{after}"))
        }
        ConnectTimedout => GatewayError::UpstreamUnavailable(format!(
            "Could not connect to {provider} in time{after}"
        )),
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
        | BindError => {
            GatewayError::UpstreamUnavailable(format!("Could not connect to {provider}{after}"))
        }
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError
        | TLSWantX509Lookup => GatewayError::UpstreamUnavailable(format!(
            "TLS with {provider} failed: {}{after}",
            e.etype().as_str()
        )),
        HTTPStatus(c) if *c == 504 => {
            GatewayError::UpstreamTimeout(format!("Timed out waiting for {provider}{after}"))
        }
        _ if e.esource() == &ErrorSource::Upstream => GatewayError::UpstreamUnavailable(format!(
            "The connection to {provider} broke off{after}"
        )),
        _ if e.esource() == &ErrorSource::Downstream => {
            GatewayError::InvalidRequest(format!("Bad request: {}", e.etype().as_str()))
        }
        _ => GatewayError::Internal("Internal gateway error".into()),
    }
}
