//! Finishing a request, in `logging` (which always runs, once): usage → cost → settle → rate
//! limit → decision record → metrics → access log. Also the one translation of a pingora
//! error into the SPEC error the client gets.

use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::attempts::Outcome;
use super::ctx::Ctx;
use super::Gateway;
use crate::engine::admission::truncate;
use crate::engine::error::GatewayError;
use crate::engine::pricing::Nanos;
use crate::engine::provider::Endpoint;
use crate::engine::usage::{final_usage, Source, Usage};
use crate::ledger::DecisionRecord;

/// How a request ended, derived once for the record, the metrics and the log.
struct Ending {
    status: u16,
    /// Nothing reached a provider: Tollgate refused the request itself (4xx of its own).
    blocked: bool,
    /// A provider was tried and answered or failed (the duration metrics, `provider=`).
    reached: bool,
    usage: Usage,
    source: Source,
    /// `None`: unknown (an unpriced model, or usage that never came).
    cost: Option<Nanos>,
    /// What the provider reported beyond the reserved worst case (charged all the same).
    overrun: Nanos,
    /// The record's latency: the `duration_ms` the client was told, else the time until now.
    latency_ms: f64,
}

impl Gateway {
    /// The provider's answer ran to its end: store it if the request may be (a miss or a
    /// refresh of a complete 2xx answer within the entry limit), with what it cost. Called from
    /// `response_body_filter` at the end of the body, before its last bytes reach the client, so
    /// a client's next identical request already finds it.
    pub(super) fn store_cached(&self, ctx: &mut Ctx) {
        if ctx.cache.as_ref().is_none_or(|c| c.recording.is_none()) {
            return;
        }
        // The project's id, for the fleet's Redis key only.
        let project = self
            .fleet
            .as_ref()
            .and(self.project_of(ctx))
            .map(str::to_string);
        let Some(c) = ctx.cache.as_mut() else {
            return;
        };
        let Some(buf) = c.recording.take() else {
            return;
        };
        if !(200..300).contains(&c.status) {
            return;
        }
        let (usage, _) = final_usage(ctx.upstream.scanner.as_ref(), ctx.admitted.request_bytes);
        let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
        let cost = match (&ctx.admitted.price, format) {
            (Some(p), Some(f)) => p.cost(&usage, f),
            _ => Nanos::ZERO,
        };
        let sse = c
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/event-stream"));
        let entry = std::sync::Arc::new(crate::cache::Entry {
            status: c.status,
            content_type: c.content_type.clone(),
            body: buf.into_bytes(),
            sse,
            cost,
            expires: std::time::Instant::now() + c.ttl,
        });
        if let (Some(f), Some(p)) = (&self.fleet, project.as_deref()) {
            // Shared with the fleet: another instance's identical request is a hit too.
            let ttl_ms = u64::try_from(c.ttl.as_millis()).unwrap_or(u64::MAX);
            let expires_ms =
                crate::clock::unix_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
            f.cache_put(
                p,
                &crate::cache::hex(&c.key),
                crate::cache::encode(&entry, expires_ms),
                ttl_ms,
            );
        }
        self.cache.put(c.key, entry);
    }

