//! Prometheus metrics with the SPEC's names. Cardinality is bounded by construction: label
//! values come from the config (project ids, provider names, priced model keys) or from fixed
//! sets (status codes, reason codes, decision, kind, usage source); anything else becomes
//! `other`, so no client can create series by sending random model names.

use once_cell::sync::Lazy;
use prometheus::{
    register_counter_vec, register_gauge, register_gauge_vec, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    CounterVec, Encoder, Gauge, GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};

use crate::ledger::store::StoreStats;

/// LLM latencies run from milliseconds (a block, a cache hit) to minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0,
];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub decisions: IntCounterVec,
    pub tokens: IntCounterVec,
    pub spend: CounterVec,
    pub budget_remaining: GaugeVec,
    pub budget_limit: GaugeVec,
    pub budget_reserved: GaugeVec,
    pub request_duration: HistogramVec,
    pub first_byte: HistogramVec,
    pub reloads: IntCounterVec,
    pub in_flight: IntGauge,
    pub usage_source: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub store_queued: IntGauge,
    pub store_flush_lag: Gauge,
    pub store_flush_errors: IntCounter,
    pub store_lost_writes: IntCounter,
    pub access_log_dropped: IntCounter,
    pub upstream_attempts: IntCounterVec,
    pub provider_up: IntGaugeVec,
    pub reservation_overruns: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_saved: CounterVec,
    pub cache_bytes: IntGauge,
}

/// Fleet mode's families, registered only when a `[fleet]` section starts the fleet, so a
/// single instance exports no `tollgate_fleet_*` series (a 0 there would read as an outage).
pub struct FleetMetrics {
    pub redis_up: IntGauge,
    pub roundtrip: HistogramVec,
}

static FLEET: Lazy<Option<FleetMetrics>> = Lazy::new(|| {
    let build = || -> Result<FleetMetrics, prometheus::Error> {
        Ok(FleetMetrics {
            redis_up: register_int_gauge!(
                "tollgate_fleet_redis_up",
                "Fleet mode: 1 while this instance reaches the shared Redis and has joined its generation, else 0"
            )?,
            roundtrip: register_histogram_vec!(
                "tollgate_fleet_roundtrip_seconds",
                "Fleet mode: Redis round trips by operation (reserve/settle/lease/freeze/status/heartbeat/join/stream/read/reap)",
                &["op"],
                ROUNDTRIP_BUCKETS.to_vec()
            )?,
        })
    };
    match build() {
        Ok(m) => Some(m),
        Err(e) => {
            log::error!("fleet metrics could not be registered: {e}");
            None
        }
    }
});

/// The fleet's metric families (registering them on first use), or `None`.
pub fn fleet() -> Option<&'static FleetMetrics> {
    FLEET.as_ref()
}

/// Redis round trips: tens of microseconds on loopback, a millisecond across a network, and
/// the call deadline (20 ms by default) at worst.
const ROUNDTRIP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// The families, registered on first use. Registration fails only on a duplicate or malformed
/// name, a programming error that the unit tests catch; should it ever happen in a running
/// process, it is logged once and the gateway serves traffic without metrics instead of
/// panicking on a request (the first touch is a request's context).
static METRICS: Lazy<Option<Metrics>> = Lazy::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        log::error!("metrics could not be registered, serving without them: {e}");
        None
    }
});

/// The metric families, or `None` if they could not be registered.
pub fn get() -> Option<&'static Metrics> {
    METRICS.as_ref()
}

