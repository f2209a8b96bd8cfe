//! Contract defects found from outside (issue "House in order", part 2), each pinned through
//! the real binary: token counts, blocked records, error bodies, retries of a throttled
//! provider, the last provider answer, overruns.

mod common;

use common::*;

fn start(body: &str) -> (Gateway, u16) {
    start_admin(body)
}

fn metrics(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&scrape(port), name, labels)
}

fn chat_with(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Resp {
    let auth = format!("Bearer {KEY}");
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    h.extend_from_slice(headers);
    post(&gw.url("/v1/chat/completions"), &h, body)
}

#[test]
fn openai_cached_prompt_tokens_are_counted_once_in_the_token_metric() {
    let mock = Mock::start();
    let (gw, admin) = start(&standard_config(&mock));
    let r = chat_with(
        &gw,
        &[
            ("x-mock-prompt-tokens", "1000"),
            ("x-mock-cached-tokens", "800"),
        ],
        r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    gw.access_line(&r.request_id());
    let prompt = metrics(
        admin,
        "tollgate_tokens_total",
        &[
            ("kind", "prompt"),
            ("model", "gpt-4o-mini"),
            ("project", "p1"),
        ],
    );
    assert_eq!(
        prompt,
        Some(1000.0),
        "OpenAI's 800 cached tokens are inside its 1000 prompt tokens, not on top"
    );
}

#[test]
fn a_blocked_request_is_recorded_with_zero_tokens_and_zero_cost() {
    let mock = Mock::start();
    let (gw, admin) = start(&standard_config(&mock));
    let auth = format!("Bearer {KEY2}");
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("authorization", &auth)],
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    );
    assert_eq!(r.status, 403, "p2 may only use claude-*: {}", r.body);
    let d = decision(admin, &r.request_id());
    assert_eq!(d["decision"], "block", "{d}");
    assert_eq!(d["prompt_tokens"], 0, "nothing reached a provider: {d}");
    assert_eq!(d["completion_tokens"], 0, "{d}");
    assert_eq!(d["cost_usd"].as_f64(), Some(0.0), "{d}");
    assert_eq!(d["usage_source"], "none", "{d}");
    assert_eq!(mock.count(), 0);
}

#[test]
fn every_error_body_carries_reason_equal_to_code() {
    let mock = Mock::start();
    let (gw, _admin) = start(&standard_config(&mock));
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[],
        r#"{"model":"gpt-4o-mini"}"#,
    );
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["error"]["reason"], "unauthorized", "{v}");
    assert_eq!(v["error"]["reason"], v["error"]["code"], "{v}");
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY2), ("anthropic-version", "2023-06-01")],
        r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "error", "Anthropic's shape on /v1/messages: {v}");
    assert_eq!(v["error"]["reason"], "model_not_allowed", "{v}");
}

/// One target with `retries = 1`, and a provider that throttles without `Retry-After`.
fn single_target(mock: &Mock, extra_provider: &str, route_extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}"
api_key_env = "TEST_OPENAI_KEY"
read_timeout_ms = 3000
{extra_provider}
[[routes]]
prefix = "gpt-"
provider = "openai"
retries = 1
{route_extra}
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60

[[projects]]
id = "p1"
keys = ["{KEY}"]
"#,
        mock = mock.url()
    )
}

#[test]
fn a_429_without_retry_after_is_retried_on_the_same_target() {
    let mock = Mock::start();
    let (gw, admin) = start(&single_target(&mock, "", ""));
    let r = chat_with(
        &gw,
        &[("x-mock-status", "429"), ("x-mock-fault", "no-retry-after")],
        r#"{"model":"gpt-4o-mini","max_tokens":5}"#,
    );
    assert_eq!(
        r.status, 429,
        "the last try's answer reaches the client: {}",
        r.body
    );
    assert_eq!(
        mock.count(),
        2,
        "retries = 1: the same target is tried twice"
    );
    let d = decision(admin, &r.request_id());
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["providers_tried"], "openai,openai", "{d}");
}

#[test]
fn the_last_provider_error_answer_reaches_the_client_when_a_later_try_gets_no_answer() {
    let mock = Mock::start();
    // The fallback listens nowhere: its try gets no answer at all.
    let dead = r#"
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{refused}"
api_key_env = "TEST_OPENAI_KEY"
connect_timeout_ms = 500
"#;
    let dead = dead.replace("{refused}", &refused_addr().to_string());
    let (gw, admin) = start(&single_target(&mock, &dead, r#"fallbacks = ["dead"]"#));
    let r = chat_with(
        &gw,
        &[("x-mock-status", "500")],
        r#"{"model":"gpt-4o-mini","max_tokens":5}"#,
    );
    assert_eq!(
        r.status, 500,
        "the provider's 500, not a 502 of Tollgate's: {}",
        r.body
    );
    assert_eq!(r.json()["error"]["type"], "upstream_error", "{}", r.body);
    assert!(
        r.header("x-request-id").is_some(),
        "the provider's request id is kept"
    );
    assert_eq!(
        mock.count(),
        2,
        "both tries of the mock ran before the fallback"
    );
    let d = decision(admin, &r.request_id());
    assert_eq!(d["status"], 500, "{d}");
    assert_eq!(d["providers_tried"], "openai,openai,dead", "{d}");
}

#[test]
fn an_overrun_is_charged_in_full_and_never_silent() {
    let mock = Mock::start();
    let body = standard_config(&mock).replace(
        "[[projects]]\nid = \"p1\"",
        "[[projects]]\nid = \"p1\"\nbudget = { limit_usd = 100.0, period = \"month\" }",
    );
    let (gw, admin) = start(&body);
    let r = chat_with(
        &gw,
        &[("x-mock-prompt-tokens", "999999999999")],
        r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = decision(admin, &r.request_id());
    // 999,999,999,999 prompt tokens at $0.15 per million.
    let cost = d["cost_usd"].as_f64().unwrap_or_default();
    assert!((cost - 150_000.0).abs() < 0.01, "the truth is charged: {d}");
    let overrun = d["overrun_usd"].as_f64().unwrap_or_default();
    assert!(
        overrun > 149_000.0 && overrun < cost,
        "the excess over the reserved worst case is on the record: {d}"
    );
    assert_eq!(
        metrics(
            admin,
            "tollgate_reservation_overruns_total",
            &[("project", "p1")]
        ),
        Some(1.0)
    );
    assert!(
        gw.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("more than")),
        "a warning names the overrun:\n{}",
        gw.log()
    );
}
