//! The admin listener: `/healthz`, `/metrics` and the `/admin/*` API on its own address.
//!
//! `/admin/*` needs `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN` (compared in constant time);
//! with the variable unset the admin API answers 404 and does nothing. Blocking store reads run
//! on the blocking pool, never on the admin runtime's workers.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::engine::accounts::AccountKind;
use crate::engine::admission::percent_decode;
use crate::engine::budget::Period;
use crate::engine::config::Config;
use crate::engine::error::{json_string, push_json_string, ErrorShape, GatewayError};
use crate::engine::pricing::{push_u64, Nanos};
use crate::ledger::fleet::Fleet;
use crate::ledger::{DecisionFilter, DecisionRecord, Ledger, ProjectStatus, WindowStatus};
use crate::reload::Reloader;

mod console;
mod reports;

/// What a token may do on the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Viewer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The viewer token asked for an action.
fn read_only() -> Response<Vec<u8>> {
    json(
        403,
        r#"{"error":{"message":"This token is read-only (viewer_token_env): it can see everything and change nothing; use the admin token","type":"permission_denied","param":null,"code":"read_only_token","reason":"read_only_token"}}"#.into(),
    )
}

pub struct Admin {
    pub config: Arc<ArcSwap<Config>>,
    pub ledger: Arc<Ledger>,
    pub reloader: Arc<Reloader>,
    pub fleet: Option<Arc<Fleet>>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// A console file: the page's strict Content-Security-Policy, never sniffed or framed, and no
/// referrer (the page's address carries nothing secret, but nothing needs it either).
fn console_reply(content_type: &str, body: &'static [u8]) -> Response<Vec<u8>> {
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("content-security-policy", console::CSP)
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-cache")
        .body(body.to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: u16, body: String) -> Response<Vec<u8>> {
    reply(status, "application/json", body.into_bytes())
}

fn error(e: GatewayError) -> Response<Vec<u8>> {
    json(e.status(), e.body(ErrorShape::OpenAi))
}

/// Every amount in admin JSON: exact nano-dollars (SPEC "Admin listener"), never rounded.
fn usd(n: Nanos) -> String {
    n.usd_exact()
}

/// `%XX` for every byte outside `[A-Za-z0-9_.~-]`, for a cursor that carries a user id.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.~-".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
pub fn decision_json(d: &DecisionRecord) -> String {
    decision_json_of(d, None)
}

/// A decision record as JSON; in fleet mode with the `instance` that made it. Written into one
/// buffer (fleet mode builds one per request for the decision stream).
pub fn decision_json_of(d: &DecisionRecord, instance: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut o = String::with_capacity(512);
    let s = |o: &mut String, v: &str| push_json_string(o, v);
    let opt_s = |o: &mut String, v: &Option<String>| match v {
        Some(v) => push_json_string(o, v),
        None => o.push_str("null"),
    };
    let opt_n = |o: &mut String, v: Option<u64>| match v {
        Some(n) => push_u64(o, n),
        None => o.push_str("null"),
    };
    o.push_str(r#"{"id":"#);
    s(&mut o, &d.id);
    if let Some(i) = instance {
        o.push_str(r#","instance":"#);
        s(&mut o, i);
    }
    o.push_str(r#","time":""#);
    let mut buf = [0u8; 24];
    match crate::engine::time::rfc3339_millis_into(d.time_ms, &mut buf) {
        Some(t) => o.push_str(t),
        None => o.push_str(&crate::engine::time::rfc3339_millis(d.time_ms)),
    }
    o.push_str(r#"","project":"#);
    opt_s(&mut o, &d.project);
    o.push_str(r#","key_id":"#);
    opt_s(&mut o, &d.key_id);
    o.push_str(r#","endpoint":"#);
    opt_s(&mut o, &d.endpoint);
    o.push_str(r#","model":"#);
    opt_s(&mut o, &d.model);
    o.push_str(r#","provider":"#);
    opt_s(&mut o, &d.provider);
    o.push_str(r#","decision":"#);
    s(&mut o, &d.decision);
    o.push_str(r#","reason":"#);
    s(&mut o, &d.reason);
    o.push_str(r#","status":"#);
    push_u64(&mut o, u64::from(d.status));
    o.push_str(r#","prompt_tokens":"#);
    opt_n(&mut o, d.prompt_tokens);
    o.push_str(r#","completion_tokens":"#);
    opt_n(&mut o, d.completion_tokens);
    o.push_str(r#","usage_source":"#);
    s(&mut o, &d.usage_source);
    o.push_str(r#","cost_usd":"#);
    match d.cost_nanos {
        Some(c) => Nanos(c).push_usd_exact(&mut o),
        None => o.push_str("null"),
    }
    o.push_str(r#","overrun_usd":"#);
    Nanos(d.overrun_nanos).push_usd_exact(&mut o);
    o.push_str(r#","latency_ms":"#);
    if d.latency_ms.is_finite() {
        let _ = write!(o, "{:.3}", d.latency_ms);
    } else {
        o.push_str("null");
    }
    o.push_str(if d.stream {
        r#","stream":true,"attempts":"#
    } else {
        r#","stream":false,"attempts":"#
    });
    push_u64(&mut o, u64::from(d.attempts));
    o.push_str(r#","providers_tried":"#);
    opt_s(&mut o, &d.providers_tried);
    o.push_str(r#","team":"#);
    opt_s(&mut o, &d.team);
    o.push_str(r#","key_name":"#);
    opt_s(&mut o, &d.key_name);
    o.push_str(r#","user":"#);
    opt_s(&mut o, &d.user);
    o.push_str(r#","cache":"#);
    opt_s(&mut o, &d.cache);
    o.push_str(r#","saved_usd":"#);
    Nanos(d.saved_nanos).push_usd_exact(&mut o);
    o.push_str(r#","tags":"#);
    // Written by Tollgate as a JSON object; anything else (a hand-edited row) reads `{}`.
    match d.tags.as_deref() {
        Some(t) if t.starts_with('{') && serde_json::from_str::<serde_json::Value>(t).is_ok() => {
            o.push_str(t)
        }
        _ => o.push_str("{}"),
    }
    o.push('}');
    o
}

/// One window of an account: `{"period","limit_usd","spent_usd","reserved_usd","remaining_usd"}`
/// (and `leased_usd` in fleet mode).
fn window_json(w: &WindowStatus, leased: Option<Nanos>) -> String {
    let extra = leased.map_or(String::new(), |l| format!(r#","leased_usd":{}"#, usd(l)));
    format!(
        r#"{{"period":"{}","limit_usd":{},"spent_usd":{},"reserved_usd":{},"remaining_usd":{}{extra}}}"#,
        w.period,
        usd(w.limit),
        usd(w.spent),
        usd(w.reserved),
        usd(w.remaining),
    )
}

/// Replace a window's figures with the fleet's (committed, held, leased).
fn fleet_window(w: &mut WindowStatus, (committed, held, leased): (Nanos, Nanos, Nanos)) {
    w.spent = committed;
    w.reserved = held;
    w.remaining = w
        .limit
        .saturating_sub(committed)
        .saturating_sub(held)
        .saturating_sub(leased);
}

/// One entry of `GET /admin/projects`; `limit_usd` and `remaining_usd` are `null` for a
/// project without a budget.
#[cfg(test)]
pub fn project_json(s: &ProjectStatus) -> String {
    project_json_of(s, None)
}

/// Fleet mode adds `leased_usd` and says where the figures come from (`"fleet"`: Redis, the
/// whole fleet; `"local"`: Redis could not be read, this instance's own share).
#[cfg(test)]
fn project_json_of(s: &ProjectStatus, fleet: Option<(Nanos, &str)>) -> String {
    project_json_full(s, None, fleet, &[])
}

/// [`project_json_of`] with the project's `team` and each window's leased figure (fleet mode).
fn project_json_full(
    s: &ProjectStatus,
    team: Option<&str>,
    fleet: Option<(Nanos, &str)>,
    leased: &[Nanos],
) -> String {
    let opt = |v: Option<Nanos>| v.map_or("null".to_string(), usd);
    let extra = fleet.map_or(String::new(), |(leased, source)| {
        format!(r#","leased_usd":{},"source":"{source}""#, usd(leased))
    });
    let budgets: Vec<String> = s
        .budgets
        .iter()
        .enumerate()
        .map(|(i, w)| window_json(w, fleet.map(|_| leased.get(i).copied().unwrap_or_default())))
        .collect();
    format!(
        r#"{{"id":{},"team":{},"period":"{}","spent_usd":{},"reserved_usd":{},"limit_usd":{},"remaining_usd":{},"frozen":{},"budgets":[{}]{extra}}}"#,
        json_string(&s.id),
        team.map_or("null".to_string(), json_string),
        s.period,
        usd(s.spent),
        usd(s.reserved),
        opt(s.limit),
        opt(s.remaining),
        s.frozen,
        budgets.join(",")
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
    /// The fleet's recent records from the Redis stream, newest first; `None` when Redis
    /// cannot be read (the caller falls back to this instance's SQLite).
    async fn fleet_decisions(
        &self,
        fleet: &Fleet,
        project: Option<&str>,
        limit: usize,
        before: Option<&str>,
    ) -> Option<String> {
        let mut items = Vec::with_capacity(limit);
        let mut cursor = before.map(str::to_string);
        let mut last = None;
        // A project filter reads the stream in pages until `limit` records match (bounded).
        for _ in 0..20 {
            let page = fleet.decisions(limit.max(100), cursor.as_deref()).await?;
            let done = page.len() < limit.max(100);
            for (id, d) in page {
                cursor = Some(id.clone());
                let keep = match project {
                    Some(p) => serde_json::from_str::<serde_json::Value>(&d)
                        .ok()
                        .is_some_and(|v| v["project"] == p),
                    None => true,
                };
                if keep && items.len() < limit {
                    items.push(d);
                    last = Some(id);
                }
            }
            if done || items.len() >= limit {
                break;
            }
        }
        let next = last
            .filter(|_| items.len() == limit)
            .map_or("null".to_string(), |id| {
                json_string(&format!("before_stream={id}"))
            });
        Some(format!(
            r#"{{"decisions":[{}],"next":{next},"source":"fleet"}}"#,
            items.join(",")
        ))
    }

    /// Who presented which token: the admin token may do everything, the viewer token
    /// (`viewer_token_env`) may read everything and change nothing. Both are compared in
    /// constant time (as digests, so their lengths do not show either).
    fn authorized(&self, cfg: &Config, session: &ServerSession) -> Result<Role, GatewayError> {
        let (admin, viewer) = (&cfg.server.admin_token, &cfg.server.viewer_token);
        if admin.is_none() && viewer.is_none() {
            return Err(GatewayError::NotFound(format!(
                "The admin API is disabled: set {} to enable it",
                cfg.server
                    .admin_token_env
                    .as_deref()
                    .unwrap_or("server.admin_token_env")
            )));
        }
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
        let matches = |t: &Option<crate::engine::provider::Secret>| {
            t.as_ref().is_some_and(|t| {
                let b = crate::engine::auth::key_digest(t.expose().as_bytes());
                bool::from(a.ct_eq(&b))
            })
        };
        // Both are compared whichever matches, so the time taken does not tell which.
        let (is_admin, is_viewer) = (matches(admin), matches(viewer));
        match (presented.is_empty(), is_admin, is_viewer) {
            (false, true, _) => Ok(Role::Admin),
            (false, false, true) => Ok(Role::Viewer),
            _ => Err(GatewayError::Unauthorized(
                "Missing or wrong admin token".into(),
            )),
        }
    }

    async fn projects(&self, cfg: &Config) -> String {
        let now = crate::clock::unix_ms();
        let month = self.month_spend(now).await;
        format!(
            r#"{{"projects":{}}}"#,
            self.projects_with(cfg, &month, now).await
        )
    }

    /// The projects as a JSON list, each with its month-end `projection_usd` from `month`
    /// (this calendar month's spend per project, from the rollups).
    async fn projects_with(
        &self,
        cfg: &Config,
        month: &std::collections::BTreeMap<String, u64>,
        now_ms: i64,
    ) -> String {
        let mut items: Vec<String> = Vec::with_capacity(cfg.projects.len());
        for p in &cfg.projects {
            let projection = reports::projection(month.get(&p.id).copied().unwrap_or(0), now_ms);
            let projection = format!(r#","projection_usd":{}}}"#, usd(projection));
            let mut s = self.ledger.status(p);
            let team = p.team.map(|t| cfg.teams[t].id.as_str());
            let Some(fleet) = &self.fleet else {
                let mut item = project_json_full(&s, team, None, &[]);
                item.pop();
                item.push_str(&projection);
                items.push(item);
                continue;
            };
            let accounts = crate::ledger::project_accounts(p);
            let mut leased = Vec::new();
            let source = match fleet.windows_status(&p.id, &accounts).await {
                Some((figures, frozen)) => {
                    for (w, f) in s.budgets.iter_mut().zip(&figures) {
                        fleet_window(w, *f);
                    }
                    leased = figures.iter().map(|f| f.2).collect();
                    s.frozen = frozen;
                    match s
                        .budgets
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, w)| w.remaining)
                    {
                        Some((i, t)) => {
                            s.period = t.period;
                            s.spent = t.spent;
                            s.reserved = t.reserved;
                            s.limit = Some(t.limit);
                            s.remaining = Some(t.remaining);
                            let _ = i;
                        }
                        None => {
                            if let Some((c, h, _)) = figures.first() {
                                s.spent = *c;
                                s.reserved = *h;
                            }
                        }
                    }
                    "fleet"
                }
                None => "local",
            };
            // The flat `leased_usd` is the tightest window's (its first, without a window).
            let tight = s
                .budgets
                .iter()
                .position(|w| Some(w.remaining) == s.remaining && Some(w.limit) == s.limit)
                .unwrap_or(0);
            let flat = leased.get(tight).copied().unwrap_or_default();
            let mut item = project_json_full(&s, team, Some((flat, source)), &leased);
            item.pop();
            item.push_str(&projection);
            items.push(item);
        }
        format!("[{}]", items.join(","))
    }

    /// `GET /admin/teams`: each team with its projects and windows (fleet-wide in fleet mode).
    async fn teams(&self, cfg: &Config) -> String {
        let mut items = Vec::with_capacity(cfg.teams.len());
        for (i, t) in cfg.teams.iter().enumerate() {
            let projects: Vec<&str> = cfg
                .projects
                .iter()
                .filter(|p| p.team == Some(i))
                .map(|p| p.id.as_str())
                .collect();
            let mut windows = self.ledger.team_status(t);
            let mut source = "";
            if let (Some(f), Some(first), false) =
                (&self.fleet, projects.first(), windows.is_empty())
            {
                let accounts =
                    crate::engine::accounts::windows(AccountKind::Team, "", &t.id, &t.budgets);
                source = match f.windows_status(first, &accounts).await {
                    Some((figures, _)) => {
                        for (w, fig) in windows.iter_mut().zip(&figures) {
                            fleet_window(w, *fig);
                        }
                        r#","source":"fleet""#
                    }
                    None => r#","source":"local""#,
                };
            }
            let tight = windows.iter().min_by_key(|w| w.remaining);
            let opt = |v: Option<Nanos>| v.map_or("null".to_string(), usd);
            let (period, spent, reserved) = match tight {
                Some(w) => (w.period, w.spent, w.reserved),
                None => {
                    let (spent, reserved) = self.ledger.team_month(t);
                    ("month", spent, reserved)
                }
            };
            let list: Vec<String> = projects.iter().map(|p| json_string(p)).collect();
            let budgets: Vec<String> = windows.iter().map(|w| window_json(w, None)).collect();
            items.push(format!(
                r#"{{"id":{},"projects":[{}],"period":"{period}","spent_usd":{},"reserved_usd":{},"limit_usd":{},"remaining_usd":{},"budgets":[{}]{source}}}"#,
                json_string(&t.id),
                list.join(","),
                usd(spent),
                usd(reserved),
                opt(tight.map(|w| w.limit)),
                opt(tight.map(|w| w.remaining)),
                budgets.join(",")
            ));
        }
        format!(r#"{{"teams":[{}]}}"#, items.join(","))
    }

    /// `GET /admin/users?project=ID[&limit=N][&after=USER]`: the project's end users with
    /// their spend in its `user_budget` window (the calendar month without one), in id order,
    /// paged. Read from this instance's store; a user with a request in flight shows its hold.
    async fn users(&self, cfg: &Config, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(id) = query_param(query, "project") else {
            return error(GatewayError::InvalidRequest(
                "project is required: /admin/users?project=ID".into(),
            ));
        };
        let Some(p) = cfg.project_index(id).map(|i| &cfg.projects[i]) else {
            return error(GatewayError::NotFound(format!("Unknown project {id}")));
        };
        let limit = match query_param(query, "limit").map(str::parse::<usize>) {
            None => 100,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return error(GatewayError::InvalidRequest(
                    "limit must be a number from 1 to 1000".into(),
                ))
            }
        };
        let Some(reader) = self.ledger.reader() else {
            return json(200, r#"{"users":[],"next":null}"#.into());
        };
        let window = p.user_budget;
        let period = window.map_or(Period::Month, |w| w.period);
        let prefix = crate::engine::accounts::ledger_name(AccountKind::User, &p.id, "");
        let after = query_param(query, "after").map(percent_decode);
        let key = period.key(crate::clock::unix_secs());
        let pfx = prefix.clone();
        let res = tokio::task::spawn_blocking(move || {
            reader.spend_with_prefix(&pfx, &key, after.as_deref(), limit)
        })
        .await;
        let rows = match res.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(rows) => rows,
            Err(e) => {
                log::error!("admin users: {e}");
                return error(GatewayError::Internal(
                    "Could not read the end users".into(),
                ));
            }
        };
        // The store lags by a flush; users in memory (a budget makes them so) are read there,
        // with their holds, and merged in id order.
        let mut merged: std::collections::BTreeMap<String, (Nanos, Nanos)> = rows
            .into_iter()
            .map(|(u, n)| (u, (Nanos(n), Nanos::ZERO)))
            .collect();
        if window.is_some() {
            let after = query_param(query, "after").map(percent_decode);
            for (u, spent, reserved) in
                self.ledger
                    .users_with_prefix(&prefix, period, after.as_deref(), limit)
            {
                merged.insert(u, (spent, reserved));
            }
        }
        let page: Vec<(String, (Nanos, Nanos))> = merged.into_iter().take(limit).collect();
        let items: Vec<String> = page
            .iter()
            .map(|(user, (spent, reserved))| {
                let (spent, reserved) = (*spent, *reserved);
                let (limit, remaining) = match window {
                    Some(w) => (
                        usd(w.limit),
                        usd(w.limit.saturating_sub(spent).saturating_sub(reserved)),
                    ),
                    None => ("null".to_string(), "null".to_string()),
                };
                format!(
                    r#"{{"user":{},"period":"{}","spent_usd":{},"reserved_usd":{},"limit_usd":{limit},"remaining_usd":{remaining}}}"#,
                    json_string(user),
                    period.as_str(),
                    usd(spent),
                    usd(reserved)
                )
            })
            .collect();
        let next = page
            .last()
            .filter(|_| page.len() == limit)
            .map_or("null".to_string(), |(u, _)| {
                json_string(&format!("after={}", percent_encode(u)))
            });
        json(
            200,
            format!(r#"{{"users":[{}],"next":{next}}}"#, items.join(",")),
        )
    }

    async fn decisions(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(reader) = self.ledger.reader() else {
            return json(200, r#"{"decisions":[]}"#.into());
        };
        let filter = match reports::decision_filter(query) {
            Ok(f) => f,
            Err(e) => return error(GatewayError::InvalidRequest(e)),
        };
        let project = filter.project.clone();
        let limit = match query_param(query, "limit").map(str::parse::<usize>) {
            None => 50,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return error(GatewayError::InvalidRequest(
                    "limit must be a number from 1 to 1000".into(),
                ))
            }
        };
        // The fleet's stream is filtered by project only: any other filter reads this
        // instance's store.
        let local = query_param(query, "before_ms").is_some()
            || filter
                != DecisionFilter {
                    project: filter.project.clone(),
                    ..Default::default()
                };
        if let (Some(f), false) = (&self.fleet, local) {
            if let Some(page) = self
                .fleet_decisions(
                    f,
                    project.as_deref(),
                    limit,
                    query_param(query, "before_stream"),
                )
                .await
            {
                return json(200, page);
            }
        }
        let before = query_param(query, "before_ms")
            .and_then(|t| t.parse::<i64>().ok())
            .map(|t| (t, query_param(query, "before_id").unwrap_or("").to_string()));
        let res =
            tokio::task::spawn_blocking(move || reader.decisions_where(&filter, limit, before))
                .await;
        match res {
            Ok(Ok(list)) => {
                // In fleet mode (Redis unreadable) these are this instance's own records.
                let instance = self.fleet.as_ref().map(|f| f.instance.as_str());
                let items: Vec<String> =
                    list.iter().map(|d| decision_json_of(d, instance)).collect();
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

/// The admin listener is a plain request → response server, except for the live tail, which
/// writes events for as long as the watcher stays (so it cannot be a `ServeHttp`).
#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!("admin: reading a request failed: {e}");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let req = http.req_header();
        if req.method == http::Method::GET && req.uri.path() == "/admin/decisions/stream" {
            self.stream(http, shutdown.clone()).await;
            return None;
        }
        let (parts, body) = self.response(&mut http).await.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(header)).await {
            log::debug!("admin: writing a response failed: {e}");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                log::debug!("admin: writing a response failed: {e}");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                log::debug!("admin: finishing a response failed: {e}");
                None
            }
        }
    }
}

impl Admin {
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
        if method == "GET" || method == "HEAD" {
            if let Some((content_type, body)) = console::asset(&path) {
                return console_reply(content_type, body);
            }
        }
        if !path.starts_with("/admin/") {
            return error(GatewayError::NotFound(format!("Unknown path {path}")));
        }
        let cfg = self.config.load_full();
        let role = match self.authorized(&cfg, session) {
            Ok(r) => r,
            Err(e) => return error(e),
        };
        if role == Role::Viewer && method != "GET" && method != "HEAD" {
            return read_only();
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["", "admin", "projects"]) => json(200, self.projects(&cfg).await),
            ("GET", ["", "admin", "overview"]) => self.overview(&cfg, role).await,
            ("GET", ["", "admin", "spend"]) => self.spend(query.as_deref()).await,
            ("GET", ["", "admin", "teams"]) => json(200, self.teams(&cfg).await),
            ("GET", ["", "admin", "users"]) => self.users(&cfg, query.as_deref()).await,
            ("GET", ["", "admin", "fleet"]) => match &self.fleet {
                Some(f) => json(200, f.fleet_json().await),
                None => error(GatewayError::NotFound(
                    "Fleet mode is off: this instance has no [fleet] section".into(),
                )),
            },
            ("POST", ["", "admin", "projects", id, action @ ("freeze" | "unfreeze")]) => {
                if cfg.project_index(id).is_none() {
                    return error(GatewayError::NotFound(format!("Unknown project {id}")));
                }
                let frozen = *action == "freeze";
                self.ledger.set_frozen(id, frozen);
                if let Some(s) = crate::handover::successor() {
                    // During an upgrade: the successor admits, so it must hear the freeze.
                    s.freeze(id, frozen);
                }
                log::warn!(
                    "project {id} {}",
                    if frozen { "frozen" } else { "unfrozen" }
                );
                if let Some(f) = &self.fleet {
                    if let Err(e) = f.freeze(id, frozen).await {
                        return error(GatewayError::LedgerUnavailable(format!(
                            "Project {id} is {} on this instance only: {} Retry to apply it to the whole fleet.",
                            if frozen { "frozen" } else { "unfrozen" },
                            e.message()
                        )));
                    }
                }
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
                | ["", "admin", "teams"]
                | ["", "admin", "users"]
                | ["", "admin", "reload"]
                | ["", "admin", "decisions"]
                | ["", "admin", "decisions", "stream"]
                | ["", "admin", "overview"]
                | ["", "admin", "spend"]
                | ["", "admin", "fleet"]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}): {text}"),
        }
    }

    fn record() -> DecisionRecord {
        DecisionRecord {
            id: "req-1".into(),
            time_ms: 1_795_341_600_000,
            project: Some("checkout-bot".into()),
            key_id: Some("a1b2c3d4".into()),
            endpoint: Some("/v1/chat/completions".into()),
            model: Some("gpt-4o-mini".into()),
            provider: Some("openai".into()),
            decision: "allow".into(),
            reason: "ok".into(),
            status: 200,
            prompt_tokens: Some(100),
            completion_tokens: Some(250),
            usage_source: "reported".into(),
            cost_nanos: Some(164_500),
            latency_ms: 12.25,
            stream: false,
            attempts: 1,
            providers_tried: Some("openai".into()),
            overrun_nanos: 0,
            team: Some("payments".into()),
            key_name: Some("ci".into()),
            user: None,
            tags: Some(r#"{"feature":"summarize"}"#.into()),
            cache: None,
            saved_nanos: 0,
        }
    }

    #[test]
    fn a_record_names_team_key_user_and_tags_never_the_key() {
        let v = parse(&decision_json(&record()));
        assert_eq!(v["team"], "payments");
        assert_eq!(v["key_name"], "ci");
        assert!(v["user"].is_null());
        assert_eq!(v["tags"]["feature"], "summarize");
        let mut d = record();
        d.tags = None;
        assert_eq!(parse(&decision_json(&d))["tags"], serde_json::json!({}));
        d.tags = Some("not json".into());
        assert_eq!(
            parse(&decision_json(&d))["tags"],
            serde_json::json!({}),
            "a hand-edited row cannot break the JSON"
        );
    }

    #[test]
    fn a_decisions_cost_keeps_every_nano_dollar() {
        let text = decision_json(&record());
        assert!(
            text.contains(r#""cost_usd":0.0001645,"#),
            "164,500 nanos read 0.0001645, not a rounded 0.000164: {text}"
        );
        assert_eq!(parse(&text)["cost_usd"].as_f64(), Some(0.0001645));
        assert!(
            text.contains(r#""overrun_usd":0.0,"#),
            "no overrun is 0.0: {text}"
        );
    }

    #[test]
    fn an_overrun_shows_as_overrun_usd() {
        let mut d = record();
        d.cost_nanos = Some(1_250_000_001);
        d.overrun_nanos = 250_000_001;
        let text = decision_json(&d);
        assert!(text.contains(r#""cost_usd":1.250000001,"#), "{text}");
        assert!(text.contains(r#""overrun_usd":0.250000001,"#), "{text}");
        parse(&text);
    }

    #[test]
    fn a_blocked_records_usage_is_zero_and_only_unknowns_are_null() {
        let mut d = record();
        d.decision = "block".into();
        d.reason = "secret_detected".into();
        d.status = 403;
        d.provider = None;
        d.prompt_tokens = Some(0);
        d.completion_tokens = Some(0);
        d.usage_source = "none".into();
        d.cost_nanos = Some(0);
        d.attempts = 0;
        d.providers_tried = None;
        let text = decision_json(&d);
        for field in [
            r#""prompt_tokens":0,"#,
            r#""completion_tokens":0,"#,
            r#""cost_usd":0.0,"#,
        ] {
            assert!(text.contains(field), "SPEC example: {field} in {text}");
        }
        let v = parse(&text);
        assert!(v["provider"].is_null() && v["providers_tried"].is_null());

        d.prompt_tokens = None;
        d.completion_tokens = None;
        d.cost_nanos = None;
        let v = parse(&decision_json(&d));
        for field in ["prompt_tokens", "completion_tokens", "cost_usd"] {
            assert!(v[field].is_null(), "an unknown {field} is null, not 0");
        }
    }

    #[test]
    fn a_nan_latency_is_null_so_the_page_stays_json() {
        let mut d = record();
        d.latency_ms = f64::NAN;
        assert!(parse(&decision_json(&d))["latency_ms"].is_null());
        d.latency_ms = 0.4;
        assert_eq!(parse(&decision_json(&d))["latency_ms"].as_f64(), Some(0.4));
    }

    #[test]
    fn project_amounts_keep_the_ledgers_full_precision() {
        let s = ProjectStatus {
            budgets: Vec::new(),
            id: "checkout-bot".into(),
            period: "month",
            spent: Nanos(1_250_164_500),
            reserved: Nanos(20_000_001),
            limit: Some(Nanos(50_000_000_000)),
            remaining: Some(Nanos(48_729_835_499)),
            frozen: false,
        };
        assert_eq!(
            project_json(&s),
            r#"{"id":"checkout-bot","team":null,"period":"month","spent_usd":1.2501645,"reserved_usd":0.020000001,"limit_usd":50.0,"remaining_usd":48.729835499,"frozen":false,"budgets":[]}"#
        );
        let unbudgeted = ProjectStatus {
            spent: Nanos::ZERO,
            reserved: Nanos::ZERO,
            limit: None,
            remaining: None,
            frozen: true,
            ..s
        };
        let v = parse(&project_json(&unbudgeted));
        assert_eq!(v["spent_usd"].as_f64(), Some(0.0));
        assert!(
            v["limit_usd"].is_null() && v["remaining_usd"].is_null(),
            "no budget: no limit, nothing remaining to show"
        );
        assert_eq!(v["frozen"], Value::Bool(true));
    }
}
