//! `report_cost = true` end to end (issue 16, SPEC "Console and reports"): the real binary in
//! front of the mock provider. Every endpoint, JSON and stream: the usage object says what the
//! call was charged (`usage.cost`, exactly the record's `cost_usd`) and how long it took
//! (`usage.duration_ms`, the record's `latency_ms`), and every other byte is the provider's.
//! Off by default; unpriced is `null`; a cache hit is `0`.

mod common;

use common::*;
use serde_json::{json, Value};

const KEY3: &str = "tg_test_key_project_three_03";

/// p1 reports costs (and may use unpriced models), p2 is a project as before, p3 reports
/// costs and has a cache.
fn config(mock: &Mock) -> String {
    body_with_projects(
        mock,
        &format!(
            "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nreport_cost = true\nunpriced = \"allow\"\n\
             [[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\nunpriced = \"allow\"\n\
             [[projects]]\nid = \"p3\"\nkeys = [\"{KEY3}\"]\nreport_cost = true\ncache = {{ ttl_s = 60 }}\n"
        ),
    )
}

fn start() -> (Mock, Gateway, u16) {
    let mock = Mock::start();
    let gw = Gateway::start_with(&config(&mock), ADMIN_EXTRA, &env_with_admin());
    let admin = gw.admin_port();
    (mock, gw, admin)
}

fn send(gw: &Gateway, key: &str, path: &str, body: &Value) -> Resp {
    let h = [("x-api-key", key), ("anthropic-version", "2023-06-01")];
    let r = post(&gw.url(path), &h, &body.to_string());
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r
}

/// One call of each endpoint and kind: (path, body, stream).
fn calls(model_openai: &str, model_anthropic: &str) -> Vec<(&'static str, Value, bool)> {
    let msgs = json!([{"role": "user", "content": "what does it cost?"}]);
    vec![
        (
            "/v1/chat/completions",
            json!({"model": model_openai, "max_tokens": 7, "messages": msgs}),
            false,
        ),
        (
            "/v1/chat/completions",
            json!({"model": model_openai, "max_tokens": 7, "messages": msgs, "stream": true,
                   "stream_options": {"include_usage": true}}),
            true,
        ),
        (
            "/v1/completions",
            json!({"model": model_openai, "max_tokens": 5, "prompt": "what does it cost?"}),
            false,
        ),
        (
            "/v1/completions",
            json!({"model": model_openai, "max_tokens": 5, "prompt": "what does it cost?",
                   "stream": true, "stream_options": {"include_usage": true}}),
            true,
        ),
        (
            "/v1/responses",
            json!({"model": model_openai, "max_output_tokens": 6, "input": "what does it cost?"}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": model_openai, "max_output_tokens": 6, "input": "what does it cost?",
                   "stream": true}),
            true,
        ),
        (
            "/v1/messages",
            json!({"model": model_anthropic, "max_tokens": 9, "messages": msgs}),
            false,
        ),
        (
            "/v1/messages",
            json!({"model": model_anthropic, "max_tokens": 9, "messages": msgs, "stream": true}),
            true,
        ),
    ]
}

/// The events of an SSE body: (event name, data as JSON); `[DONE]` is left out.
fn events(body: &str) -> Vec<(Option<String>, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            let data = data.filter(|d| d != "[DONE]")?;
            let v = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
            Some((name, v))
        })
        .collect()
}

/// The usage object of a response that carries `cost`: the JSON body's `usage`, or the one
/// stream event's (the chunk's `usage`, `response.completed`'s `response.usage`, the
/// `message_delta`'s `usage`). Exactly one place may carry it.
fn reported_usage(path: &str, stream: bool, body: &str) -> Value {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        return v["usage"].clone();
    }
    let with: Vec<(Option<String>, Value)> = events(body)
        .into_iter()
        .filter_map(|(name, v)| {
            let u = if path == "/v1/responses" {
                v["response"]["usage"].clone()
            } else {
                v["usage"].clone()
            };
            u.get("cost").is_some().then_some((name, u))
        })
        .collect();
    assert_eq!(
        with.len(),
        1,
        "{path}: one usage event has the cost: {body}"
    );
    let (name, u) = with.into_iter().next().unwrap_or_default();
    match path {
        "/v1/responses" => assert_eq!(name.as_deref(), Some("response.completed")),
        "/v1/messages" => assert_eq!(name.as_deref(), Some("message_delta")),
        _ => assert_eq!(name, None),
    }
    u
}

