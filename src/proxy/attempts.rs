//! The retry and fallback state machine: which provider a try goes to (circuit permitting),
//! how each try ended, and whether the request moves on to the plan's next try.
//!
//! A try ends in one of the [`Outcome`]s. A 5xx or 429 with tries left is not forwarded: it
//! becomes a retryable error here, and its header is kept as the request's last provider
//! answer in case no later try gets an answer at all. A 429 is retried on the same provider
//! (its `retries`) after its `Retry-After` when that is short, after a jittered backoff when it
//! names none, and moves to the next provider when it asks for longer than the request can
//! wait.

use std::time::{Duration, Instant};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::ctx::{Ctx, Retry};
use super::Gateway;
use crate::engine::route::{throttle_backoff, ProviderIdx};
use crate::health::{self, HEALTH};

/// A provider's `Retry-After` up to this long is waited out before trying it again; a longer
/// one moves the request to the next provider.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(2);

/// How one try at a provider ended: the `outcome` label of
/// `tollgate_upstream_attempts_total` (a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
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

    pub fn of_error(e: &Error) -> Outcome {
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

impl Gateway {
    /// The provider of the current try, skipping those whose circuit is open while another
    /// provider is left to try. `None`: the plan is empty.
    pub(super) fn next_provider(&self, ctx: &mut Ctx) -> Option<ProviderIdx> {
        let cfg = ctx.cfg.clone()?;
        let circuit = cfg.server.circuit;
        let plan = &mut ctx.attempts.plan;
        let p = loop {
            let p = plan.current()?;
            let now = health::now_ms();
            let name = cfg.providers[p].name.as_str();
            if HEALTH.try_acquire(name, now, circuit) {
                break p;
            }
            // Open (or its half-open probe is out): skip it if another provider can be tried.
            let other = plan
                .remaining()
                .iter()
                .any(|&q| q != p && HEALTH.available(&cfg.providers[q].name, now, circuit));
            if !other || !plan.advance(true) {
                break p;
            }
            log::info!("{}: provider {name} skipped: circuit open", ctx.request_id);
        };
        let a = &mut ctx.attempts;
        a.provider = Some(p);
        a.tried.push(p);
        a.open = Some(p);
        Some(p)
    }

    /// Record how the open try ended: the attempts metric and the provider's circuit.
    pub(super) fn finish_attempt(&self, ctx: &mut Ctx, outcome: Outcome) {
        let (Some(p), Some(cfg)) = (ctx.attempts.open.take(), ctx.cfg.as_deref()) else {
            return;
        };
        let name = cfg.providers[p].name.as_str();
        let counted = ctx.cfg.as_ref().and_then(|cfg| {
            crate::metrics::with_provider(cfg, p, |m, h| h.attempts(m, outcome.as_str()).inc())
        });
        if let (None, Some(m)) = (counted, crate::metrics::get()) {
            m.upstream_attempts
                .with_label_values(&[name, outcome.as_str()])
                .inc();
        }
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

    /// May the request move on to another try? Only while one is left, nothing reached the
    /// client, and the request's deadline has not passed.
    fn may_retry(&self, session: &Session, ctx: &Ctx) -> bool {
        ctx.attempts.plan.has_next()
            && session.response_written().is_none()
            && ctx.attempts.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn advance(&self, ctx: &mut Ctx, skip_provider: bool, why: &str) {
        let from = ctx.attempts.provider;
        let attempt = ctx.attempts.plan.index() + 1;
        ctx.attempts.plan.advance(skip_provider);
        if let Some(cfg) = ctx.cfg.as_deref() {
            let name = |p: Option<ProviderIdx>| p.map_or("-", |p| cfg.providers[p].name.as_str());
            log::info!(
                "{}: attempt {attempt} at provider {} failed ({why}); retrying at provider {}",
                ctx.request_id,
                name(from),
                name(ctx.attempts.plan.current())
            );
        }
    }

    /// A try failed with `e` before anything was forwarded (or while streaming): record it,
    /// and mark `e` retryable when another try may follow.
    pub(super) fn attempt_failed(
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

    /// A provider answered with `resp`. `Err`: the answer is an error status that another try
    /// replaces (it is not forwarded); `Ok`: forward it.
    pub(super) fn on_response_status(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<(), Box<Error>> {
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
        let mut retry = Retry::Next;
        if status == 429 {
            let a = &ctx.attempts;
            let same_next = a.plan.peek_next(false) == a.provider;
            let wait = match retry_after(resp) {
                Some(w) if w <= MAX_RETRY_AFTER_WAIT => Some(w),
                // Longer than the request can wait here: another provider, if there is one.
                Some(_) => None,
                None => {
                    let earlier = a.tried.iter().filter(|&&p| Some(p) == a.provider).count();
                    // The request's age in nanoseconds: varies from try to try and costs nothing.
                    let pick = u64::from(ctx.started.elapsed().subsec_nanos());
                    Some(throttle_backoff(
                        u32::try_from(earlier.saturating_sub(1)).unwrap_or(u32::MAX),
                        pick,
                    ))
                }
            };
            match wait {
                Some(w) if same_next => {
                    if a.deadline.is_some_and(|d| Instant::now() + w >= d) {
                        // The wait would outlast the request's deadline: the client decides.
                        return Ok(());
                    }
                    ctx.attempts.wait_before = Some(w);
                }
                // The next try is another provider anyway: no reason to wait for this one.
                Some(_) => {}
                None => {
                    if a.plan.peek_next(true).is_none() {
                        // Only this provider is left and it asks for a long wait.
                        return Ok(());
                    }
                    retry = Retry::OtherProvider;
                }
            }
        }
        ctx.attempts.retry = Some(retry);
        ctx.attempts.last_answer = Some(Box::new(resp.clone()));
        Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "provider error replaced by a retry",
        ))
    }

    /// An error after the connection was made: the retry `on_response_status` decided, the
    /// client going away, or the provider breaking off.
    pub(super) fn on_proxy_error(
        &self,
        session: &Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
    ) -> Box<Error> {
        if let Some(retry) = ctx.attempts.retry.take() {
            // on_response_status already recorded the try and decided to retry.
            self.advance(ctx, retry == Retry::OtherProvider, "error status");
            e.set_retry(true);
            return e;
        }
        if e.esource() == &pingora::ErrorSource::Downstream {
            // The client went away or broke the request: nobody to retry for, and not the
            // provider's fault.
            if ctx.upstream.status.is_some() {
                self.finish_attempt(ctx, Outcome::Ok);
            }
            ctx.attempts.open = None;
            e.set_retry(false);
            return e;
        }
        let outcome = match Outcome::of_error(&e) {
            Outcome::ConnectError => Outcome::Broken,
            o => o,
        };
        self.attempt_failed(session, ctx, outcome, e)
    }
}