fn build() -> Result<Metrics, prometheus::Error> {
    Ok(Metrics {
    requests: register_int_counter_vec!(
        "tollgate_requests_total",
        "Requests answered, by project, model and HTTP status",
        &["project", "model", "status"]
    )?,
    decisions: register_int_counter_vec!(
        "tollgate_decisions_total",
        "Admission decisions, by project, decision (allow/block) and reason",
        &["project", "decision", "reason"]
    )?,
    tokens: register_int_counter_vec!(
        "tollgate_tokens_total",
        "Tokens charged, by project, model and kind (prompt/completion)",
        &["project", "model", "kind"]
    )?,
    spend: register_counter_vec!(
        "tollgate_spend_usd_total",
        "Money charged in US dollars, by project and model",
        &["project", "model"]
    )?,
    budget_remaining: register_gauge_vec!(
        "tollgate_budget_remaining_usd",
        "Budget left in the current period (limit - spent - reserved)",
        &["project"]
    )?,
    budget_limit: register_gauge_vec!(
        "tollgate_budget_limit_usd",
        "The budget of the current period (limit_usd), for ratios with the remaining budget",
        &["project"]
    )?,
    budget_reserved: register_gauge_vec!(
        "tollgate_budget_reserved_usd",
        "Worst cases held for requests in flight, per project (all projects, budgeted or not)",
        &["project"]
    )?,
    request_duration: register_histogram_vec!(
        "tollgate_request_duration_seconds",
        "Time from request to the end of the response, by provider",
        &["provider"],
        LATENCY_BUCKETS.to_vec()
    )?,
    first_byte: register_histogram_vec!(
        "tollgate_upstream_first_byte_seconds",
        "Time from request to the provider's response header, by provider",
        &["provider"],
        LATENCY_BUCKETS.to_vec()
    )?,
    reloads: register_int_counter_vec!(
        "tollgate_config_reloads_total",
        "Configuration reloads by result (ok/error)",
        &["result"]
    )?,
    in_flight: register_int_gauge!("tollgate_requests_in_flight", "Requests being handled now")?,
    usage_source: register_int_counter_vec!(
        "tollgate_usage_source_total",
        "Finished requests by where their token counts came from (reported/estimated/none)",
        &["project", "source"]
    )?,
    upstream_errors: register_int_counter_vec!(
        "tollgate_upstream_errors_total",
        "Upstream failures answered by Tollgate, by provider and reason",
        &["provider", "reason"]
    )?,
    store_queued: register_int_gauge!(
        "tollgate_store_queued_writes",
        "Ledger writes (spend, freezes, decisions) waiting to be committed to the store"
    )?,
    store_flush_lag: register_gauge!(
        "tollgate_store_flush_lag_seconds",
        "How long ledger writes have been waiting without a successful commit (0 when none wait)"
    )?,
    store_flush_errors: register_int_counter!(
        "tollgate_store_flush_errors_total",
        "Store transactions that failed (each is retried)"
    )?,
    store_lost_writes: register_int_counter!(
        "tollgate_store_lost_writes_total",
        "Ledger writes that never reached the store (writer gone, or discarded after failures)"
    )?,
    access_log_dropped: register_int_counter!(
        "tollgate_access_log_dropped_total",
        "Access-log lines dropped because stderr could not keep up (the queue was full); the decision records are not affected"
    )?,
    upstream_attempts: register_int_counter_vec!(
        "tollgate_upstream_attempts_total",
        "Attempts at a provider, by provider and outcome (ok/connect_error/timeout/status_5xx/status_429/broken)",
        &["provider", "outcome"]
    )?,
    provider_up: register_int_gauge_vec!(
        "tollgate_provider_up",
        "1 while a provider's circuit is closed or half-open, 0 while it is open",
        &["provider"]
    )?,
    reservation_overruns: register_int_counter_vec!(
        "tollgate_reservation_overruns_total",
        "Requests whose reported cost exceeded the worst case reserved for them (the truth is charged)",
        &["project"]
    )?,
    cache_lookups: register_int_counter_vec!(
        "tollgate_cache_lookups_total",
        "Response cache lookups of projects with a cache, by result (hit, miss, skip)",
        &["project", "result"]
    )?,
    cache_saved: register_counter_vec!(
        "tollgate_cache_saved_usd_total",
        "What cache hits saved: the cost of the stored answers served again",
        &["project"]
    )?,
    cache_bytes: register_int_gauge!(
        "tollgate_cache_bytes",
        "Bytes the response cache holds on this instance"
    )?,
})
}

/// Tracks how long the store has had writes waiting without a commit, from periodic samples
/// of [`StoreStats`].
#[derive(Debug, Default)]
pub struct FlushLag {
    backlog_seen_ms: Option<i64>,
}