/// The raw text of member `key` in `text` after `from` (a number or `null`).
fn raw_member<'a>(text: &'a str, from: usize, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let at = text[from..]
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + from
        + pat.len();
    let end = text[at..].find([',', '}']).map_or(text.len(), |k| at + k);
    &text[at..end]
}

/// The record's `cost_usd` and `latency_ms` as the admin JSON writes them, to the character.
fn recorded(admin: u16, id: &str) -> (String, String) {
    decision(admin, id);
    let text = admin_get(admin, "/admin/decisions?limit=100").body;
    let at = text
        .find(&format!("\"id\":\"{id}\""))
        .unwrap_or_else(|| panic!("no record {id}"));
    (
        raw_member(&text, at, "cost_usd").to_string(),
        raw_member(&text, at, "latency_ms").to_string(),
    )
}

/// The body with the two members taken out again (`,"cost":…,"duration_ms":…`).
fn without_members(body: &str) -> String {
    let at = body.find(",\"cost\":").expect("the cost member");
    let d = body[at..].find("\"duration_ms\":").expect("duration_ms") + at;
    let end = body[d..].find('}').map_or(body.len(), |k| d + k);
    assert!(
        !body[end..].contains("\"cost\":"),
        "the members appear once: {body}"
    );
    format!("{}{}", &body[..at], &body[end..])
}

