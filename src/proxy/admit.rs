//! `request_filter`'s glue: read the facts from the session, ask `engine::admission`, act on
//! the answer (the rate limit, the body read, the ledger reservation). Every rule lives in the
//! engine; this file only moves bytes and state.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use pingora::proxy::Session;

use super::{Ctx, Gateway, RETRY_BUFFER_LIMIT};
use crate::engine::admission::{self, Facts, Head, Next};
use crate::engine::auth;
use crate::engine::error::{ErrorShape, GatewayError};
use crate::engine::pricing::Nanos;
use crate::engine::provider::Endpoint;
use crate::health::{self, HEALTH};

/// What `request_filter` does next.
pub enum Admit {
    /// Answer locally with this status and JSON body.
    Local { status: u16, body: Bytes },
    /// Forward upstream with this body. `buffered`: Pingora's retry buffer was on while the
    /// client's body was read (it is off for a body declared larger than it can hold), so
    /// Pingora can replay a body of up to its size; otherwise the body goes through
    /// `body_replay`.
    Forward { body: Bytes, buffered: bool },
    /// Answer with a stored response (a cache hit): nothing is reserved or sent upstream.
    Cached(std::sync::Arc<crate::cache::Entry>),
}

impl Gateway {
    /// Everything `request_filter` decides; `Err` is answered to the client as is.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Admit, GatewayError> {
        let cfg = self.config.load_full();
        ctx.cfg = Some(cfg.clone());
        let req = session.req_header();
        let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
        let head = Head {
            method: req.method.as_str(),
            path: req.uri.path(),
            key: auth::presented_key(header),
            content_length: header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
            anthropic: req.headers.contains_key("anthropic-version"),
            // Only a WebSocket: `Upgrade: h2c` (curl --http2 on http://) is for the server to
            // ignore, not to refuse.
            upgrade: req.headers.get(http::header::UPGRADE).is_some_and(|v| {
                v.as_bytes()
                    .to_ascii_lowercase()
                    .windows(9)
                    .any(|w| w == b"websocket")
            }),
            tags: header("x-tollgate-tags"),
            now_unix: crate::clock::unix_secs(),
        };
        // Anthropic's paths, and the shared model routes asked in Anthropic's dialect, answer
        // errors in Anthropic's shape.
        let models = matches!(
            Endpoint::from_path(head.path),
            Some(Endpoint::Models | Endpoint::Model)
        );
        if Endpoint::is_anthropic_path(head.path) || (models && head.anthropic) {
            ctx.shape = ErrorShape::Anthropic;
        }
        let declared = head.content_length;
        let expects_continue =
            header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        // In fleet mode the reserve is the authority on freezes (an unfreeze elsewhere lifts
        // at once); the local view, kept from Redis, serves while Redis is unreachable.
        let fleet_decides = self.fleet.as_ref().is_some_and(|f| f.is_up());
        let frozen = |id: &str| !fleet_decides && self.ledger.is_frozen(id);
        match admission::before_body(&cfg, &head, &frozen, &mut ctx.seen)? {
            Next::Answer(status, body) => {
                return Ok(Admit::Local {
                    status,
                    body: Bytes::from(body),
                })
            }
            Next::ReadBody => {}
        }
        let (Some(endpoint), Some(project_idx)) = (ctx.seen.endpoint, ctx.seen.project) else {
            return Err(GatewayError::Internal("admission lost its facts".into()));
        };
        let project = &cfg.projects[project_idx];
        ctx.admitted.report_cost = project.report_cost;
        if self.fleet.is_none() && !self.ledger.is_handed_over() {
            // In fleet mode the limits are counted by Redis, with the reservation; after an
            // upgrade's hand-over, by the successor.
            self.limits.admit(project)?;
        }

