//! Resilient routing end to end: weighted targets, retries, fallbacks, the per-request
//! deadline, Retry-After, the circuit breaker and single charging, against the real binary and
//! several mock providers on loopback (each mock's `--status` / `--fault` flags make it fail
//! every request).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A provider of the test config: its name, the mock (or a dead address) and its read timeout.
struct P<'a> {
    name: &'a str,
    url: String,
    read_timeout_ms: u64,
}

fn p<'a>(name: &'a str, mock: &Mock) -> P<'a> {
    P {
        name,
        url: mock.url(),
        read_timeout_ms: 3000,
    }
}

/// A base URL where nothing listens: connections are refused.
fn dead<'a>(name: &'a str) -> P<'a> {
    P {
        name,
        url: format!("http://{}", refused_addr()),
        read_timeout_ms: 3000,
    }
}

/// A gateway with these providers, one route `ha/` (strip_prefix) described by `route` (its
/// `provider`/`targets`/`fallbacks`/`retries` lines), an admin listener, and `server_extra`.
fn start(providers: &[P], route: &str, server_extra: &str) -> (Gateway, u16) {
    let mut body = String::new();
    for p in providers {
        body.push_str(&format!(
            "[[providers]]\nname = \"{}\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"TEST_OPENAI_KEY\"\nconnect_timeout_ms = 1000\nread_timeout_ms = {}\n\n",
            p.name, p.url, p.read_timeout_ms
        ));
    }
    body.push_str(&format!(
        "[[routes]]\nprefix = \"ha/\"\nstrip_prefix = true\n{route}\n\n[prices.\"gpt-4o-mini\"]\ninput = 0.15\noutput = 0.60\nmax_output_tokens = 16384\n\n[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 100.0, period = \"day\" }}\n"
    ));
    let gw = Gateway::start_with(
        &body,
        &format!("{ADMIN_EXTRA}{server_extra}"),
        &env_with_admin(),
    );
    let admin = gw.admin_port();
    (gw, admin)
}

fn chat_body(max_tokens: u64) -> String {
    json!({"model": "ha/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "custom_field": {"kept": [1, 2, 3]}})
        .to_string()
}

fn chat_ha(gw: &Gateway, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("x-api-key", KEY)];
    h.extend_from_slice(headers);
    post(&gw.url("/v1/chat/completions"), &h, &chat_body(5))
}

fn provider_of(r: &Resp) -> &str {
    r.header("x-tollgate-provider").unwrap_or("-")
}

fn provider_status(admin: u16, name: &str) -> Value {
    let r = admin_get(admin, "/admin/providers");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no provider {name} in {}", r.body))
}

#[test]
fn weighted_targets_share_traffic_three_to_one() {
    let (a, b) = (Mock::start(), Mock::start());
    let (gw, _) = start(
        &[p("a", &a), p("b", &b)],
        "targets = [{ provider = \"a\", weight = 3 }, { provider = \"b\", weight = 1 }]",
        "",
    );
    let mut served = (0u64, 0u64);
    for _ in 0..200 {
        let r = chat_ha(&gw, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        match provider_of(&r) {
            "a" => served.0 += 1,
            "b" => served.1 += 1,
            other => panic!("served by {other}"),
        }
    }
    assert_eq!(
        (a.count(), b.count()),
        served,
        "the header names who served"
    );
    assert!(
        (130..=170).contains(&served.0),
        "3:1 of 200 is 150:50, got {served:?}"
    );
}

#[test]
fn a_failing_target_is_retried_then_the_fallback_gets_the_exact_rewritten_body() {
    let (a, b) = (Mock::start_with(&["--status", "500"]), Mock::start());
    let (gw, admin) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nretries = 1\nfallbacks = [\"b\"]",
        "",
    );
    let r = chat_ha(&gw, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(provider_of(&r), "b");
    assert_eq!(a.count(), 2, "the target: 1 + retries tries");
    assert_eq!(b.count(), 1);
    let first_req = &a.requests()[0];
    let first = first_req["body"].as_str().unwrap().to_string();
    let first_prompt = first_req["prompt_tokens"].as_u64().expect("prompt_tokens");
    let served = b.last_request();
    assert_eq!(
        served["body"].as_str().unwrap(),
        first,
        "same bytes each try"
    );
    let sent: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini", "the rewritten body");
    assert_eq!(sent["custom_field"], json!({"kept": [1, 2, 3]}));
    assert_eq!(
        req_header(&served, "content-length").unwrap(),
        first.len().to_string()
    );
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "attempts"), "3", "{line}");
    assert_eq!(field(&line, "provider"), "b", "{line}");
    let log = gw.log();
    let id = r.request_id();
    assert!(
        log.contains(&format!(
            "{id}: attempt 1 at provider a failed (error status); retrying at provider a"
        )) && log.contains(&format!(
            "{id}: attempt 2 at provider a failed (error status); retrying at provider b"
        )),
        "each retry is logged:\n{log}"
    );
    assert_eq!(
        metric(
            admin,
            "tollgate_upstream_attempts_total",
            &[("outcome", "status_5xx"), ("provider", "a")]
        ),
        2.0
    );
    eventually("b's attempt is recorded", || {
        metric(
            admin,
            "tollgate_upstream_attempts_total",
            &[("outcome", "ok"), ("provider", "b")],
        ) == 1.0
    });

    // Charged exactly once, for what the serving provider reported.
    let prompt = first_prompt as f64;
    let expected = (prompt * 0.15 + 5.0 * 0.60) / 1e6;
    eventually("the request is settled", || {
        let r = admin_get(admin, "/admin/projects");
        let p = &r.json()["projects"][0];
        p["reserved_usd"] == 0.0 && p["spent_usd"].as_f64().unwrap() > 0.0
    });
    let p = &admin_get(admin, "/admin/projects").json()["projects"][0];
    let spent = p["spent_usd"].as_f64().unwrap();
    assert!(
        (spent - expected).abs() < 2e-6,
        "spent {spent}, one request costs {expected}"
    );
    assert_eq!(field(&line, "usage"), "reported", "{line}");

    // Every try is in the decision record too.
    eventually("the decision is recorded", || {
        admin_get(admin, "/admin/decisions?limit=1").json()["decisions"][0]["id"] == id.as_str()
    });
    let d = &admin_get(admin, "/admin/decisions?limit=1").json()["decisions"][0];
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["providers_tried"], "a,a,b", "{d}");
    assert_eq!(d["provider"], "b", "{d}");
}