    fn project_of<'a>(&self, ctx: &'a Ctx) -> Option<&'a str> {
        ctx.cfg
            .as_deref()
            .zip(ctx.seen.project)
            .map(|(c, p)| c.projects[p].id.as_str())
    }

    pub(super) fn finish(&self, session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.attempts.open.is_some() {
            // The forwarded response ran to its end (breaks were recorded in error_while_proxy).
            self.finish_attempt(ctx, Outcome::Ok);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.error.as_ref().map(|e| e.status()))
            .unwrap_or(0);
        let blocked =
            ctx.upstream.status.is_none() && ctx.error.as_ref().is_some_and(|e| e.is_block());
        let reached =
            ctx.upstream.status.is_some() || ctx.error.as_ref().is_some_and(|e| !e.is_block());
        let hit = ctx.cache.as_ref().is_some_and(|c| c.result == "hit");
        // `report_cost`: what the response told the client it cost.
        let reported = ctx
            .upstream
            .scanner
            .as_ref()
            .and_then(|s| s.cost_report())
            .or(ctx.reported);
        let (mut usage, source) = match reported.filter(|_| !hit) {
            // The client was told the cost of this usage: it is charged exactly that, with the
            // same price below, even if the stream breaks between its usage event and its end.
            Some(r) => (r.usage, r.source),
            None => final_usage(ctx.upstream.scanner.as_ref(), ctx.admitted.request_bytes),
        };
        let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
        let mut cost = match (&ctx.admitted.price, format) {
            (Some(p), Some(f)) => Some(p.cost(&usage, f)),
            _ => None,
        };
        if ctx.seen.endpoint == Some(Endpoint::CountTokens) {
            // Token counting is free: nothing to charge, whatever the provider answered.
            cost = Some(Nanos::ZERO);
        }
        if blocked || hit {
            // Nothing reached a provider, so nothing is unknown: the record says 0, not null.
            usage.prompt_tokens = Some(0);
            usage.completion_tokens = Some(0);
            cost = Some(Nanos::ZERO);
        }
        let source = if hit {
            crate::engine::usage::Source::None
        } else {
            source
        };
        let charge = cost.unwrap_or(Nanos::ZERO);
        let (mut overrun, seen) = match ctx.admitted.reservation.take() {
            Some(r) => r.settle_seen(charge),
            None => (Nanos::ZERO, u64::MAX),
        };
        let tokens = format.map_or(0, |f| usage.total_tokens(f));
        if let Some(remote) = ctx.admitted.remote.take() {
            // Admitted on the successor during an upgrade: it charges and records the spend.
            overrun = charge.saturating_sub(remote.amount());
            remote.settle(charge, tokens);
        } else if let Some(hold) = ctx.admitted.hold.take() {
            hold.settle(charge, tokens, seen);
        } else if let (Some(cfg), Some(p), true) =
            (ctx.cfg.as_deref(), ctx.seen.project, self.fleet.is_none())
        {
            self.limits.add_tokens(&cfg.projects[p], tokens);
        }
        if let (Some(c), Some(m)) = (ctx.cache.as_ref(), crate::metrics::get()) {
            let project = self.project_name(ctx);
            m.cache_lookups
                .with_label_values(&[project, c.result])
                .inc();
            if c.saved > Nanos::ZERO {
                m.cache_saved
                    .with_label_values(&[project])
                    .inc_by(c.saved.as_usd());
            }
            m.cache_bytes
                .set(i64::try_from(self.cache.bytes()).unwrap_or(i64::MAX));
        }
        let end = Ending {
            status,
            blocked,
            reached,
            usage,
            source,
            cost,
            overrun,
            latency_ms: reported.map_or_else(
                || ctx.started.elapsed().as_secs_f64() * 1000.0,
                |r| r.duration_ms,
            ),
        };
        if overrun > Nanos::ZERO {
            log::warn!(
                "{}: project {} was charged ${} more than the ${} reserved for it: the provider reported more usage than the worst case ({} prompt, {} completion tokens)",
                ctx.request_id,
                self.project_name(ctx),
                overrun.usd_exact(),
                cost.unwrap_or(Nanos::ZERO).saturating_sub(overrun).usd_exact(),
                end.usage.prompt_tokens.unwrap_or(0),
                end.usage.completion_tokens.unwrap_or(0),
            );
        }
        self.observe(ctx, &end);
        if ctx.seen.endpoint.is_some_and(|e| e.is_recorded()) {
            let d = record(ctx, &end);
            if let Some(f) = &self.fleet {
                f.record(crate::admin::decision_json_of(&d, Some(&f.instance)));
            }
            self.ledger.record(d);
        }
        // An unknown path is named in the log, so a route a client needs is easy to spot.
        let path = match ctx.seen.endpoint {
            None => Some(session.req_header().uri.path()),
            Some(_) => None,
        };
        access_log(ctx, e, &end, self.project_name(ctx), path);
    }

    fn project_name<'a>(&self, ctx: &'a Ctx) -> &'a str {
        ctx.cfg
            .as_deref()
            .zip(ctx.seen.project)
            .map_or("-", |(c, p)| c.projects[p].id.as_str())
    }

    /// Metrics for one finished request. Label values come only from the config or fixed sets.
    fn observe(&self, ctx: &Ctx, end: &Ending) {
        let Some(m) = crate::metrics::get() else {
            return;
        };
        if matches!(ctx.seen.endpoint, Some(Endpoint::Healthz | Endpoint::Root)) {
            // Liveness probes are not traffic: counting them would inflate request rates.
            return;
        }
        let cfg = ctx.cfg.as_deref();
        let project = cfg
            .zip(ctx.seen.project)
            .map_or("other", |(c, p)| c.projects[p].id.as_str());
        let model = ctx.admitted.price_key.as_deref().unwrap_or("other");
        let provider = cfg
            .zip(ctx.attempts.provider)
            .map_or("other", |(c, p)| c.providers[p].name.as_str());
        let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
        let recorded = ctx.seen.endpoint.is_some_and(|e| e.is_recorded());
        // An allowed request counts through its thread's handles of the series (the same
        // series; see `metrics::PairHandles`); a blocked one, rare, through the families.
        let fast = match ctx.cfg.as_ref() {
            Some(cfg) if !end.blocked => {
                crate::metrics::with_pair(cfg, ctx.seen.project, project, model, |m, h| {
                    h.requests(m, crate::metrics::status_label(end.status))
                        .inc();
                    if recorded {
                        h.allowed(m).inc();
                        h.source(m, end.source.as_str()).inc();
                        if let Some(n) = format.and_then(|f| end.usage.input_tokens(f)) {
                            h.prompt_tokens(m).inc_by(n);
                        }
                    }
                    if let Some(n) = end.usage.completion_tokens {
                        h.completion_tokens(m).inc_by(n);
                    }
                    if let Some(c) = end.cost.filter(|c| c.0 > 0) {
                        h.spend(m).inc_by(c.as_usd());
                    }
                })
                .is_some()
            }
            _ => false,
        };
        if !fast {
            observe_by_labels(ctx, end, m, project, model);
        }
        if end.overrun > Nanos::ZERO {
            m.reservation_overruns.with_label_values(&[project]).inc();
        }
        if let (Some(p), true) = (ctx.attempts.provider, end.reached) {
            let took = ctx.started.elapsed().as_secs_f64();
            let first_byte = ctx
                .upstream
                .first_byte
                .map(|fb| (fb - ctx.started).as_secs_f64());
            let fast = ctx.cfg.as_ref().and_then(|cfg| {
                crate::metrics::with_provider(cfg, p, |m, h| {
                    h.duration(m).observe(took);
                    if let Some(fb) = first_byte {
                        h.first_byte(m).observe(fb);
                    }
                })
            });
            if fast.is_none() {
                m.request_duration
                    .with_label_values(&[provider])
                    .observe(took);
                if let Some(fb) = first_byte {
                    m.first_byte.with_label_values(&[provider]).observe(fb);
                }
            }
            if let Some(e) = ctx.error.as_ref().filter(|e| !e.is_block()) {
                m.upstream_errors
                    .with_label_values(&[provider, e.code()])
                    .inc();
            }
        }
    }
}