impl FlushLag {
    /// The lag in seconds at `now_ms`: 0 when nothing is queued; otherwise the time since the
    /// later of the last successful commit and the first sample that saw the backlog. An idle
    /// store therefore shows 0, not the age of its last commit.
    pub fn update(&mut self, queued: u64, last_flush_ms: i64, now_ms: i64) -> f64 {
        if queued == 0 {
            self.backlog_seen_ms = None;
            return 0.0;
        }
        let seen = *self.backlog_seen_ms.get_or_insert(now_ms);
        (now_ms - seen.max(last_flush_ms)).max(0) as f64 / 1000.0
    }
}

/// Publish `tollgate_budget_remaining_usd` and `tollgate_budget_limit_usd` for every project
/// with a budget, so idle projects, a fresh start and a new period show a value too (requests
/// also set the remaining budget as they finish), and drop the series of projects that no
/// longer have a budget after a reload.
pub fn publish_budgets(
    cfg: &crate::engine::config::Config,
    ledger: &crate::ledger::Ledger,
    published: &mut std::collections::HashSet<String>,
) {
    let Some(m) = get() else { return };
    let (remaining, limit) = (&m.budget_remaining, &m.budget_limit);
    for p in &cfg.projects {
        let reserved = ledger.status(p).reserved;
        m.budget_reserved
            .with_label_values(&[p.id.as_str()])
            .set(reserved.as_usd());
    }
    let mut now = std::collections::HashSet::new();
    for p in cfg.projects.iter().filter(|p| !p.budgets.is_empty()) {
        let s = ledger.status(p);
        if let (Some(rem), Some(lim)) = (s.remaining, s.limit) {
            remaining
                .with_label_values(&[p.id.as_str()])
                .set(rem.as_usd());
            limit.with_label_values(&[p.id.as_str()]).set(lim.as_usd());
            now.insert(p.id.clone());
        }
    }
    for gone in published.difference(&now) {
        let _ = remaining.remove_label_values(&[gone.as_str()]);
        let _ = limit.remove_label_values(&[gone.as_str()]);
        if cfg.project_index(gone).is_none() {
            let _ = m.budget_reserved.remove_label_values(&[gone.as_str()]);
        }
    }
    *published = now;
}

/// Publish a sample of the store's counters (called periodically by the control service).
pub fn observe_store(stats: &StoreStats, lag: &mut FlushLag, now_ms: i64) {
    let Some(m) = get() else { return };
    m.store_queued
        .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
    m.store_flush_lag
        .set(lag.update(stats.queued, stats.last_flush_ms, now_ms));
    let raise = |c: &IntCounter, to: u64| {
        let cur = c.get();
        if to > cur {
            c.inc_by(to - cur);
        }
    };
    raise(&m.store_flush_errors, stats.flush_errors);
    raise(
        &m.store_lost_writes,
        stats.dropped.saturating_add(stats.failed),
    );
}

