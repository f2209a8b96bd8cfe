//! The admin listener: `/healthz`, `/metrics` and the `/admin/*` API on its own address.
//!
//! `/admin/*` needs `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN` (compared in constant time);
//! with the variable unset the admin API answers 404 and does nothing. Blocking store reads run
//! on the blocking pool, never on the admin runtime's workers.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::engine::config::Config;
use crate::engine::error::{json_string, ErrorShape, GatewayError};
use crate::ledger::{DecisionRecord, Ledger};
use crate::reload::Reloader;

pub struct Admin {
    pub config: Arc<ArcSwap<Config>>,
    pub ledger: Arc<Ledger>,
    pub reloader: Arc<Reloader>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: u16, body: String) -> Response<Vec<u8>> {
    reply(status, "application/json", body.into_bytes())
}

fn error(e: GatewayError) -> Response<Vec<u8>> {
    json(e.status(), e.body(ErrorShape::OpenAi))
}

fn usd(n: crate::engine::pricing::Nanos) -> String {
    format!("{:.6}", n.as_usd())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

pub fn decision_json(d: &DecisionRecord) -> String {
    let opt_s = |v: &Option<String>| v.as_deref().map_or("null".to_string(), json_string);
    let opt_n = |v: Option<u64>| v.map_or("null".to_string(), |n| n.to_string());
    format!(
        r#"{{"id":{},"time":{},"project":{},"key_id":{},"endpoint":{},"model":{},"provider":{},"decision":{},"reason":{},"status":{},"prompt_tokens":{},"completion_tokens":{},"usage_source":{},"cost_usd":{},"latency_ms":{:.3},"stream":{},"attempts":{},"providers_tried":{}}}"#,
        json_string(&d.id),
        json_string(&crate::engine::time::rfc3339_millis(d.time_ms)),
        opt_s(&d.project),
        opt_s(&d.key_id),
        opt_s(&d.endpoint),
        opt_s(&d.model),
        opt_s(&d.provider),
        json_string(&d.decision),
        json_string(&d.reason),
        d.status,
        opt_n(d.prompt_tokens),
        opt_n(d.completion_tokens),
        json_string(&d.usage_source),
        d.cost_nanos
            .map_or("null".to_string(), |c| format!("{:.9}", c as f64 / 1e9)),
        d.latency_ms,
        d.stream,
        d.attempts,
        opt_s(&d.providers_tried)
    )
}

/// `GET /admin/providers`: each configured provider's circuit. `open_until` (RFC 3339) is set
/// while the circuit is open.
pub fn providers_json(cfg: &Config) -> String {
    use crate::engine::circuit::State;
    use crate::health::{now_ms, HEALTH};
    let now = now_ms();
    let wall = crate::clock::unix_ms();
    let items: Vec<String> = cfg
        .providers
        .iter()
        .map(|p| {
            let s = HEALTH.snapshot(&p.name, now);
            let open_until = match s.state {
                State::Open { until } => {
                    let left = i64::try_from(until.saturating_sub(now)).unwrap_or(i64::MAX);
                    json_string(&crate::engine::time::rfc3339_millis(
                        wall.saturating_add(left),
                    ))
                }
                _ => "null".to_string(),
            };
            format!(
                r#"{{"name":{},"state":"{}","up":{},"consecutive_failures":{},"open_until":{}}}"#,
                json_string(&p.name),
                s.state.as_str(),
                !matches!(s.state, State::Open { .. }),
                s.consecutive_failures,
                open_until
            )
        })
        .collect();
    format!(
        r#"{{"circuit":{{"failures":{},"cooldown_ms":{}}},"providers":[{}]}}"#,
        cfg.server.circuit.failures,
        cfg.server.circuit.cooldown_ms,
        items.join(",")
    )
}

impl Admin {
    fn authorized(&self, cfg: &Config, session: &ServerSession) -> Result<(), GatewayError> {
        let Some(token) = &cfg.server.admin_token else {
            return Err(GatewayError::NotFound(format!(
                "The admin API is disabled: set {} to enable it",
                cfg.server
                    .admin_token_env
                    .as_deref()
                    .unwrap_or("server.admin_token_env")
            )));
        };
        let presented = session
            .get_header("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        use subtle::ConstantTimeEq;
        let a = crate::engine::auth::key_digest(presented.as_bytes());
        let b = crate::engine::auth::key_digest(token.expose().as_bytes());
        if presented.is_empty() || !bool::from(a.ct_eq(&b)) {
            return Err(GatewayError::Unauthorized(
                "Missing or wrong admin token".into(),
            ));
        }
        Ok(())
    }

    fn projects(&self, cfg: &Config) -> String {
        let items: Vec<String> = cfg
            .projects
            .iter()
            .map(|p| {
                let s = self.ledger.status(p);
                let opt = |v: Option<crate::engine::pricing::Nanos>| v.map_or("null".to_string(), usd);
                format!(
                    r#"{{"id":{},"period":"{}","spent_usd":{},"reserved_usd":{},"limit_usd":{},"remaining_usd":{},"frozen":{}}}"#,
                    json_string(&s.id),
                    s.period,
                    usd(s.spent),
                    usd(s.reserved),
                    opt(s.limit),
                    opt(s.remaining),
                    s.frozen
                )
            })
            .collect();
        format!(r#"{{"projects":[{}]}}"#, items.join(","))
    }

    async fn decisions(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(reader) = self.ledger.reader() else {
            return json(200, r#"{"decisions":[]}"#.into());
        };
        let project = query_param(query, "project").map(str::to_string);
        let limit = match query_param(query, "limit").map(str::parse::<usize>) {
            None => 50,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return error(GatewayError::InvalidRequest(
                    "limit must be a number from 1 to 1000".into(),
                ))
            }
        };
        let before = query_param(query, "before_ms")
            .and_then(|t| t.parse::<i64>().ok())
            .map(|t| (t, query_param(query, "before_id").unwrap_or("").to_string()));
        let res = tokio::task::spawn_blocking(move || {
            reader.decisions(project.as_deref(), limit, before)
        })
        .await;
        match res {
            Ok(Ok(list)) => {
                let items: Vec<String> = list.iter().map(decision_json).collect();
                let next = list
                    .last()
                    .filter(|_| list.len() == limit)
                    .map_or("null".to_string(), |d| {
                        json_string(&format!("before_ms={}&before_id={}", d.time_ms, d.id))
                    });
                json(
                    200,
                    format!(r#"{{"decisions":[{}],"next":{next}}}"#, items.join(",")),
                )
            }
            Ok(Err(e)) => {
                log::error!("admin decisions: {e}");
                error(GatewayError::Internal(
                    "Could not read the decision records".into(),
                ))
            }
            Err(e) => {
                log::error!("admin decisions: {e}");
                error(GatewayError::Internal(
                    "Could not read the decision records".into(),
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let _ = session.drain_request_body().await;
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => return json(200, r#"{"status":"ok"}"#.into()),
            ("GET", "/metrics") => {
                let cfg = self.config.load();
                crate::health::publish_up(&cfg);
                // Budget gauges are read from the ledger at scrape time, not on every request
                // (the control task also refreshes them every few seconds).
                crate::metrics::publish_budgets(&cfg, &self.ledger, &mut Default::default());
                return reply(200, "text/plain; version=0.0.4", crate::metrics::render());
            }
            _ => {}
        }
        if !path.starts_with("/admin/") {
            return error(GatewayError::NotFound(format!("Unknown path {path}")));
        }
        let cfg = self.config.load_full();
        if let Err(e) = self.authorized(&cfg, session) {
            return error(e);
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["", "admin", "projects"]) => json(200, self.projects(&cfg)),
            ("POST", ["", "admin", "projects", id, action @ ("freeze" | "unfreeze")]) => {
                if cfg.project_index(id).is_none() {
                    return error(GatewayError::NotFound(format!("Unknown project {id}")));
                }
                let frozen = *action == "freeze";
                self.ledger.set_frozen(id, frozen);
                log::warn!(
                    "project {id} {}",
                    if frozen { "frozen" } else { "unfrozen" }
                );
                json(
                    200,
                    format!(r#"{{"id":{},"frozen":{frozen}}}"#, json_string(id)),
                )
            }
            ("POST", ["", "admin", "reload"]) => match self.reloader.reload().await {
                Ok(()) => json(200, r#"{"reloaded":true}"#.into()),
                Err(e) => json(
                    422,
                    format!(
                        r#"{{"error":{{"message":{},"type":"invalid_config","code":"invalid_config"}}}}"#,
                        json_string(&e)
                    ),
                ),
            },
            ("GET", ["", "admin", "decisions"]) => self.decisions(query.as_deref()).await,
            ("GET", ["", "admin", "providers"]) => json(200, providers_json(&cfg)),
            (
                _,
                ["", "admin", "projects"]
                | ["", "admin", "reload"]
                | ["", "admin", "decisions"]
                | ["", "admin", "providers"],
            ) => error(GatewayError::MethodNotAllowed(format!(
                "{method} {path} is not supported"
            ))),
            (_, ["", "admin", "projects", _, "freeze" | "unfreeze"]) => {
                error(GatewayError::MethodNotAllowed(format!(
                    "{method} {path} is not supported; use POST"
                )))
            }
            _ => error(GatewayError::NotFound(format!("Unknown path {path}"))),
        }
    }
}