        if expects_continue {
            // The key and the declared size passed: now the client may send the body (curl
            // waits a second for this before sending a large one anyway).
            session.write_continue_response().await.map_err(|e| {
                GatewayError::InvalidRequest(format!(
                    "Could not answer Expect: 100-continue: {}",
                    e.etype().as_str()
                ))
            })?;
        }
        let (body, buffered) = read_body(session, declared, cfg.server.max_body_bytes).await?;
        ctx.admitted.request_bytes = body.len();
        let now = health::now_ms();
        let circuit = cfg.server.circuit;
        let usable = |p: usize| HEALTH.available(&cfg.providers[p].name, now, circuit);
        let a = admission::decide(
            &cfg,
            &Facts {
                endpoint,
                project: project_idx,
                user_header: session
                    .req_header()
                    .headers
                    .get("x-tollgate-user")
                    .map(|v| v.as_bytes()),
                body: &body,
                pick: self.ids.counter.load(Ordering::Relaxed),
                usable: &usable,
            },
            &mut ctx.seen,
        )?;
        // The response cache: after every control has passed (a request the project may not
        // send is blocked even if an answer is stored), before anything is reserved.
        if let (Some(ttl), true) = (
            project.cache_ttl,
            a.charged && crate::engine::cache::cacheable(endpoint),
        ) {
            use crate::engine::cache::{self as rules, Directive};
            let asked = session
                .req_header()
                .headers
                .get("x-tollgate-cache")
                .map(|v| v.as_bytes());
            let directive = Directive::parse(asked)?;
            let mut state = crate::proxy::ctx::CacheState {
                result: "skip",
                key: [0; 32],
                ttl,
                recording: None,
                status: 0,
                content_type: None,
                complete: false,
                saved: Nanos::ZERO,
            };
            if directive != Directive::Skip {
                let sent = a.rewritten.as_deref().unwrap_or(&body);
                let model = ctx.seen.upstream_model.as_deref().unwrap_or("");
                state.key = rules::key(&project.id, endpoint, model, sent);
                if directive == Directive::Normal {
                    let mut found = self.cache.get(&state.key, std::time::Instant::now());
                    if let (None, Some(f)) = (&found, &self.fleet) {
                        // Another instance of the fleet may have stored it.
                        let hex = crate::cache::hex(&state.key);
                        if let Some(blob) = f.cache_get(&project.id, &hex).await {
                            let now = std::time::Instant::now();
                            if let Some(e) =
                                crate::cache::decode(&blob, now, crate::clock::unix_ms())
                            {
                                let e = std::sync::Arc::new(e);
                                self.cache.put(state.key, e.clone());
                                found = Some(e);
                            }
                        }
                    }
                    if let Some(entry) = found {
                        state.result = "hit";
                        state.saved = entry.cost;
                        ctx.cache = Some(state);
                        ctx.admitted.strip_usage_chunk = a.strip_usage_chunk;
                        return Ok(Admit::Cached(entry));
                    }
                }
                state.result = "miss";
                state.recording = Some(Default::default());
            }
            ctx.cache = Some(state);
        }
        if self.fleet.is_none() && a.charged {
            // End users with a budget whose spend is not in memory: read it from the store
            // off this thread before reserving.
            let missing = self.ledger.missing_users(&a.accounts);
            if !missing.is_empty() {
                let ledger = self.ledger.clone();
                tokio::task::spawn_blocking(move || ledger.load_users(&missing))
                    .await
                    .map_err(|e| GatewayError::Internal(format!("user load task: {e}")))?
                    .map_err(|e| {
                        log::error!("ledger: reading end users' spend: {e}");
                        GatewayError::LedgerUnavailable(
                            "The end user's spend could not be read from the ledger".into(),
                        )
                    })?;
            }
        }
        let admitted = &mut ctx.admitted;
        let mut local = None;
        if self.fleet.is_none() && a.charged && !self.ledger.is_handed_over() {
            match self
                .ledger
                .reserve_accounts(&project.id, &a.accounts, a.worst)
            {
                Err(GatewayError::LedgerUnavailable(m)) if m == crate::ledger::HANDED_OVER => {}
                other => local = Some(other?),
            }
        }
        if let Some(reservation) = local {
            admitted.remaining = reservation.remaining();
            admitted.reservation = Some(reservation);
        } else if self.fleet.is_none() && self.ledger.is_handed_over() {
            // A binary upgrade handed the ledger over: the successor admits (budgets, freeze,
            // rate limits) and keeps the hold.
            let Some(succ) = crate::handover::successor() else {
                return Err(GatewayError::LedgerUnavailable(
                    "The ledger is being handed over to the successor process".into(),
                ));
            };
            let hold = succ
                .reserve(&project.id, &a.accounts, a.worst, a.charged)
                .await?;
            admitted.remaining = hold.remaining;
            admitted.remote = Some(hold);
        } else if let Some(fleet) = &self.fleet {
            let worst = if a.charged { a.worst } else { Nanos::ZERO };
            let hold = fleet.reserve(project, &a.accounts, worst).await?;
            admitted.remaining = hold.remaining;
            admitted.hold = Some(hold);
            if a.charged {
                admitted.reservation = Some(self.ledger.reserve_unchecked(
                    &project.id,
                    &a.accounts,
                    a.worst,
                )?);
            }
        } else if a.charged {
            let reservation = self
                .ledger
                .reserve_accounts(&project.id, &a.accounts, a.worst)?;
            admitted.remaining = reservation.remaining();
            admitted.reservation = Some(reservation);
        }
        admitted.strip_usage_chunk = a.strip_usage_chunk;
        if let Some((key, price)) = a.price {
            admitted.price_key = Some(key);
            admitted.price = Some(price);
        }
        let attempts = &mut ctx.attempts;
        attempts.deadline = ctx.started.checked_add(a.deadline);
        attempts.provider = a.attempts.first().copied();
        attempts.plan = crate::engine::route::Plan::new(a.attempts);
        Ok(Admit::Forward {
            body: a.rewritten.map_or(body, Bytes::from),
            buffered,
        })
    }
}