/// The series every finished request of one project and model touches, resolved once per
/// worker thread and config: `with_label_values` hashes its labels and takes the family's
/// read lock (shared by every thread) each time; a request finds these in its thread's own
/// table instead. Each is the same series `with_label_values` gives (a handle to it).
pub struct PairHandles {
    /// `tollgate_requests_total` by status label.
    requests: Vec<(&'static str, IntCounter)>,
    /// `tollgate_decisions_total{decision="allow",reason="ok"}`.
    allowed: Option<IntCounter>,
    /// `tollgate_usage_source_total` by source.
    sources: Vec<(&'static str, IntCounter)>,
    prompt_tokens: Option<IntCounter>,
    completion_tokens: Option<IntCounter>,
    spend: Option<prometheus::Counter>,
    project: Box<str>,
    model: Box<str>,
}

/// A series is made when it is first counted, as `with_label_values` makes it: a pair's
/// handles never add a series at zero that the request would not have added.
impl PairHandles {
    fn new(project: &str, model: &str) -> PairHandles {
        PairHandles {
            requests: Vec::new(),
            allowed: None,
            sources: Vec::new(),
            prompt_tokens: None,
            completion_tokens: None,
            spend: None,
            project: project.into(),
            model: model.into(),
        }
    }

    /// `tollgate_requests_total{status}` of this pair.
    pub fn requests(&mut self, m: &Metrics, status: &'static str) -> &IntCounter {
        let (project, model) = (&self.project, &self.model);
        labelled(&mut self.requests, status, || {
            m.requests.with_label_values(&[project, model, status])
        })
    }

    /// `tollgate_usage_source_total{source}` of this pair's project.
    pub fn source(&mut self, m: &Metrics, source: &'static str) -> &IntCounter {
        let project = &self.project;
        labelled(&mut self.sources, source, || {
            m.usage_source.with_label_values(&[project, source])
        })
    }

    pub fn allowed(&mut self, m: &Metrics) -> &IntCounter {
        let project = &self.project;
        self.allowed
            .get_or_insert_with(|| m.decisions.with_label_values(&[project, "allow", "ok"]))
    }

    pub fn prompt_tokens(&mut self, m: &Metrics) -> &IntCounter {
        let (project, model) = (&self.project, &self.model);
        self.prompt_tokens
            .get_or_insert_with(|| m.tokens.with_label_values(&[project, model, "prompt"]))
    }

    pub fn completion_tokens(&mut self, m: &Metrics) -> &IntCounter {
        let (project, model) = (&self.project, &self.model);
        self.completion_tokens
            .get_or_insert_with(|| m.tokens.with_label_values(&[project, model, "completion"]))
    }

    pub fn spend(&mut self, m: &Metrics) -> &prometheus::Counter {
        let (project, model) = (&self.project, &self.model);
        self.spend
            .get_or_insert_with(|| m.spend.with_label_values(&[project, model]))
    }
}

/// The counter kept under `label` in a handle's short list, made by `make` the first time.
fn labelled<'a>(
    list: &'a mut Vec<(&'static str, IntCounter)>,
    label: &'static str,
    make: impl FnOnce() -> IntCounter,
) -> &'a IntCounter {
    let at = match list.iter().position(|(l, _)| *l == label) {
        Some(at) => at,
        None => {
            list.push((label, make()));
            list.len() - 1
        }
    };
    &list[at].1
}

/// The series of one provider that requests touch, made on first use like the pair's.
pub struct ProviderHandles {
    name: Box<str>,
    duration: Option<prometheus::Histogram>,
    first_byte: Option<prometheus::Histogram>,
    /// `tollgate_upstream_attempts_total` by outcome.
    attempts: Vec<(&'static str, IntCounter)>,
}

impl ProviderHandles {
    pub fn duration(&mut self, m: &Metrics) -> &prometheus::Histogram {
        let name = &self.name;
        self.duration
            .get_or_insert_with(|| m.request_duration.with_label_values(&[name]))
    }

    pub fn first_byte(&mut self, m: &Metrics) -> &prometheus::Histogram {
        let name = &self.name;
        self.first_byte
            .get_or_insert_with(|| m.first_byte.with_label_values(&[name]))
    }

