//! End to end: the real `tollgate` binary in front of the mock provider, over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

fn setup() -> (Mock, Gateway) {
    let mock = Mock::start();
    let gw = Gateway::start(&standard_config(&mock));
    (mock, gw)
}

#[test]
fn chat_completion_is_forwarded_with_the_provider_credential_and_usage_is_counted() {
    let (mock, gw) = setup();
    let (k, v) = bearer(KEY);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(r.header("x-tollgate-provider"), Some("openai"));

    let up = mock.last_request();
    assert_eq!(up["path"], "/v1/chat/completions");
    assert_eq!(
        req_header(&up, "authorization").as_deref(),
        Some(&*format!("Bearer {OPENAI_SECRET}"))
    );
    assert!(req_header(&up, "x-tollgate-key").is_none());

    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "usage"), "reported", "{line}");
    assert_eq!(
        field(&line, "prompt_tokens"),
        body["usage"]["prompt_tokens"].to_string(),
        "the gateway counts what the provider reported"
    );
    assert_eq!(
        field(&line, "completion_tokens"),
        body["usage"]["completion_tokens"].to_string()
    );
}

#[test]
fn all_three_key_headers_authenticate_and_none_reaches_the_provider() {
    let (mock, gw) = setup();
    for (name, value) in [
        ("authorization", format!("Bearer {KEY}")),
        ("x-api-key", KEY.to_string()),
        ("x-tollgate-key", KEY.to_string()),
    ] {
        mock.reset();
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[(name, &value)],
            &chat("gpt-4o-mini", 5),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let up = mock.last_request();
        let all = up["headers"].to_string();
        assert!(
            !all.contains(KEY),
            "{name}: the project key leaked upstream: {all}"
        );
    }
}

#[test]
fn the_sha256_form_of_a_key_authenticates_its_key() {
    let (_mock, gw) = setup();
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY2)],
        &chat("claude-sonnet-4", 5),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn anthropic_gets_x_api_key_and_a_default_version() {
    let (mock, gw) = setup();
    let (k, v) = bearer(KEY);
    let r = post(
        &gw.url("/v1/messages"),
        &[(k, &v)],
        &chat("claude-sonnet-4", 5),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["type"], "message");
    let up = mock.last_request();
    assert_eq!(
        req_header(&up, "x-api-key").as_deref(),
        Some(ANTHROPIC_SECRET)
    );
    assert_eq!(
        req_header(&up, "anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    assert!(
        req_header(&up, "authorization").is_none(),
        "the project key's Bearer header is removed"
    );
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "usage"), "reported", "{line}");
}

#[test]
fn a_client_anthropic_version_is_kept() {
    let (mock, gw) = setup();
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY), ("anthropic-version", "2024-01-01")],
        &chat("claude-sonnet-4", 5),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        req_header(&mock.last_request(), "anthropic-version").as_deref(),
        Some("2024-01-01")
    );
}

#[test]
fn prefix_stripping_rewrites_only_the_model_and_keeps_unknown_fields_byte_for_byte() {
    let (mock, gw) = setup();
    let body = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x_vendor":{"n":1.50,"s":"\u00e9"}}"#;
    let r = post(&gw.url("/v1/chat/completions"), &[("x-api-key", KEY)], body);
    assert_eq!(r.status, 200, "{}", r.body);
    let up = mock.last_request();
    assert_eq!(
        up["body"].as_str().unwrap(),
        body.replace("openai/gpt-4o-mini", "gpt-4o-mini"),
        "only the model bytes change"
    );
}

#[test]
fn a_one_mebibyte_prompt_is_forwarded_intact() {
    let (mock, gw) = setup();
    let filler: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body =
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": filler}]})
            .to_string();
    assert!(body.len() > 1024 * 1024);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let up = mock.last_request();
    let expected = body.replace("openai/gpt-4o-mini", "gpt-4o-mini");
    assert_eq!(up["body_len"].as_u64(), Some(expected.len() as u64));
    assert!(
        up["body"].as_str().unwrap() == expected,
        "the body arrived changed"
    );
    // The next request on a fresh connection still works.
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn bodies_around_the_64k_boundary_all_arrive_intact() {
    let (mock, gw) = setup();
    for size in [65_000usize, 65_536, 65_537, 70_000, 200_000] {
        let pad = size.saturating_sub(60);
        let body =
            json!({"model": "gpt-4o-mini", "messages": [], "pad": "x".repeat(pad)}).to_string();
        mock.reset();
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[("x-api-key", KEY)],
            &body,
        );
        assert_eq!(r.status, 200, "size {size}: {}", r.body);
        assert_eq!(
            mock.last_request()["body"].as_str().unwrap(),
            body,
            "size {size}"
        );
    }
}