/// [`Gateway::observe`]'s request series, each found by its labels.
fn observe_by_labels(
    ctx: &Ctx,
    end: &Ending,
    m: &crate::metrics::Metrics,
    project: &str,
    model: &str,
) {
    m.requests
        .with_label_values(&[project, model, crate::metrics::status_label(end.status)])
        .inc();
    let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
    if ctx.seen.endpoint.is_some_and(|e| e.is_recorded()) {
        let reason = match &ctx.error {
            Some(e) if end.blocked => e.code(),
            _ => "ok",
        };
        let decision = if end.blocked { "block" } else { "allow" };
        m.decisions
            .with_label_values(&[project, decision, reason])
            .inc();
        m.usage_source
            .with_label_values(&[project, end.source.as_str()])
            .inc();
        if let Some(n) = format
            .and_then(|f| end.usage.input_tokens(f))
            .filter(|_| !end.blocked)
        {
            m.tokens
                .with_label_values(&[project, model, "prompt"])
                .inc_by(n);
        }
    }
    if let Some(n) = end.usage.completion_tokens.filter(|_| !end.blocked) {
        m.tokens
            .with_label_values(&[project, model, "completion"])
            .inc_by(n);
    }
    if let Some(c) = end.cost.filter(|c| c.0 > 0) {
        m.spend
            .with_label_values(&[project, model])
            .inc_by(c.as_usd());
    }
}