    pub fn attempts(&mut self, m: &Metrics, outcome: &'static str) -> &IntCounter {
        let name = &self.name;
        labelled(&mut self.attempts, outcome, || {
            m.upstream_attempts.with_label_values(&[name, outcome])
        })
    }
}

/// Pairs kept per thread before the table is emptied (and refilled as requests come): the
/// table never grows past this, whatever the config.
const MAX_PAIRS: usize = 4096;

#[derive(Default)]
struct HotTable {
    /// The config the handles were made for, kept so that its address is not reused by
    /// another while the table holds it: a reload gives a new table.
    cfg: Option<std::sync::Arc<crate::engine::config::Config>>,
    /// By project index (the last one: requests of no project), then model label.
    pairs: Vec<std::collections::HashMap<Box<str>, PairHandles>>,
    count: usize,
    providers: Vec<Option<ProviderHandles>>,
}

impl HotTable {
    fn for_config(&mut self, cfg: &std::sync::Arc<crate::engine::config::Config>) {
        if !self
            .cfg
            .as_ref()
            .is_some_and(|c| std::sync::Arc::ptr_eq(c, cfg))
        {
            *self = HotTable {
                cfg: Some(cfg.clone()),
                pairs: (0..=cfg.projects.len())
                    .map(|_| Default::default())
                    .collect(),
                count: 0,
                providers: (0..cfg.providers.len()).map(|_| None).collect(),
            };
        }
    }
}

thread_local! {
    static HOT: std::cell::RefCell<HotTable> = std::cell::RefCell::new(HotTable::default());
}

/// Run `f` with the handles of (`project`, `model`) under `cfg` (`project` is an index into
/// `cfg.projects`, `None` for a request of no project, labelled `project_label`).
pub fn with_pair<R>(
    cfg: &std::sync::Arc<crate::engine::config::Config>,
    project: Option<usize>,
    project_label: &str,
    model: &str,
    f: impl FnOnce(&Metrics, &mut PairHandles) -> R,
) -> Option<R> {
    let m = get()?;
    HOT.try_with(|t| {
        let mut t = t.try_borrow_mut().ok()?;
        t.for_config(cfg);
        let slot = project.unwrap_or(cfg.projects.len());
        if t.count >= MAX_PAIRS {
            t.pairs.iter_mut().for_each(|p| p.clear());
            t.count = 0;
        }
        let t = &mut *t;
        let pairs = t.pairs.get_mut(slot)?;
        // One lookup for a pair already there (every request but its first).
        if let Some(h) = pairs.get_mut(model) {
            return Some(f(m, h));
        }
        let h = pairs
            .entry(model.into())
            .or_insert_with(|| PairHandles::new(project_label, model));
        t.count += 1;
        Some(f(m, h))
    })
    .ok()
    .flatten()
}

/// Run `f` with the handles of provider `p` (its index in `cfg.providers`).
pub fn with_provider<R>(
    cfg: &std::sync::Arc<crate::engine::config::Config>,
    p: usize,
    f: impl FnOnce(&Metrics, &mut ProviderHandles) -> R,
) -> Option<R> {
    let m = get()?;
    HOT.try_with(|t| {
        let mut t = t.try_borrow_mut().ok()?;
        t.for_config(cfg);
        let name = cfg.providers.get(p)?.name.as_str();
        let slot = t.providers.get_mut(p)?;
        let h = slot.get_or_insert_with(|| ProviderHandles {
            name: name.into(),
            duration: None,
            first_byte: None,
            attempts: Vec::new(),
        });
        Some(f(m, h))
    })
    .ok()
    .flatten()
}

/// A status code as a label: the code itself (a bounded set by construction).
pub fn status_label(status: u16) -> &'static str {
    const CODES: [(u16, &str); 24] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (402, "402"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (422, "422"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (520, "520"),
        (529, "529"),
        (0, "0"),
        (100, "100"),
    ];
    CODES.iter().find(|(c, _)| *c == status).map_or(
        match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        },
        |(_, s)| s,
    )
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    Lazy::force(&METRICS);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        log::error!("metrics encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot_config() -> std::sync::Arc<crate::engine::config::Config> {
        let text = r#"
[[providers]]
name = "hot-openai"
kind = "openai"
base_url = "http://127.0.0.1:9"
api_key_env = "K"
[[routes]]
prefix = "gpt-"
provider = "hot-openai"
[[projects]]
id = "hot-p"
keys = ["tg_hot_handles_test_key_0001"]
"#;
        std::sync::Arc::new(
            crate::engine::config::parse(text, "t.toml", &|_| Some("x".into())).unwrap(),
        )
    }

    fn has_series(family: &str, labels: &[(&str, &str)]) -> bool {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().iter())
            .any(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
    }

