//! What real clients and coding agents send beyond the chat routes (`../shared/notes/clients.md`),
//! through the real binary: the base-URL probe, token counting, the model routes in both
//! shapes, `Expect: 100-continue`, a WebSocket attempt, and query strings and beta headers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn anthropic_headers(key: &str) -> Vec<(&str, &str)> {
    vec![
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ]
}

#[test]
fn the_base_url_answers_get_and_head_without_a_key() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let r = get(&gw.url("/"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    for path in ["/", "/api/hello"] {
        let r = try_request("HEAD", &gw.url(path), &[], None).expect("HEAD");
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "a HEAD answer has no body: {:?}", r.body);
    }
    assert_eq!(mock.count(), 0, "the probe never reaches a provider");
}

#[test]
fn count_tokens_is_forwarded_recorded_and_never_charged() {
    let mock = Mock::start();
    let body = standard_config(&mock).replace(
        "[[projects]]\nid = \"p1\"",
        "[[projects]]\nid = \"p1\"\nbudget = { limit_usd = 1.0, period = \"month\" }",
    );
    let (gw, admin) = start_admin(&body);
    let r = post(
        &gw.url("/v1/messages/count_tokens"),
        &anthropic_headers(KEY),
        r#"{"model":"claude-sonnet-4","messages":[{"role":"user","content":"hello there"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["input_tokens"].as_u64().is_some_and(|n| n > 0),
        "the provider's answer passes through: {}",
        r.body
    );
    let sent = mock.last_request();
    assert_eq!(sent["path"], "/v1/messages/count_tokens");
    assert_eq!(
        req_header(&sent, "x-api-key").as_deref(),
        Some(ANTHROPIC_SECRET),
        "the provider's credential, not the project key"
    );
    let d = decision(admin, &r.request_id());
    assert_eq!(d["endpoint"], "count_tokens", "{d}");
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(
        d["cost_usd"].as_f64(),
        Some(0.0),
        "token counting is free: {d}"
    );
    let p = admin_get(admin, "/admin/projects").json();
    assert_eq!(p["projects"][0]["spent_usd"].as_f64(), Some(0.0), "{p}");
    assert_eq!(p["projects"][0]["reserved_usd"].as_f64(), Some(0.0), "{p}");
}

#[test]
fn count_tokens_for_a_model_whose_provider_cannot_count_is_a_clear_400_in_anthropics_shape() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let r = post(
        &gw.url("/v1/messages/count_tokens"),
        &anthropic_headers(KEY),
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "error", "Anthropic's shape: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("gpt-4o-mini") && msg.contains("openai"),
        "names the model and its provider: {msg}"
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn count_tokens_obeys_the_model_rules_and_counts_toward_rpm() {
    let mock = Mock::start();
    let body = standard_config(&mock).replace(
        "allow_models = [\"claude-*\"]",
        "allow_models = [\"claude-*\"]\nrate_limit = { rpm = 1 }",
    );
    let gw = Gateway::start(&body);
    let denied = post(
        &gw.url("/v1/messages/count_tokens"),
        &anthropic_headers(KEY2),
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    );
    assert_eq!(
        denied.status, 403,
        "p2 may use claude-* only: {}",
        denied.body
    );
    assert_eq!(denied.json()["error"]["code"], "model_not_allowed");
    let limited = post(
        &gw.url("/v1/messages/count_tokens"),
        &anthropic_headers(KEY2),
        r#"{"model":"claude-sonnet-4","messages":[]}"#,
    );
    assert_eq!(
        limited.status, 429,
        "the refused request above was the minute's one request: {}",
        limited.body
    );
}

#[test]
fn models_answer_in_anthropics_shape_when_the_client_sends_anthropic_version() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let v = get(&gw.url("/v1/models"), &anthropic_headers(KEY)).json();
    let data = v["data"].as_array().cloned().unwrap_or_default();
    assert!(!data.is_empty(), "{v}");
    assert_eq!(data[0]["type"], "model", "{v}");
    assert!(data[0]["display_name"].is_string() && data[0]["created_at"].is_string());
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], data[0]["id"]);
    assert_eq!(v["last_id"], data[data.len() - 1]["id"]);
    let openai = get(
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {KEY}"))],
    );
    assert_eq!(openai.json()["object"], "list", "{}", openai.body);
}

#[test]
fn one_model_is_served_in_the_callers_shape_and_an_unknown_one_is_404() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let bearer = format!("Bearer {KEY}");
    let r = get(
        &gw.url("/v1/models/gpt-4o-mini"),
        &[("authorization", &bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], "gpt-4o-mini");
    assert_eq!(r.json()["object"], "model");
    let r = get(
        &gw.url("/v1/models/claude-sonnet-4"),
        &anthropic_headers(KEY),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["type"], "model");
    let r = get(&gw.url("/v1/models/llama-9"), &[("authorization", &bearer)]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = get(&gw.url("/v1/models/llama-9"), &anthropic_headers(KEY));
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json()["type"],
        "error",
        "asked in Anthropic's dialect: {}",
        r.body
    );
}

#[test]
fn every_answer_on_a_messages_path_comes_in_anthropics_shape_404_included() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let r = post(
        &gw.url("/v1/messages/batches"),
        &anthropic_headers(KEY),
        r#"{"requests":[]}"#,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["type"], "error", "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "not_found", "{}", r.body);
}