/// Ids and creation times differ from one mock answer to the next; everything else is the
/// same for the same request.
fn normalized(body: &str) -> String {
    let ids = regex::Regex::new("[0-9a-f]{24}").expect("regex");
    let times = regex::Regex::new(r#""(created|created_at)":\d+"#).expect("regex");
    times
        .replace_all(&ids.replace_all(body, "ID"), "\"$1\":0")
        .into_owned()
}

/// What the mock answers when sent the exact body the gateway sent it for the last call.
fn direct_answer(mock: &Mock, path: &str) -> String {
    let up = mock.last_request();
    let body = up["body"].as_str().expect("upstream body").to_string();
    let r = post(
        &format!("{}{path}", mock.url()),
        &[
            ("authorization", "Bearer sk-direct"),
            ("anthropic-version", "2023-06-01"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn nanos(text: &str) -> i64 {
    (text.parse::<f64>().unwrap_or(f64::NAN) * 1e9).round() as i64
}

#[test]
fn every_endpoint_json_and_stream_reports_the_charged_cost_and_the_recorded_duration() {
    let (mock, gw, admin) = start();
    for (path, body, stream) in calls("gpt-4o-mini", "claude-sonnet-4") {
        let r = send(&gw, KEY, path, &body);
        let what = format!("{path} stream={stream}");
        let usage = reported_usage(path, stream, &r.body);
        let (cost_usd, latency_ms) = recorded(admin, &r.request_id());
        // The cost, to the nano-dollar and to the character, is what the ledger charged.
        assert_eq!(raw_member(&r.body, 0, "cost"), cost_usd, "{what}");
        assert_eq!(
            usage["cost"].as_f64(),
            cost_usd.parse::<f64>().ok(),
            "{what}"
        );
        assert!(
            nanos(&cost_usd) > 0,
            "{what}: a priced call costs something"
        );
        // The duration is the record's latency.
        assert_eq!(raw_member(&r.body, 0, "duration_ms"), latency_ms, "{what}");
        assert!(
            usage["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
            "{what}"
        );
        // The provider's own usage members are all still there, and so is every other byte.
        let tokens = [
            "prompt_tokens",
            "input_tokens",
            "output_tokens",
            "completion_tokens",
        ];
        assert!(
            tokens
                .iter()
                .any(|t| usage[*t].as_u64().is_some_and(|n| n > 0)),
            "{what}: {usage}"
        );
        assert_eq!(
            normalized(&without_members(&r.body)),
            normalized(&direct_answer(&mock, path)),
            "{what}: only the two members were added"
        );
        if let Some(cl) = r.header("content-length") {
            assert_eq!(
                cl,
                r.body.len().to_string(),
                "{what}: framing fits the body"
            );
        }
    }
}

#[test]
fn off_by_default_a_project_gets_the_providers_bytes_unchanged() {
    let (mock, gw, admin) = start();
    for (path, body, stream) in calls("gpt-4o-mini", "claude-sonnet-4") {
        let r = send(&gw, KEY2, path, &body);
        let what = format!("{path} stream={stream}");
        assert!(!r.body.contains("duration_ms"), "{what}: {}", r.body);
        assert_eq!(
            normalized(&r.body),
            normalized(&direct_answer(&mock, path)),
            "{what}: byte for byte the provider's answer"
        );
        if !stream {
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str()),
                "{what}: the provider's Content-Length is kept"
            );
        }
        let d = decision(admin, &r.request_id());
        assert!(
            d["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
            "{what}: {d}"
        );
    }
}

#[test]
fn an_unpriced_model_reports_a_null_cost() {
    let (_mock, gw, admin) = start();
    for (path, body, stream) in calls("gpt-unpriced-1", "claude-unpriced-1") {
        let r = send(&gw, KEY, path, &body);
        let what = format!("{path} stream={stream}");
        let usage = reported_usage(path, stream, &r.body);
        assert!(usage["cost"].is_null(), "{what}: {usage}");
        assert_eq!(raw_member(&r.body, 0, "cost"), "null", "{what}");
        let (cost_usd, latency_ms) = recorded(admin, &r.request_id());
        assert_eq!(
            cost_usd, "null",
            "{what}: the record does not know it either"
        );
        assert_eq!(raw_member(&r.body, 0, "duration_ms"), latency_ms, "{what}");
    }
}

#[test]
fn a_stream_whose_client_did_not_ask_for_usage_gets_no_usage_chunk_and_no_cost() {
    let (_mock, gw, admin) = start();
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 4, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&gw, KEY, "/v1/chat/completions", &body);
    assert!(!r.body.contains("\"cost\""), "{}", r.body);
    assert!(
        events(&r.body)
            .iter()
            .all(|(_, v)| v["choices"].as_array().is_some_and(|c| !c.is_empty())),
        "no usage-only chunk: {}",
        r.body
    );
    let d = decision(admin, &r.request_id());
    assert!(
        d["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "still charged: {d}"
    );
}

#[test]
fn a_cache_hit_reports_zero_with_its_own_duration_and_the_cache_keeps_the_providers_bytes() {
    let (mock, gw, admin) = start();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 7,
                   "messages": [{"role": "user", "content": "cache me"}]}),
            false,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 7, "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "cache me"}]}),
            true,
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4", "max_tokens": 7, "stream": true,
                   "messages": [{"role": "user", "content": "cache me"}]}),
            true,
        ),
    ];
    for (path, body, stream) in &cases {
        let what = format!("{path} stream={stream}");
        let miss = send(&gw, KEY3, path, body);
        assert_eq!(miss.header("x-tollgate-cache"), Some("miss"), "{what}");
        let (miss_cost, _) = recorded(admin, &miss.request_id());
        assert_eq!(raw_member(&miss.body, 0, "cost"), miss_cost, "{what}");
        assert!(nanos(&miss_cost) > 0, "{what}");
        let calls = mock.count();
        let hit = send(&gw, KEY3, path, body);
        assert_eq!(hit.header("x-tollgate-cache"), Some("hit"), "{what}");
        assert_eq!(mock.count(), calls, "{what}: the hit reached no provider");
        let usage = reported_usage(path, *stream, &hit.body);
        assert_eq!(usage["cost"].as_f64(), Some(0.0), "{what}: {usage}");
        let (hit_cost, hit_latency) = recorded(admin, &hit.request_id());
        assert_eq!(raw_member(&hit.body, 0, "cost"), hit_cost, "{what}");
        assert_eq!(nanos(&hit_cost), 0, "{what}: a hit is charged 0");
        assert_eq!(
            raw_member(&hit.body, 0, "duration_ms"),
            hit_latency,
            "{what}: the hit's own duration"
        );
        // The stored answer is the provider's: the hit carries the members once (its own),
        // and without them it is the miss's answer without its members.
        assert_eq!(
            without_members(&hit.body),
            without_members(&miss.body),
            "{what}"
        );
    }
}