#[test]
fn a_large_body_replays_intact_on_every_attempt() {
    let (a, b) = (
        Mock::start_with(&["--fault", "close-before-headers"]),
        Mock::start(),
    );
    let (gw, _) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nfallbacks = [\"b\"]",
        "",
    );
    let big = "x".repeat(200 * 1024);
    let body = json!({"model": "ha/gpt-4o-mini", "messages": [{"role": "user", "content": big}], "max_tokens": 5}).to_string();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(provider_of(&r), "b");
    let tried = a.last_request();
    let served = b.last_request();
    assert_eq!(tried["body_len"], served["body_len"]);
    assert_eq!(tried["body"], served["body"]);
    let sent: Value = serde_json::from_str(served["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["messages"][0]["content"].as_str().unwrap().len(),
        big.len()
    );
}

#[test]
fn a_body_declared_over_64k_that_the_rewrite_brings_under_it_still_arrives() {
    // Tollgate does not turn on Pingora's retry buffer (64 KiB) for a body declared larger, so
    // such a body is replayed by Tollgate even when stripping the model's prefix makes it fit.
    let a = Mock::start();
    let (gw, _) = start(&[p("a", &a)], "provider = \"a\"", "");
    for size in [65_537usize, 65_538, 65_540, 70_000] {
        let shell = json!({"model": "ha/gpt-4o-mini", "messages": [{"role": "user", "content": ""}], "max_tokens": 5}).to_string();
        let content = "y".repeat(size - shell.len());
        let body = json!({"model": "ha/gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 5}).to_string();
        assert_eq!(body.len(), size);
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[("x-api-key", KEY)],
            &body,
        );
        assert_eq!(r.status, 200, "size {size}: {}", r.body);
        let served = a.last_request();
        assert_eq!(served["body_len"], size - 3, "size {size}");
        let sent: Value = serde_json::from_str(served["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(sent["messages"][0]["content"].as_str().unwrap(), content);
    }
}

#[test]
fn when_every_target_is_down_the_fallback_serves() {
    let a = Mock::start_with(&["--fault", "close-before-headers"]);
    let b = Mock::start_with(&["--status", "503"]);
    let c = Mock::start();
    let (gw, _) = start(
        &[p("a", &a), p("b", &b), p("c", &c)],
        "targets = [{ provider = \"a\" }, { provider = \"b\" }]\nretries = 1\nfallbacks = [\"c\"]",
        "",
    );
    let r = chat_ha(&gw, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(provider_of(&r), "c");
    assert_eq!((a.count(), b.count(), c.count()), (2, 2, 1));
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "attempts"), "5", "{line}");
}

#[test]
fn when_everything_is_down_the_client_gets_502_json_within_the_deadline() {
    let a = Mock::start_with(&["--fault", "close-before-headers"]);
    let (gw, _) = start(
        &[p("a", &a), dead("b")],
        "provider = \"a\"\nretries = 2\nfallbacks = [\"b\"]",
        "",
    );
    let t = Instant::now();
    let r = chat_ha(&gw, &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 502, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["type"], "upstream_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("provider b") && msg.contains("4 attempts"),
        "{msg}"
    );
    assert_eq!(a.count(), 3);
    // The bound is the behaviour: the gateway's own deadline (2 x 3 s) caps the attempts,
    // which against a closing and a refusing provider take milliseconds.
    assert!(
        took < Duration::from_secs(6),
        "deadline is 2 x 3 s: {took:?}"
    );
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "attempts"), "4", "{line}");
    assert_eq!(field(&line, "status"), "502", "{line}");
}

#[test]
fn when_every_provider_answers_an_error_the_client_gets_the_last_one_unchanged() {
    let a = Mock::start_with(&["--status", "503"]);
    let b = Mock::start_with(&["--status", "500"]);
    let (gw, _) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nfallbacks = [\"b\"]",
        "",
    );
    let r = chat_ha(&gw, &[]);
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(provider_of(&r), "b");
    // The mock's own error body, not a Tollgate one.
    let direct = post(
        &format!("{}/v1/chat/completions", b.url()),
        &[("authorization", "Bearer k")],
        &chat_body(5),
    );
    assert_eq!(r.body, direct.body);
    assert_eq!((a.count(), b.count()), (1, 2));
}

#[test]
fn a_429_with_a_short_retry_after_is_waited_out_then_the_next_provider_serves() {
    let a = Mock::start_with(&["--status", "429"]);
    let b = Mock::start();
    let (gw, _) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nretries = 1\nfallbacks = [\"b\"]",
        "",
    );
    let t = Instant::now();
    let r = chat_ha(&gw, &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(provider_of(&r), "b");
    assert_eq!((a.count(), b.count()), (2, 1));
    assert!(
        took >= Duration::from_millis(950),
        "Retry-After: 1 was honoured before the second try at a: {took:?}"
    );
}

#[test]
fn a_429_on_the_last_attempt_reaches_the_client_with_its_retry_after() {
    let a = Mock::start_with(&["--status", "429"]);
    let (gw, _) = start(&[p("a", &a)], "provider = \"a\"\nretries = 1", "");
    let r = chat_ha(&gw, &[]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(a.count(), 2);
    assert_eq!(provider_of(&r), "a");
}

#[test]
fn a_silent_target_times_out_and_the_next_one_serves() {
    let a = Mock::start_with(&["--fault", "hang"]);
    let b = Mock::start();
    let mut pa = p("a", &a);
    pa.read_timeout_ms = 1000;
    let mut pb = p("b", &b);
    pb.read_timeout_ms = 1000;
    let (gw, admin) = start(
        &[pa, pb],
        "targets = [{ provider = \"a\", weight = 1000000 }, { provider = \"b\", weight = 1 }]",
        "",
    );
    let t = Instant::now();
    let r = chat_ha(&gw, &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(provider_of(&r), "b");
    // The timing is the behaviour: a waits out its 1 s read timeout (a lower bound, which load
    // cannot break), then b serves; the upper bound only tells that from a hang (which only
    // the client's 30 s timeout would end), generous for a loaded machine.
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        metric(
            admin,
            "tollgate_upstream_attempts_total",
            &[("outcome", "timeout"), ("provider", "a")]
        ),
        1.0
    );
}

#[test]
fn a_stream_broken_after_the_first_byte_is_not_retried_and_is_charged() {
    let a = Mock::start_with(&["--fault", "close-mid-stream", "--tokens", "50"]);
    let b = Mock::start();
    let (gw, admin) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nretries = 1\nfallbacks = [\"b\"]",
        "",
    );
    let body = json!({"model": "ha/gpt-4o-mini", "messages": [], "max_tokens": 50, "stream": true})
        .to_string();
    let r = try_request(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        Some(body.as_bytes()),
    );
    if let Ok(r) = &r {
        assert_eq!(r.status, 200);
        assert_eq!(provider_of(r), "a");
    }
    eventually("the access line", || gw.log().contains("endpoint=chat"));
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("endpoint=chat")).unwrap();
    assert_eq!(field(line, "attempts"), "1", "{line}");
    assert_eq!(field(line, "provider"), "a", "{line}");
    let completion: u64 = field(line, "completion_tokens").parse().unwrap();
    assert!(completion > 0, "charged for what was produced: {line}");
    assert_eq!((a.count(), b.count()), (1, 0));
    assert_eq!(
        metric(
            admin,
            "tollgate_upstream_attempts_total",
            &[("outcome", "broken"), ("provider", "a")]
        ),
        1.0
    );
    eventually("spend is charged", || {
        admin_get(admin, "/admin/projects").json()["projects"][0]["spent_usd"]
            .as_f64()
            .unwrap()
            > 0.0
    });
}

#[test]
fn the_circuit_opens_after_n_failures_and_closes_after_the_cooldown() {
    let a = Mock::start_with(&["--status", "500"]);
    let b = Mock::start();
    let (gw, admin) = start(
        &[p("a", &a), p("b", &b)],
        "provider = \"a\"\nfallbacks = [\"b\"]",
        "circuit_failures = 3\ncircuit_cooldown_ms = 1500",
    );
    assert_eq!(provider_status(admin, "a")["state"], "closed");
    for _ in 0..3 {
        let r = chat_ha(&gw, &[]);
        assert_eq!(provider_of(&r), "b");
    }
    assert_eq!(a.count(), 3);
    let s = provider_status(admin, "a");
    assert_eq!(s["state"], "open", "{s}");
    assert_eq!(s["consecutive_failures"], 3, "{s}");
    assert!(s["open_until"].is_string(), "{s}");
    assert_eq!(
        metric(admin, "tollgate_provider_up", &[("provider", "a")]),
        0.0
    );
    assert_eq!(
        metric(admin, "tollgate_provider_up", &[("provider", "b")]),
        1.0
    );

    // Open: a is skipped even though it would now answer.
    for _ in 0..3 {
        let r = chat_ha(&gw, &[("x-mock-status", "none")]);
        assert_eq!(r.status, 200);
        assert_eq!(provider_of(&r), "b");
    }
    assert_eq!(a.count(), 3, "no request reached the open provider");

    // After the cool-down (1.5 s) one probe goes to a; it succeeds and closes the circuit.
    eventually("the cool-down ends: half_open", || {
        provider_status(admin, "a")["state"] == "half_open"
    });
    let r = chat_ha(&gw, &[("x-mock-status", "none")]);
    assert_eq!(provider_of(&r), "a", "{}", r.body);
    eventually("the probe closes the circuit", || {
        provider_status(admin, "a")["state"] == "closed"
    });
    let s = provider_status(admin, "a");
    assert_eq!(s["state"], "closed", "{s}");
    assert_eq!(s["consecutive_failures"], 0, "{s}");
    assert!(s["open_until"].is_null(), "{s}");
    assert_eq!(
        metric(admin, "tollgate_provider_up", &[("provider", "a")]),
        1.0
    );
    let r = chat_ha(&gw, &[("x-mock-status", "none")]);
    assert_eq!(provider_of(&r), "a");
}

#[test]
fn the_providers_endpoint_needs_the_admin_token() {
    let a = Mock::start();
    let (_gw, admin) = start(&[p("a", &a)], "provider = \"a\"", "");
    let r = get(&format!("http://127.0.0.1:{admin}/admin/providers"), &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = admin_get(admin, "/admin/providers");
    assert_eq!(r.json()["circuit"]["failures"], 5);
    assert_eq!(r.json()["circuit"]["cooldown_ms"], 30000);
}