fn record(ctx: &Ctx, end: &Ending) -> DecisionRecord {
    let cfg = ctx.cfg.as_deref();
    let reason = ctx.error.as_ref().map_or("ok", |e| e.code());
    DecisionRecord {
        id: ctx.request_id.clone(),
        time_ms: ctx.started_ms,
        project: cfg
            .zip(ctx.seen.project)
            .map(|(c, p)| c.projects[p].id.clone()),
        key_id: ctx.seen.key_id.clone(),
        endpoint: ctx.seen.endpoint.map(|e| e.as_str().to_string()),
        model: ctx.seen.model.clone(),
        provider: cfg
            .zip(ctx.attempts.provider)
            .map(|(c, p)| c.providers[p].name.clone()),
        decision: if end.blocked { "block" } else { "allow" }.to_string(),
        reason: reason.to_string(),
        status: end.status,
        prompt_tokens: end.usage.prompt_tokens,
        completion_tokens: end.usage.completion_tokens,
        usage_source: end.source.as_str().to_string(),
        cost_nanos: end.cost.map(|c| c.0),
        overrun_nanos: end.overrun.0,
        team: cfg
            .zip(ctx.seen.project)
            .and_then(|(c, p)| c.projects[p].team.map(|t| c.teams[t].id.clone())),
        key_name: ctx.seen.key_name.clone(),
        user: ctx.seen.user.clone(),
        tags: (!ctx.seen.tags.is_empty())
            .then(|| crate::engine::accounts::tags_json(&ctx.seen.tags)),
        cache: ctx.cache.as_ref().map(|c| c.result.to_string()),
        saved_nanos: ctx.cache.as_ref().map_or(0, |c| c.saved.0),
        latency_ms: end.latency_ms,
        stream: ctx.seen.stream,
        attempts: ctx.attempts.count(),
        providers_tried: (!ctx.attempts.tried.is_empty()).then(|| {
            let names: Vec<&str> = ctx
                .attempts
                .tried
                .iter()
                .filter_map(|&p| cfg.map(|c| c.providers[p].name.as_str()))
                .collect();
            names.join(",")
        }),
    }
}

fn access_log(ctx: &Ctx, e: Option<&Error>, end: &Ending, project: &str, path: Option<&str>) {
    use std::fmt::Write;
    if !crate::access_log::enabled() {
        return;
    }
    let provider = ctx
        .cfg
        .as_deref()
        .zip(ctx.attempts.provider)
        .filter(|_| end.reached)
        .map_or("-", |(c, p)| c.providers[p].name.as_str());
    let mut line = String::with_capacity(320);
    let _ = write!(
        line,
        "id={} project={} endpoint={}",
        ctx.request_id,
        project,
        ctx.seen.endpoint.map_or("-", |e| e.as_str()),
    );
    if let Some(p) = path {
        let _ = write!(line, " path={}", truncate(p, 100));
    }
    let _ = write!(
        line,
        " model={} provider={} attempts={} status={} reason={} stream={} prompt_tokens=",
        ctx.seen.model.as_deref().map_or("-", |m| truncate(m, 100)),
        provider,
        ctx.attempts.count(),
        end.status,
        ctx.error.as_ref().map_or("-", |e| e.code()),
        ctx.seen.stream,
    );
    let n = |line: &mut String, v: Option<u64>| match v {
        Some(v) => crate::engine::pricing::push_u64(line, v),
        None => line.push('-'),
    };
    n(&mut line, end.usage.prompt_tokens);
    line.push_str(" completion_tokens=");
    n(&mut line, end.usage.completion_tokens);
    line.push_str(" usage=");
    line.push_str(end.source.as_str());
    line.push_str(" cost_usd=");
    match end.cost {
        Some(c) => c.push_usd_exact(&mut line),
        None => line.push('-'),
    }
    let _ = write!(
        line,
        " latency_ms={:.1}",
        ctx.started.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(e) = e.filter(|_| ctx.error.is_none()) {
        line.push_str(" error=");
        line.push_str(e.etype().as_str());
    }
    crate::access_log::emit(line);
}

/// A pingora error (connect, timeout, broken stream) as the SPEC error the client gets.
pub(super) fn classify(e: &Error, ctx: &Ctx) -> GatewayError {
    let provider = ctx
        .cfg
        .as_ref()
        .zip(ctx.attempts.provider)
        .map_or("the provider".to_string(), |(c, p)| {
            format!("provider {}", c.providers[p].name)
        });
    // The message names the last try; say when it was not the only one.
    let tries = ctx.attempts.count();
    let after = if tries > 1 {
        format!(" (the last of {tries} attempts)")
    } else {
        String::new()
    };
    use ErrorType::*;
    if e.esource() == &ErrorSource::Downstream {
        return match e.etype() {
            // The client hung up (a cancelled call, a closed tab) or stopped reading or
            // sending: the request may well have reached the provider, so it is no block.
            ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout => {
                GatewayError::ClientClosed(format!(
                    "The client went away before the answer was through ({})",
                    e.etype().as_str()
                ))
            }
            _ => GatewayError::InvalidRequest(format!("Bad request: {}", e.etype().as_str())),
        };
    }
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
        _ => GatewayError::Internal("Internal gateway error".into()),
    }
}