#[test]
fn query_strings_and_beta_headers_pass_through_untouched() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let mut h = anthropic_headers(KEY);
    h.push((
        "anthropic-beta",
        "interleaved-thinking-2025-05-14,fine-grained-tool-streaming",
    ));
    let r = post(
        &gw.url("/v1/messages?beta=true"),
        &h,
        r#"{"model":"claude-sonnet-4","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = mock.last_request();
    assert_eq!(sent["path"], "/v1/messages?beta=true", "{sent}");
    assert_eq!(
        req_header(&sent, "anthropic-beta").as_deref(),
        Some("interleaved-thinking-2025-05-14,fine-grained-tool-streaming")
    );
    let bearer = format!("Bearer {KEY}");
    let r = post(
        &gw.url("/v1/responses?x=1"),
        &[("authorization", &bearer), ("openai-beta", "responses=v1")],
        r#"{"model":"gpt-4o-mini","input":"hi","max_output_tokens":5}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = mock.last_request();
    assert_eq!(sent["path"], "/v1/responses?x=1");
    assert_eq!(
        req_header(&sent, "openai-beta").as_deref(),
        Some("responses=v1")
    );
}

/// Send a request head on a raw connection; the reader of the answer.
fn raw_head(gw: &Gateway, head: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    w.write_all(head.as_bytes()).expect("write head");
    (w, BufReader::new(s))
}

/// The status line and headers of the next response (lowercased names).
fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line, got {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn body_of(r: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> String {
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut b = vec![0; len];
    r.read_exact(&mut b).expect("body");
    String::from_utf8_lossy(&b).into_owned()
}

fn expect_head(key: &str, len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
    )
}

#[test]
fn expect_100_continue_is_answered_after_the_key_and_size_checks_and_never_forwarded() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;

    // A known key: 100 Continue first, before any body byte is sent.
    let (mut w, mut r) = raw_head(&gw, &expect_head(KEY, body.len()));
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 100, "the client may send its body now");
    w.write_all(body.as_bytes()).expect("write body");
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 200);
    let text = body_of(&mut r, &headers);
    assert!(text.contains("chat.completion"), "{text}");
    let sent = mock.last_request();
    assert_eq!(
        req_header(&sent, "expect"),
        None,
        "Expect is never forwarded: {sent}"
    );

    // An unknown key: 401 at once, no body read.
    let (_w, mut r) = raw_head(&gw, &expect_head("tg_unknown", body.len()));
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 401);
    assert!(body_of(&mut r, &headers).contains("unauthorized"));

    // Too large for max_body_bytes (4 MiB by default): 413 at once.
    let (_w, mut r) = raw_head(&gw, &expect_head(KEY, 5 * 1024 * 1024));
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 413);
    assert!(body_of(&mut r, &headers).contains("request_too_large"));
    assert_eq!(
        mock.count(),
        1,
        "only the admitted request reached the provider"
    );
}

#[test]
fn a_websocket_attempt_on_responses_gets_426_at_once() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let (_w, mut r) = raw_head(
        &gw,
        &format!(
            "GET /v1/responses HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    );
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 426, "the client falls back to HTTP at once");
    let body: Value = serde_json::from_str(&body_of(&mut r, &headers)).expect("json");
    assert_eq!(
        body["error"]["type"], "upgrade_required",
        "OpenAI's shape: {body}"
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn an_anthropic_stream_with_cache_tokens_is_charged_for_every_input_token() {
    let mock = Mock::start();
    let body = standard_config(&mock).replace(
        "[prices.\"claude-sonnet-4\"]\ninput = 3.0\noutput = 15.0",
        "[prices.\"claude-sonnet-4\"]\ninput = 3.0\noutput = 15.0\ncache_read = 0.3\ncache_write = 3.75",
    );
    let (gw, admin) = start_admin(&body);
    let mut h = anthropic_headers(KEY);
    h.extend([
        ("x-mock-prompt-tokens", "100"),
        ("x-mock-cache-read-tokens", "1000"),
        ("x-mock-cache-write-tokens", "200"),
        ("x-mock-tokens", "10"),
    ]);
    let r = post(
        &gw.url("/v1/messages"),
        &h,
        r#"{"model":"claude-sonnet-4","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("cache_read_input_tokens"), "{}", r.body);
    let d = decision(admin, &r.request_id());
    assert_eq!(d["usage_source"], "reported", "{d}");
    assert_eq!(d["completion_tokens"], 10, "{d}");
    // 100 uncached at $3, 1000 read at $0.30, 200 written at $3.75, 10 out at $15, per million.
    let expected = (100.0 * 3.0 + 1000.0 * 0.3 + 200.0 * 3.75 + 10.0 * 15.0) / 1e6;
    let cost = d["cost_usd"].as_f64().unwrap_or_default();
    assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}: {d}");
}

#[test]
fn a_streamed_tool_call_passes_through_and_is_charged_from_reported_usage() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    let bearer = format!("Bearer {KEY}");
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &bearer),
            ("x-mock-tool-call", "get_weather"),
            ("x-mock-tool-args", r#"{"city":"Paris"}"#),
        ],
        r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"weather?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"tool_calls\""), "{}", r.body);
    assert!(r.body.contains("get_weather"), "{}", r.body);
    assert!(
        !r.body.contains("\"usage\":{"),
        "the client did not ask for usage: the injected usage chunk is removed: {}",
        r.body
    );
    let d = decision(admin, &r.request_id());
    assert_eq!(d["usage_source"], "reported", "{d}");
    assert!(d["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{d}");
}

#[test]
fn an_h2c_upgrade_offer_is_ignored_not_refused() {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let (mut w, mut r) = raw_head(
        &gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            body.len()
        ),
    );
    w.write_all(body.as_bytes()).expect("body");
    let (status, _) = read_head(&mut r);
    assert_eq!(
        status, 200,
        "only a WebSocket gets 426; an h2c offer is served over HTTP/1.1"
    );
}
