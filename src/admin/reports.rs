//! The reports API (SPEC "Console and reports"): `GET /admin/spend` and the console's
//! `GET /admin/overview`, both read from the hourly rollups the store's writer keeps
//! (`crate::ledger::rollups`), never from a scan of the decision records.
//!
//! This module parses the query, folds the rollup rows into what was asked (a tag out of the
//! tags object, days into calendar months) and writes JSON or CSV. Amounts keep the ledger's
//! full nano-dollar precision.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::broadcast::error::RecvError;

use super::{error, json, query_param, reply, Admin, Role};
use crate::engine::admission::percent_decode;
use crate::engine::config::Config;
use crate::engine::error::{json_string, push_json_string, GatewayError};
use crate::engine::pricing::Nanos;
use crate::engine::time::{civil_from_days, days_from_civil, parse_rfc3339, rfc3339_millis};
use crate::ledger::rollups::{Dim, Query, Row, Sums, DAY_MS, HOUR_MS};
use crate::ledger::{DecisionFilter, Reader};

/// One `group_by` field: a rollup column, or one tag of the tags object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Column(Dim, &'static str),
    Tag(String),
}

impl Field {
    fn name(&self) -> String {
        match self {
            Field::Column(_, n) => (*n).to_string(),
            Field::Tag(t) => format!("tag:{t}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
    Month,
}

impl Bucket {
    fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Month => "month",
        }
    }
}

/// A parsed `GET /admin/spend` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub fields: Vec<Field>,
    pub bucket: Option<Bucket>,
    pub project: Option<String>,
    pub csv: bool,
}

fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    super::query_param(query, name)
}

/// `2026-11-22`, or an RFC 3339 date-time, as unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = percent_decode(s);
    let secs = if s.len() == 10 {
        parse_rfc3339(&format!("{s}T00:00:00Z"))?
    } else {
        parse_rfc3339(&s)?
    };
    secs.checked_mul(1000)
}

fn floor_hour(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// The first instant of the calendar month (UTC) `ms` is in.
pub fn month_start(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    days_from_civil(y, m, 1) * DAY_MS
}

/// The first instant of the month after the one `ms` is in.
pub fn next_month_start(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * DAY_MS
}

pub const GROUP_FIELDS: &str = "project, team, model, provider, key, user, tag:NAME";

pub fn parse_spend_query(query: Option<&str>, now_ms: i64) -> Result<SpendQuery, String> {
    let time = |name: &str| -> Result<Option<i64>, String> {
        match param(query, name) {
            None | Some("") => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                format!("{name} must be a date (2026-11-22) or an RFC 3339 time (2026-11-22T10:00:00Z), not {v:?}")
            }),
        }
    };
    let to_ms = time("to")?.unwrap_or(now_ms);
    let from_ms = time("from")?.unwrap_or_else(|| month_start(now_ms));
    // Rollups are hourly: the range grows to whole hours.
    let from_ms = floor_hour(from_ms);
    let to_ms = floor_hour(to_ms.saturating_add(HOUR_MS - 1));
    if from_ms >= to_ms {
        return Err("from must be before to".into());
    }
    let mut fields = Vec::new();
    if let Some(g) = param(query, "group_by") {
        let g = percent_decode(g);
        for f in g.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let field = match f {
                "project" => Field::Column(Dim::Project, "project"),
                "team" => Field::Column(Dim::Team, "team"),
                "model" => Field::Column(Dim::Model, "model"),
                "provider" => Field::Column(Dim::Provider, "provider"),
                "key" => Field::Column(Dim::Key, "key"),
                "user" => Field::Column(Dim::User, "user"),
                _ => match f.strip_prefix("tag:") {
                    Some(t) if !t.is_empty() => Field::Tag(t.to_string()),
                    _ => {
                        return Err(format!(
                            "group_by: unknown field {f:?}; use any of {GROUP_FIELDS}"
                        ))
                    }
                },
            };
            if fields.contains(&field) {
                return Err(format!("group_by: {f} is named twice"));
            }
            fields.push(field);
        }
    }
    let bucket = match param(query, "bucket") {
        None | Some("") | Some("none") => None,
        Some("hour") => Some(Bucket::Hour),
        Some("day") => Some(Bucket::Day),
        Some("month") => Some(Bucket::Month),
        Some(b) => {
            return Err(format!(
                "bucket must be hour, day, month or none, not {b:?}"
            ))
        }
    };
    if bucket == Some(Bucket::Hour) && (to_ms - from_ms) / HOUR_MS > 24 * 366 {
        return Err("bucket=hour covers at most a year: narrow from/to".into());
    }
    let csv = match param(query, "format") {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(f) => return Err(format!("format must be json or csv, not {f:?}")),
    };
    Ok(SpendQuery {
        from_ms,
        to_ms,
        fields,
        bucket,
        project: param(query, "project").map(percent_decode),
        csv,
    })
}