/// The whole request body, refused past `max` bytes without reading further, and whether
/// Pingora's retry buffer was on while it was read.
async fn read_body(
    session: &mut Session,
    declared: Option<u64>,
    max: usize,
) -> Result<(Bytes, bool), GatewayError> {
    // Pingora replays a consumed body only from its retry buffer: it must be on before the
    // first read, and it keeps at most RETRY_BUFFER_LIMIT bytes. A body declared larger goes
    // through body_replay.rs anyway, so Pingora is not asked to copy the first 64 KiB of it
    // into that buffer for nothing.
    let buffered = declared.is_none_or(|n| n <= RETRY_BUFFER_LIMIT as u64);
    if buffered {
        session.enable_retry_buffering();
    }
    let capacity = declared.map_or(4096, |n| usize::try_from(n).unwrap_or(max).min(max));
    // A body that arrives in one read is kept as Pingora handed it over, without a copy; the
    // second read starts one buffer of the declared size.
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                let held = first.as_ref().map_or(buf.len(), Bytes::len);
                if held + chunk.len() > max {
                    return Err(admission::too_large(max));
                }
                match first.take() {
                    Some(one) => {
                        buf = Vec::with_capacity(capacity.max(one.len() + chunk.len()));
                        buf.extend_from_slice(&one);
                        buf.extend_from_slice(&chunk);
                    }
                    None if buf.is_empty() => first = Some(chunk),
                    None => buf.extend_from_slice(&chunk),
                }
            }
            Ok(None) => return Ok((first.unwrap_or_else(|| Bytes::from(buf)), buffered)),
            Err(e) => {
                return Err(GatewayError::InvalidRequest(format!(
                    "Could not read the request body: {}",
                    e.etype().as_str()
                )))
            }
        }
    }
}