#[test]
fn every_openai_endpoint_is_proxied_and_metered() {
    let (mock, gw) = setup();
    let cases = [
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 3}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hello world"}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 4}),
        ),
    ];
    for (path, body) in cases {
        mock.reset();
        let r = post(&gw.url(path), &[("x-api-key", KEY)], &body.to_string());
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(mock.last_request()["path"], path);
        let line = gw.access_line(&r.request_id());
        assert_eq!(field(&line, "usage"), "reported", "{path}: {line}");
        let reported = &r.json()["usage"];
        let prompt = reported
            .get("prompt_tokens")
            .or_else(|| reported.get("input_tokens"))
            .unwrap();
        assert_eq!(field(&line, "prompt_tokens"), prompt.to_string(), "{path}");
    }
}

#[test]
fn openai_streams_get_usage_injected_and_the_extra_chunk_removed() {
    let (mock, gw) = setup();
    let body = json!({"model": "gpt-4o-mini", "messages": [], "stream": true, "max_tokens": 6})
        .to_string();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &body,
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let up: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        up["stream_options"]["include_usage"], true,
        "the gateway asked for usage"
    );
    // With include_usage set, OpenAI adds `"usage":null` to every chunk (harmless to SDKs);
    // what must not reach this client is the extra chunk with empty choices and the counts.
    assert!(
        !r.body.contains("\"usage\":{"),
        "the client did not ask for the usage chunk: {}",
        r.body
    );
    assert!(!r.body.contains("\"choices\":[]"), "{}", r.body);
    assert!(
        r.body.contains("\"content\":\"The\""),
        "content still arrives: {}",
        r.body
    );
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "usage"), "reported", "{line}");
    assert_eq!(field(&line, "completion_tokens"), "6");
}

#[test]
fn a_client_that_asks_for_stream_usage_still_gets_it() {
    let (_mock, gw) = setup();
    let body = json!({"model": "gpt-4o-mini", "messages": [], "stream": true, "max_tokens": 3,
                      "stream_options": {"include_usage": true}})
    .to_string();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &body,
    );
    assert!(r.body.contains("\"usage\""), "{}", r.body);
}

#[test]
fn anthropic_and_responses_streams_are_metered() {
    let (_mock, gw) = setup();
    let cases = [
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4", "messages": [], "max_tokens": 7, "stream": true}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 7, "stream": true}),
        ),
    ];
    for (path, body) in cases {
        let r = post(&gw.url(path), &[("x-api-key", KEY)], &body.to_string());
        assert_eq!(r.status, 200, "{path}");
        let line = gw.access_line(&r.request_id());
        assert_eq!(field(&line, "usage"), "reported", "{path}: {line}");
        assert_eq!(field(&line, "completion_tokens"), "7", "{path}: {line}");
    }
}

#[test]
fn a_stream_cut_by_the_provider_is_estimated() {
    let (_mock, gw) = setup();
    let body =
        json!({"model": "claude-sonnet-4", "messages": [], "max_tokens": 50, "stream": true})
            .to_string();
    let r = try_request(
        "POST",
        &gw.url("/v1/messages"),
        &[
            ("x-api-key", KEY),
            ("x-mock-tokens", "50"),
            ("x-mock-fault", "close-mid-stream"),
        ],
        Some(body.as_bytes()),
    );
    // The client sees a stream that ends early (or a transport error); either way it is logged.
    let id = match &r {
        Ok(resp) => resp.request_id(),
        Err(_) => {
            // The access line is written after the request ends, by the access-log thread.
            let mut line = None;
            eventually("the request's access line", || {
                line = gw
                    .log()
                    .lines()
                    .rev()
                    .find(|l| l.contains("tollgate::access") && l.contains("endpoint=messages"))
                    .map(str::to_string);
                line.is_some()
            });
            let line = line.unwrap_or_default();
            field(&line, "id").to_string()
        }
    };
    let line = gw.access_line(&id);
    let completion: u64 = field(&line, "completion_tokens").parse().unwrap();
    assert!(
        completion > 0,
        "what was produced before the cut is counted: {line}"
    );
}