/// A report row: the values of the query's fields (in its order), the bucket, the sums.
pub type ReportRow = (Vec<Option<String>>, Option<i64>, Sums);

/// One tag's value out of a tags object: a string as is, anything else as its JSON text.
fn tag_value(tags: Option<&str>, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(tags?).ok()?;
    match v.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Reads and folds the rollups for `q` (blocking: call from the blocking pool).
pub fn spend(reader: &Reader, q: &SpendQuery) -> Result<Vec<ReportRow>, String> {
    let mut dims: Vec<Dim> = q
        .fields
        .iter()
        .filter_map(|f| match f {
            Field::Column(d, _) => Some(*d),
            Field::Tag(_) => None,
        })
        .collect();
    let tags_at = q
        .fields
        .iter()
        .any(|f| matches!(f, Field::Tag(_)))
        .then(|| {
            dims.push(Dim::Tags);
            dims.len() - 1
        });
    let rows = reader.rollups(&Query {
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        dims: &dims,
        bucket_ms: q
            .bucket
            .map(|b| if b == Bucket::Hour { HOUR_MS } else { DAY_MS }),
        project: q.project.as_deref(),
    })?;
    Ok(fold(q, rows, tags_at))
}

fn fold(q: &SpendQuery, rows: Vec<Row>, tags_at: Option<usize>) -> Vec<ReportRow> {
    let mut out: BTreeMap<(Option<i64>, Vec<Option<String>>), Sums> = BTreeMap::new();
    for r in rows {
        let mut cols = 0;
        let values: Vec<Option<String>> = q
            .fields
            .iter()
            .map(|f| match f {
                Field::Column(..) => {
                    cols += 1;
                    r.dims[cols - 1].clone()
                }
                Field::Tag(name) => tag_value(tags_at.and_then(|i| r.dims[i].as_deref()), name),
            })
            .collect();
        let bucket = match q.bucket {
            Some(Bucket::Month) => r.bucket_ms.map(month_start),
            _ => r.bucket_ms,
        };
        out.entry((bucket, values)).or_default().add(&r.sums);
    }
    out.into_iter()
        .map(|((bucket, values), sums)| (values, bucket, sums))
        .collect()
}

fn usd(n: u64) -> String {
    Nanos(n).usd_exact()
}

/// The sums as JSON members (after a `{` or a `,`), without braces.
pub fn push_sums(o: &mut String, s: &Sums) {
    let _ = write!(
        o,
        r#""requests":{},"allowed":{},"blocked":{},"errors":{},"prompt_tokens":{},"completion_tokens":{},"cost_usd":{},"saved_usd":{}"#,
        s.requests,
        s.requests.saturating_sub(s.blocked),
        s.blocked,
        s.errors,
        s.prompt_tokens,
        s.completion_tokens,
        usd(s.cost_nanos),
        usd(s.saved_nanos)
    );
}

/// RFC 3339 without milliseconds for a bucket or range bound (they are whole hours).
fn instant(ms: i64) -> String {
    let t = rfc3339_millis(ms);
    match t.strip_suffix(".000Z") {
        Some(s) => format!("{s}Z"),
        None => t,
    }
}

pub fn spend_json(q: &SpendQuery, rows: &[ReportRow]) -> String {
    let mut o = String::with_capacity(128 + rows.len() * 200);
    let _ = write!(
        o,
        r#"{{"from":"{}","to":"{}","group_by":["#,
        instant(q.from_ms),
        instant(q.to_ms)
    );
    for (i, f) in q.fields.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        push_json_string(&mut o, &f.name());
    }
    o.push_str(r#"],"bucket":"#);
    match q.bucket {
        Some(b) => {
            let _ = write!(o, r#""{}""#, b.as_str());
        }
        None => o.push_str("null"),
    }
    o.push_str(r#","rows":["#);
    let mut totals = Sums::default();
    for (i, (values, bucket, sums)) in rows.iter().enumerate() {
        totals.add(sums);
        if i > 0 {
            o.push(',');
        }
        o.push('{');
        for (f, v) in q.fields.iter().zip(values) {
            push_json_string(&mut o, &f.name());
            o.push(':');
            match v {
                Some(v) => push_json_string(&mut o, v),
                None => o.push_str("null"),
            }
            o.push(',');
        }
        if let Some(b) = bucket {
            let _ = write!(o, r#""bucket":"{}","#, instant(*b));
        }
        push_sums(&mut o, sums);
        o.push('}');
    }
    o.push_str(r#"],"totals":{"#);
    push_sums(&mut o, &totals);
    o.push_str("}}");
    o
}

/// A CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line break. A value a
/// spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage
/// return; user and tag values come from clients) gets a leading `'` and quotes, as OWASP
/// advises against CSV injection, so opening the file runs nothing.
fn cell(o: &mut String, v: &str) {
    let formula = v.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || v.contains([',', '"', '\n', '\r']) {
        o.push('"');
        if formula {
            o.push('\'');
        }
        o.push_str(&v.replace('"', "\"\""));
        o.push('"');
    } else {
        o.push_str(v);
    }
}

pub fn spend_csv(q: &SpendQuery, rows: &[ReportRow]) -> String {
    let mut o = String::with_capacity(128 + rows.len() * 120);
    for f in &q.fields {
        cell(&mut o, &f.name());
        o.push(',');
    }
    if q.bucket.is_some() {
        o.push_str("bucket,");
    }
    o.push_str(
        "requests,allowed,blocked,errors,prompt_tokens,completion_tokens,cost_usd,saved_usd\r\n",
    );
    for (values, bucket, s) in rows {
        for v in values {
            cell(&mut o, v.as_deref().unwrap_or(""));
            o.push(',');
        }
        if let Some(b) = bucket {
            o.push_str(&instant(*b));
            o.push(',');
        }
        let _ = write!(
            o,
            "{},{},{},{},{},{},{},{}\r\n",
            s.requests,
            s.requests.saturating_sub(s.blocked),
            s.blocked,
            s.errors,
            s.prompt_tokens,
            s.completion_tokens,
            usd(s.cost_nanos),
            usd(s.saved_nanos)
        );
    }
    o
}

/// What the overview reads from the rollups, in one blocking call.
pub struct OverviewData {
    /// The last 24 hours, oldest first, zeros included: (hour start, sums).
    pub hourly: Vec<(i64, Sums)>,
    pub top_reasons: Vec<(String, u64)>,
    pub tags: Vec<String>,
    /// This calendar month's spend per project (nano-dollars).
    pub month: BTreeMap<String, u64>,
}

pub fn overview_data(reader: &Reader, now_ms: i64) -> Result<OverviewData, String> {
    let this_hour = floor_hour(now_ms);
    let from = this_hour - 23 * HOUR_MS;
    let to = this_hour + HOUR_MS;
    let rows = reader.rollups(&Query {
        from_ms: from,
        to_ms: to,
        dims: &[],
        bucket_ms: Some(HOUR_MS),
        project: None,
    })?;
    let by_hour: BTreeMap<i64, Sums> = rows
        .into_iter()
        .filter_map(|r| Some((r.bucket_ms?, r.sums)))
        .collect();
    let hourly = (0..24)
        .map(|i| {
            let h = from + i * HOUR_MS;
            (h, by_hour.get(&h).copied().unwrap_or_default())
        })
        .collect();
    let mut top_reasons: Vec<(String, u64)> = reader
        .rollups(&Query {
            from_ms: from,
            to_ms: to,
            dims: &[Dim::Decision, Dim::Reason],
            bucket_ms: None,
            project: None,
        })?
        .into_iter()
        .filter(|r| r.dims.first().and_then(|d| d.as_deref()) == Some("block"))
        .filter_map(|r| Some((r.dims.get(1)?.clone()?, r.sums.requests)))
        .collect();
    top_reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_reasons.truncate(10);
    let mut names = BTreeSet::new();
    for t in reader.rollup_tags(to - 30 * DAY_MS, to, 10_000)? {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&t) {
            names.extend(m.keys().cloned());
        }
        if names.len() >= 100 {
            break;
        }
    }
    Ok(OverviewData {
        hourly,
        top_reasons,
        tags: names.into_iter().take(100).collect(),
        month: month_by_project(reader, now_ms)?,
    })
}

/// This calendar month's spend per project, from the rollups.
pub fn month_by_project(reader: &Reader, now_ms: i64) -> Result<BTreeMap<String, u64>, String> {
    Ok(reader
        .rollups(&Query {
            from_ms: month_start(now_ms),
            to_ms: floor_hour(now_ms) + HOUR_MS,
            dims: &[Dim::Project],
            bucket_ms: None,
            project: None,
        })?
        .into_iter()
        .filter_map(|r| Some((r.dims.first()?.clone()?, r.sums.cost_nanos)))
        .collect())
}

/// The month's spend at month end if the pace since the month began holds (at least an hour
/// of the month counts as elapsed, so the first minutes do not project a fortune).
pub fn projection(spent_nanos: u64, now_ms: i64) -> Nanos {
    let start = month_start(now_ms);
    let len = (next_month_start(now_ms) - start).max(1) as u128;
    let elapsed = (now_ms - start).clamp(HOUR_MS, len as i64) as u128;
    let p = u128::from(spent_nanos) * len / elapsed;
    Nanos(u64::try_from(p).unwrap_or(u64::MAX))
}

pub fn overview_json_parts(d: &OverviewData) -> String {
    let mut o = String::with_capacity(4096);
    let mut day = Sums::default();
    for (_, s) in &d.hourly {
        day.add(s);
    }
    let hour = d.hourly.last().map(|h| h.1).unwrap_or_default();
    o.push_str(r#""totals":{"hour":{"#);
    push_sums(&mut o, &hour);
    o.push_str(r#"},"day":{"#);
    push_sums(&mut o, &day);
    o.push_str(r#"}},"hourly":["#);
    for (i, (h, s)) in d.hourly.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(o, r#"{{"bucket":"{}","#, instant(*h));
        push_sums(&mut o, s);
        o.push('}');
    }
    o.push_str(r#"],"top_reasons":["#);
    for (i, (r, n)) in d.top_reasons.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(o, r#"{{"reason":{},"count":{n}}}"#, json_string(r));
    }
    o.push_str(r#"],"tags":["#);
    for (i, t) in d.tags.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        push_json_string(&mut o, t);
    }
    o.push(']');
    o
}

// ---- the handlers (the shell around the functions above) ----

/// How often the live tail writes a comment when nothing happens, so proxies keep the
/// connection and a gone watcher is noticed.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Writes a whole response; `false` if the client is gone.
async fn write_whole(http: &mut ServerSession, r: Response<Vec<u8>>) -> bool {
    let (parts, body) = r.into_parts();
    let header: ResponseHeader = parts.into();
    http.write_response_header(Box::new(header)).await.is_ok()
        && http.write_response_body(body.into(), true).await.is_ok()
}

impl Admin {
    /// Runs a blocking store read on the blocking pool; `None` without a store.
    async fn read<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Reader) -> Result<T, String> + Send + 'static,
    ) -> Result<Option<T>, GatewayError> {
        let Some(reader) = self.ledger.reader() else {
            return Ok(None);
        };
        let res = tokio::task::spawn_blocking(move || f(&reader)).await;
        match res.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                log::error!("admin {what}: {e}");
                Err(GatewayError::Internal(format!("Could not read the {what}")))
            }
        }
    }

    /// This calendar month's spend per project (for the projections), empty without a store.
    pub(super) async fn month_spend(&self, now_ms: i64) -> BTreeMap<String, u64> {
        self.read("rollups", move |r| month_by_project(r, now_ms))
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// `GET /admin/spend`.
    pub(super) async fn spend(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let q = match parse_spend_query(query, crate::clock::unix_ms()) {
            Ok(q) => q,
            Err(e) => return error(GatewayError::InvalidRequest(e)),
        };
        let q2 = q.clone();
        let rows = match self.read("spend report", move |r| spend(r, &q2)).await {
            Ok(rows) => rows.unwrap_or_default(),
            Err(e) => return error(e),
        };
        if q.csv {
            reply(
                200,
                "text/csv; charset=utf-8",
                spend_csv(&q, &rows).into_bytes(),
            )
        } else {
            json(200, spend_json(&q, &rows))
        }
    }

    /// `GET /admin/overview`: everything the console's first view shows, in one answer.
    pub(super) async fn overview(&self, cfg: &Config, role: Role) -> Response<Vec<u8>> {
        let now = crate::clock::unix_ms();
        let data = match self.read("overview", move |r| overview_data(r, now)).await {
            Ok(Some(d)) => d,
            Ok(None) => OverviewData {
                hourly: (0..24)
                    .map(|i| (floor_hour(now) - (23 - i) * HOUR_MS, Sums::default()))
                    .collect(),
                top_reasons: Vec::new(),
                tags: Vec::new(),
                month: BTreeMap::new(),
            },
            Err(e) => return error(e),
        };
        let projects = self.projects_with(cfg, &data.month, now).await;
        let fleet = match &self.fleet {
            Some(f) => f.fleet_json().await,
            None => "null".to_string(),
        };
        let instance = self
            .fleet
            .as_ref()
            .map_or("null".to_string(), |f| json_string(&f.instance));
        json(
            200,
            format!(
                r#"{{"role":"{}","now":"{}","instance":{instance},{},"projects":{projects},"providers":{},"fleet":{fleet}}}"#,
                role.as_str(),
                rfc3339_millis(now),
                overview_json_parts(&data),
                super::providers_json(cfg),
            ),
        )
    }

    /// `GET /admin/decisions/stream[?project=ID]`: the live tail, as server-sent events, until
    /// the watcher leaves or the gateway stops.
    pub(super) async fn stream(self: &Arc<Self>, mut http: ServerSession, mut stop: ShutdownWatch) {
        http.set_keepalive(None);
        let cfg = self.config.load_full();
        if let Err(e) = self.authorized(&cfg, &http) {
            write_whole(&mut http, error(e)).await;
            return;
        }
        let query = http.req_header().uri.query().map(str::to_string);
        let project = query_param(query.as_deref(), "project").map(percent_decode);
        if let Some(p) = &project {
            if cfg.project_index(p).is_none() {
                let e = GatewayError::NotFound(format!("Unknown project {p}"));
                write_whole(&mut http, error(e)).await;
                return;
            }
        }
        let mut watch = self.ledger.tail.watch();
        let mut h = ResponseHeader::build(200, Some(4)).ok();
        if let Some(h) = &mut h {
            let _ = h.insert_header("content-type", "text/event-stream");
            let _ = h.insert_header("cache-control", "no-store");
            let _ = h.insert_header("transfer-encoding", "chunked");
            let _ = h.insert_header("x-accel-buffering", "no");
        }
        let Some(h) = h else { return };
        if http.write_response_header(Box::new(h)).await.is_err()
            || http
                .write_response_body(Bytes::from_static(b": connected\n\n"), false)
                .await
                .is_err()
        {
            return;
        }
        let instance = self.fleet.as_ref().map(|f| f.instance.clone());
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        loop {
            let out: Option<String> = tokio::select! {
                r = watch.rx.recv() => match r {
                    Ok(d) => {
                        if project.is_some() && d.project != project {
                            continue;
                        }
                        let mut line = String::with_capacity(600);
                        line.push_str("event: decision\ndata: ");
                        line.push_str(&super::decision_json_of(&d, instance.as_deref()));
                        line.push_str("\n\n");
                        Some(line)
                    }
                    Err(RecvError::Lagged(n)) => Some(format!(": {n} records were skipped: this watcher fell behind\n\n")),
                    Err(RecvError::Closed) => None,
                },
                _ = tick.tick() => Some(": keepalive\n\n".to_string()),
                _ = stop.changed() => None,
            };
            let Some(out) = out else { break };
            if http
                .write_response_body(Bytes::from(out), false)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = http.write_response_body(Bytes::new(), true).await;
    }
}

/// The decision-log filters of `GET /admin/decisions` (besides `project`, `limit` and the
/// cursor): `Ok(None)` when none is given.
pub fn decision_filter(query: Option<&str>) -> Result<DecisionFilter, String> {
    let text = |name: &str| {
        param(query, name)
            .filter(|v| !v.is_empty())
            .map(percent_decode)
    };
    let time = |name: &str| -> Result<Option<i64>, String> {
        match param(query, name) {
            None | Some("") => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                format!("{name} must be a date (2026-11-22) or an RFC 3339 time, not {v:?}")
            }),
        }
    };
    let tag = match text("tag") {
        None => None,
        Some(t) => match t.split_once(':') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            _ => return Err(format!("tag must be NAME:VALUE, not {t:?}")),
        },
    };
    let decision = text("decision");
    if let Some(d) = &decision {
        if d != "allow" && d != "block" {
            return Err(format!("decision must be allow or block, not {d:?}"));
        }
    }
    Ok(DecisionFilter {
        project: text("project"),
        decision,
        reason: text("reason"),
        model: text("model"),
        user: text("user"),
        tag,
        from_ms: time("from")?,
        to_ms: time("to")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:30:00Z
    const NOW: i64 = 1_795_343_400_000;

    #[test]
    fn defaults_are_this_month_to_now_rounded_out_to_whole_hours() {
        let q = parse_spend_query(None, NOW).unwrap();
        assert_eq!(instant(q.from_ms), "2026-11-01T00:00:00Z");
        assert_eq!(instant(q.to_ms), "2026-11-22T11:00:00Z");
        assert!(q.fields.is_empty() && q.bucket.is_none() && !q.csv);
    }

    #[test]
    fn fields_buckets_dates_and_times_parse() {
        let q = parse_spend_query(
            Some("from=2026-11-01&to=2026-11-02T05:10:00Z&group_by=project,tag:env,key&bucket=month&format=csv"),
            NOW,
        )
        .unwrap();
        assert_eq!(instant(q.from_ms), "2026-11-01T00:00:00Z");
        assert_eq!(instant(q.to_ms), "2026-11-02T06:00:00Z");
        assert_eq!(
            q.fields.iter().map(Field::name).collect::<Vec<_>>(),
            ["project", "tag:env", "key"]
        );
        assert_eq!(q.bucket, Some(Bucket::Month));
        assert!(q.csv);
    }

    #[test]
    fn bad_parameters_are_named_in_the_error() {
        for (q, needle) in [
            ("group_by=color", "unknown field \"color\""),
            ("group_by=model,model", "named twice"),
            ("group_by=tag:", "unknown field"),
            ("bucket=week", "bucket must be"),
            ("from=yesterday", "from must be a date"),
            ("to=2026-13-01", "to must be a date"),
            ("from=2026-11-03&to=2026-11-02", "from must be before to"),
            ("format=xml", "format must be"),
            (
                "from=2020-01-01&to=2026-01-01&bucket=hour",
                "at most a year",
            ),
        ] {
            let e = parse_spend_query(Some(q), NOW).unwrap_err();
            assert!(e.contains(needle), "{q}: {e}");
        }
    }

    #[test]
    fn months_fold_from_days_and_tags_from_the_tags_object() {
        let q = parse_spend_query(Some("group_by=tag:env&bucket=month"), NOW).unwrap();
        let day = |d: i64| days_from_civil(2026, 11, 1) * DAY_MS + d * DAY_MS;
        let s = |n: u64| Sums {
            requests: 1,
            cost_nanos: n,
            ..Default::default()
        };
        let rows = vec![
            Row {
                dims: vec![Some(r#"{"env":"prod","x":"1"}"#.into())],
                bucket_ms: Some(day(0)),
                sums: s(5),
            },
            Row {
                dims: vec![Some(r#"{"env":"prod","x":"2"}"#.into())],
                bucket_ms: Some(day(3)),
                sums: s(7),
            },
            Row {
                dims: vec![None],
                bucket_ms: Some(day(3)),
                sums: s(11),
            },
        ];
        let out = fold(&q, rows, Some(0));
        assert_eq!(
            out,
            vec![
                (vec![None], Some(day(0)), s(11)),
                (
                    vec![Some("prod".into())],
                    Some(day(0)),
                    Sums {
                        requests: 2,
                        cost_nanos: 12,
                        ..Default::default()
                    }
                ),
            ]
        );
    }

    #[test]
    fn json_and_csv_carry_the_same_rows_with_full_precision() {
        let q = parse_spend_query(Some("group_by=project,user&bucket=day"), NOW).unwrap();
        let rows = vec![(
            vec![Some("a".into()), Some("x,\"y\"".into())],
            Some(days_from_civil(2026, 11, 22) * DAY_MS),
            Sums {
                requests: 3,
                blocked: 1,
                cost_nanos: 164_500,
                ..Default::default()
            },
        )];
        let j: serde_json::Value = serde_json::from_str(&spend_json(&q, &rows)).unwrap();
        assert_eq!(j["rows"][0]["project"], "a");
        assert_eq!(j["rows"][0]["user"], "x,\"y\"");
        assert_eq!(j["rows"][0]["bucket"], "2026-11-22T00:00:00Z");
        assert_eq!(j["rows"][0]["allowed"], 2);
        assert_eq!(j["rows"][0]["cost_usd"].to_string(), "0.0001645");
        assert_eq!(j["totals"]["requests"], 3);
        let csv = spend_csv(&q, &rows);
        assert_eq!(
            csv,
            "project,user,bucket,requests,allowed,blocked,errors,prompt_tokens,completion_tokens,cost_usd,saved_usd\r\n\
             a,\"x,\"\"y\"\"\",2026-11-22T00:00:00Z,3,2,1,0,0,0,0.0001645,0.0\r\n"
        );
    }

    #[test]
    fn a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_escaped_and_json_keeps_it() {
        let q = parse_spend_query(Some("group_by=user"), NOW).unwrap();
        let users = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "a=b",
            "plain",
        ];
        let rows: Vec<ReportRow> = users
            .iter()
            .map(|u| (vec![Some(u.to_string())], None, Sums::default()))
            .collect();
        let csv = spend_csv(&q, &rows);
        let cells: Vec<&str> = csv
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.rsplitn(9, ',').last().unwrap_or_default())
            .collect();
        assert_eq!(
            cells,
            [
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
                "\"'+1\"",
                "\"'-2\"",
                "\"'@SUM(A1)\"",
                "\"'\tx\"",
                "\"'\rx\"",
                "a=b",
                "plain",
            ]
        );
        let j: serde_json::Value = serde_json::from_str(&spend_json(&q, &rows)).unwrap();
        assert_eq!(j["rows"][0]["user"], users[0]);
        assert_eq!(j["rows"][2]["user"], "-2");
    }

    #[test]
    fn a_projection_scales_the_month_so_far_to_its_length() {
        // Nov 22 10:30 of a 30-day month: 21.4375 days elapsed.
        let p = projection(21_437_500, NOW);
        assert_eq!(p, Nanos(30_000_000));
        // Five minutes into the month counts as an hour.
        let early = month_start(NOW) + 5 * 60_000;
        assert_eq!(projection(1_000, early), Nanos(1_000 * 720));
    }
}
