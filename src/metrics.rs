//! Prometheus metrics with the SPEC's names. Cardinality is bounded by construction: label
//! values come from the config (project ids, provider names, priced model keys) or from fixed
//! sets (status codes, reason codes, decision, kind, usage source); anything else becomes
//! `other`, so no client can create series by sending random model names.

use once_cell::sync::Lazy;
use prometheus::{
    register_counter_vec, register_gauge_vec, register_histogram_vec, register_int_counter_vec,
    register_int_gauge, CounterVec, Encoder, GaugeVec, HistogramVec, IntCounterVec, IntGauge,
    TextEncoder,
};

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
    pub request_duration: HistogramVec,
    pub first_byte: HistogramVec,
    pub reloads: IntCounterVec,
    pub in_flight: IntGauge,
    pub usage_source: IntCounterVec,
    pub upstream_errors: IntCounterVec,
}

/// Registration only fails on a duplicate name, which is a programming error caught by the
/// first test that touches metrics; a process without metrics would still serve traffic.
pub static METRICS: Lazy<Metrics> = Lazy::new(|| Metrics {
    requests: register_int_counter_vec!(
        "tollgate_requests_total",
        "Requests answered, by project, model and HTTP status",
        &["project", "model", "status"]
    )
    .expect("register tollgate_requests_total"),
    decisions: register_int_counter_vec!(
        "tollgate_decisions_total",
        "Admission decisions, by project, decision (allow/block) and reason",
        &["project", "decision", "reason"]
    )
    .expect("register tollgate_decisions_total"),
    tokens: register_int_counter_vec!(
        "tollgate_tokens_total",
        "Tokens charged, by project, model and kind (prompt/completion)",
        &["project", "model", "kind"]
    )
    .expect("register tollgate_tokens_total"),
    spend: register_counter_vec!(
        "tollgate_spend_usd_total",
        "Money charged in US dollars, by project and model",
        &["project", "model"]
    )
    .expect("register tollgate_spend_usd_total"),
    budget_remaining: register_gauge_vec!(
        "tollgate_budget_remaining_usd",
        "Budget left in the current period (limit - spent - reserved)",
        &["project"]
    )
    .expect("register tollgate_budget_remaining_usd"),
    request_duration: register_histogram_vec!(
        "tollgate_request_duration_seconds",
        "Time from request to the end of the response, by provider",
        &["provider"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register tollgate_request_duration_seconds"),
    first_byte: register_histogram_vec!(
        "tollgate_upstream_first_byte_seconds",
        "Time from request to the provider's response header, by provider",
        &["provider"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register tollgate_upstream_first_byte_seconds"),
    reloads: register_int_counter_vec!(
        "tollgate_config_reloads_total",
        "Configuration reloads by result (ok/error)",
        &["result"]
    )
    .expect("register tollgate_config_reloads_total"),
    in_flight: register_int_gauge!("tollgate_requests_in_flight", "Requests being handled now")
        .expect("register tollgate_requests_in_flight"),
    usage_source: register_int_counter_vec!(
        "tollgate_usage_source_total",
        "Finished requests by where their token counts came from (reported/estimated/none)",
        &["project", "source"]
    )
    .expect("register tollgate_usage_source_total"),
    upstream_errors: register_int_counter_vec!(
        "tollgate_upstream_errors_total",
        "Upstream failures answered by Tollgate, by provider and reason",
        &["provider", "reason"]
    )
    .expect("register tollgate_upstream_errors_total"),
});

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

    #[test]
    fn unknown_status_codes_fold_into_classes() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(451), "4xx");
        assert_eq!(status_label(999), "other");
    }

    #[test]
    fn every_spec_metric_name_is_exposed() {
        METRICS.reloads.with_label_values(&["ok"]).inc();
        METRICS
            .request_duration
            .with_label_values(&["x"])
            .observe(0.1);
        METRICS.first_byte.with_label_values(&["x"]).observe(0.1);
        METRICS.requests.with_label_values(&["p", "m", "200"]).inc();
        METRICS
            .decisions
            .with_label_values(&["p", "allow", "ok"])
            .inc();
        METRICS
            .tokens
            .with_label_values(&["p", "m", "prompt"])
            .inc();
        METRICS.spend.with_label_values(&["p", "m"]).inc_by(0.1);
        METRICS.budget_remaining.with_label_values(&["p"]).set(1.0);
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
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