fn error_of(r: &Resp, shape_anthropic: bool) -> (String, String) {
    let v = r.json();
    if shape_anthropic {
        assert_eq!(v["type"], "error", "{}", r.body);
        (
            v["error"]["type"].as_str().unwrap().into(),
            v["error"]["message"].as_str().unwrap().into(),
        )
    } else {
        (
            v["error"]["type"].as_str().unwrap().into(),
            v["error"]["message"].as_str().unwrap().into(),
        )
    }
}

#[test]
fn bad_requests_get_spec_errors_in_both_shapes_and_never_reach_the_provider() {
    let (mock, gw) = setup();
    // (method, path, headers, body, status, type)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/chat/completions",
            vec![("x-api-key", KEY)],
            "not json",
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![("x-api-key", KEY)],
            r#"{"messages":[]}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![("x-api-key", KEY)],
            r#"{"model":7}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![],
            r#"{"model":"gpt-4o-mini"}"#,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![("x-api-key", "tg_wrong_key_000000000")],
            r#"{"model":"gpt-4o-mini"}"#,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/nope",
            vec![("x-api-key", KEY)],
            "{}",
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![("x-api-key", KEY)],
            r#"{"model":"llama-3"}"#,
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/chat/completions",
            vec![("x-api-key", KEY)],
            "",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/messages",
            vec![("x-api-key", KEY)],
            "not json",
            400,
            "invalid_request",
        ),
        ("POST", "/v1/messages", vec![], "{}", 401, "unauthorized"),
        (
            "POST",
            "/v1/messages",
            vec![("x-api-key", KEY)],
            r#"{"model":"mistral-x"}"#,
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/messages",
            vec![("x-api-key", KEY)],
            "",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/messages",
            vec![("x-api-key", KEY2)],
            r#"{"model":"gpt-4o-mini"}"#,
            403,
            "policy_blocked",
        ),
    ];
    for (method, path, headers, body, status, ty) in cases {
        let b = (method == "POST").then_some(body.as_bytes());
        let r = try_request(method, &gw.url(path), &headers, b).unwrap();
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        let (got_ty, msg) = error_of(&r, path == "/v1/messages");
        assert_eq!(got_ty, ty, "{method} {path}");
        assert!(!msg.is_empty());
        assert!(r.header("x-tollgate-request-id").is_some());
    }
    assert_eq!(
        mock.count(),
        0,
        "no blocked or invalid request reached the provider"
    );
}

#[test]
fn oversized_bodies_get_413_whether_declared_or_streamed() {
    let mock = Mock::start();
    let gw = Gateway::start_with(
        &standard_config(&mock),
        "max_body_bytes = 1000",
        &provider_env(),
    );
    let big = json!({"model": "gpt-4o-mini", "pad": "x".repeat(2000)}).to_string();
    let r = post(&gw.url("/v1/chat/completions"), &[("x-api-key", KEY)], &big);
    assert_eq!(r.status, 413);
    assert_eq!(error_of(&r, false).0, "request_too_large");
    let r = post(&gw.url("/v1/messages"), &[("x-api-key", KEY)], &big);
    assert_eq!(
        (r.status, error_of(&r, true).0.as_str()),
        (413, "request_too_large")
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn an_unreachable_provider_is_502_and_a_silent_one_504() {
    let mock = Mock::start();
    let dead = format!("http://{}", refused_addr());
    let cfg = standard_config(&mock).replacen(&mock.url(), &dead, 1);
    let gw = Gateway::start(&cfg);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(error_of(&r, false).0, "upstream_unavailable");

    let gw2 = Gateway::start(&standard_config(&mock));
    // (path, model, mock fault, status, type) — every row in both error shapes.
    let cases = [
        (
            "/v1/messages",
            "claude-sonnet-4",
            "hang",
            504,
            "upstream_timeout",
        ),
        (
            "/v1/chat/completions",
            "gpt-4o-mini",
            "hang",
            504,
            "upstream_timeout",
        ),
        (
            "/v1/chat/completions",
            "gpt-4o-mini",
            "close-before-headers",
            502,
            "upstream_unavailable",
        ),
        (
            "/v1/messages",
            "claude-sonnet-4",
            "close-before-headers",
            502,
            "upstream_unavailable",
        ),
    ];
    for (path, model, fault, status, ty) in cases {
        let r = post(
            &gw2.url(path),
            &[("x-api-key", KEY), ("x-mock-fault", fault)],
            &chat(model, 5),
        );
        assert_eq!(r.status, status, "{path} {fault}: {}", r.body);
        assert_eq!(error_of(&r, path == "/v1/messages").0, ty, "{path} {fault}");
    }
}

#[test]
fn an_unresolvable_provider_host_is_502_not_a_crash() {
    let mock = Mock::start();
    let cfg = standard_config(&mock).replacen(&mock.url(), "http://no-such-host.invalid:80", 1);
    let gw = Gateway::start(&cfg);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    // Still serving.
    assert_eq!(get(&gw.url("/healthz"), &[]).status, 200);
}

#[test]
fn provider_errors_pass_through_unchanged() {
    let (_mock, gw) = setup();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY), ("x-mock-status", "429")],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json()["error"]["code"],
        "rate_limit_exceeded",
        "the provider's body: {}",
        r.body
    );
    assert_eq!(
        r.header("retry-after"),
        Some("1"),
        "provider headers pass too"
    );
    assert!(r.header("x-tollgate-request-id").is_some());
}