    #[test]
    fn a_threads_handles_count_into_the_series_the_labels_name_and_make_none_early() {
        let m = get().unwrap();
        let cfg = hot_config();
        let requests = || {
            m.requests
                .with_label_values(&["hot-p", "hot-model", "200"])
                .get()
        };
        let before = requests();
        let pair = |cfg: &std::sync::Arc<crate::engine::config::Config>| {
            with_pair(cfg, Some(0), "hot-p", "hot-model", |m, h| {
                h.requests(m, "200").inc();
                h.completion_tokens(m).inc_by(7);
            })
            .unwrap()
        };
        pair(&cfg);
        pair(&cfg);
        assert_eq!(requests(), before + 2);
        let completion = m
            .tokens
            .with_label_values(&["hot-p", "hot-model", "completion"])
            .get();
        assert_eq!(completion, 14);
        // Only what was counted exists: no spend, no prompt tokens, no allow decision.
        let pm = [("project", "hot-p"), ("model", "hot-model")];
        assert!(has_series(
            "tollgate_tokens_total",
            &[pm[0], pm[1], ("kind", "completion")]
        ));
        assert!(!has_series("tollgate_spend_usd_total", &pm));
        assert!(!has_series(
            "tollgate_tokens_total",
            &[pm[0], pm[1], ("kind", "prompt")]
        ));
        assert!(!has_series("tollgate_decisions_total", &[pm[0]]));
        // A reload is a new config: new handles, the same series.
        let reloaded = hot_config();
        pair(&reloaded);
        assert_eq!(requests(), before + 3);
        // Requests of no project have their own slot.
        with_pair(&reloaded, None, "other", "hot-model", |m, h| {
            h.requests(m, "404").inc()
        });
        assert_eq!(
            m.requests
                .with_label_values(&["other", "hot-model", "404"])
                .get(),
            1
        );
        // The provider's.
        let attempts = || {
            m.upstream_attempts
                .with_label_values(&["hot-openai", "ok"])
                .get()
        };
        let before = attempts();
        with_provider(&reloaded, 0, |m, h| h.attempts(m, "ok").inc()).unwrap();
        assert_eq!(attempts(), before + 1);
        assert!(
            with_provider(&reloaded, 9, |_, _| ()).is_none(),
            "no such provider"
        );
        assert!(!has_series(
            "tollgate_upstream_first_byte_seconds",
            &[("provider", "hot-openai")]
        ));
    }

    #[test]
    fn a_threads_table_stays_bounded_whatever_the_pairs() {
        let cfg = hot_config();
        for i in 0..(MAX_PAIRS + 10) {
            with_pair(&cfg, Some(0), "hot-p", &format!("hot-bound-{i}"), |_, _| ()).unwrap();
        }
        let (count, held) = HOT.with(|t| {
            let t = t.borrow();
            (t.count, t.pairs.iter().map(|p| p.len()).sum::<usize>())
        });
        assert!(count <= MAX_PAIRS && held == count, "{count} {held}");
    }

    #[test]
    fn unknown_status_codes_fold_into_classes() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(451), "4xx");
        assert_eq!(status_label(999), "other");
    }

    #[test]
    fn flush_lag_is_zero_when_idle_and_grows_only_while_writes_wait() {
        let mut lag = FlushLag::default();
        // Idle long after the last commit: no lag.
        assert_eq!(lag.update(0, 1_000, 100_000), 0.0);
        // A backlog appears: counted from the first sample that saw it...
        assert_eq!(lag.update(5, 1_000, 200_000), 0.0);
        assert_eq!(lag.update(5, 1_000, 203_500), 3.5);
        // ...or from a commit after that, whichever is later.
        assert_eq!(lag.update(7, 203_000, 204_000), 1.0);
        // Drained: back to zero, and a new backlog starts a new count.
        assert_eq!(lag.update(0, 205_000, 205_000), 0.0);
        assert_eq!(lag.update(1, 205_000, 300_000), 0.0);
        assert_eq!(lag.update(1, 205_000, 301_000), 1.0);
    }

    #[test]
    fn every_family_registers() {
        assert!(get().is_some(), "a family failed to register: see the log");
    }

    #[test]
    fn every_spec_metric_name_is_exposed() {
        let m = get().expect("metrics registered");
        m.reservation_overruns.with_label_values(&["p"]).inc();
        m.reloads.with_label_values(&["ok"]).inc();
        m.request_duration.with_label_values(&["x"]).observe(0.1);
        m.first_byte.with_label_values(&["x"]).observe(0.1);
        m.requests.with_label_values(&["p", "m", "200"]).inc();
        m.decisions.with_label_values(&["p", "allow", "ok"]).inc();
        m.tokens.with_label_values(&["p", "m", "prompt"]).inc();
        m.spend.with_label_values(&["p", "m"]).inc_by(0.1);
        m.budget_remaining.with_label_values(&["p"]).set(1.0);
        let text = String::from_utf8(render()).unwrap();
        for name in [
            "tollgate_requests_total",
            "tollgate_decisions_total",
            "tollgate_tokens_total",
            "tollgate_spend_usd_total",
            "tollgate_budget_remaining_usd",
            "tollgate_request_duration_seconds",
            "tollgate_upstream_first_byte_seconds",
            "tollgate_config_reloads_total",
            "tollgate_reservation_overruns_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