#[test]
fn the_client_never_sees_the_provider_key() {
    let (_mock, gw) = setup();
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let r = post(
            &gw.url(path),
            &[("x-api-key", KEY)],
            &chat(
                if path == "/v1/messages" {
                    "claude-sonnet-4"
                } else {
                    "gpt-4o-mini"
                },
                5,
            ),
        );
        let all = format!("{:?}{}", r.headers, r.body);
        assert!(!all.contains("SECRET"), "{path}: {all}");
    }
    assert!(
        !gw.log().contains("SECRET"),
        "no provider secret in the log"
    );
}

#[test]
fn models_lists_what_the_project_may_use() {
    let (_mock, gw) = setup();
    let r = get(&gw.url("/v1/models"), &[("x-api-key", KEY2)]);
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["claude-sonnet-4"], "p2 may only use claude-*");
    let r = get(&gw.url("/v1/models"), &[("x-api-key", KEY)]);
    let ids = r.json()["data"].to_string();
    for m in [
        "gpt-4o-mini",
        "openai/gpt-4o-mini",
        "claude-sonnet-4",
        "text-embedding-3-small",
    ] {
        assert!(ids.contains(&format!("\"{m}\"")), "{m} in {ids}");
    }
    assert_eq!(get(&gw.url("/v1/models"), &[]).status, 401);
}

#[test]
fn healthz_needs_no_key_and_every_response_has_a_request_id() {
    let (_mock, gw) = setup();
    let r = get(&gw.url("/healthz"), &[]);
    assert_eq!(r.status, 200);
    let a = r.request_id();
    let b = get(&gw.url("/healthz"), &[]).request_id();
    assert_ne!(a, b, "ids are unique");
}

#[test]
fn an_https_provider_with_an_untrusted_certificate_is_refused_not_trusted() {
    // A real TLS server on loopback with a self-signed certificate for "localhost": the
    // gateway verifies certificates (SNI = the host name), so it must refuse to talk to it.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl is needed to make a test certificate");
    // The server binds port 0 and prints the port once it listens.
    let script = format!(
        "import http.server, ssl\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_POST(self):\n\
         \x20       self.send_response(200); self.send_header('content-length','2'); self.end_headers(); self.wfile.write(b'{{}}')\n\
         s = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('{}', '{}')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         print(s.server_address[1], flush=True)\n\
         s.serve_forever()\n",
        cert.display(),
        key.display()
    );
    let mut server = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("TLS test server did not start: {line:?}"));
    let mock = Mock::start();
    let cfg = standard_config(&mock).replacen(&mock.url(), &format!("https://localhost:{port}"), 1);
    let gw = Gateway::start(&cfg);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("gpt-4o-mini", 5),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(error_of(&r, false).0, "upstream_unavailable");
    assert!(
        r.body.contains("TLS"),
        "the message says TLS failed: {}",
        r.body
    );
}
