//! Spend protection end to end: budgets, policy blocks, rate limits and the durable ledger,
//! against the real binary, the mock provider and a real SQLite file.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A gateway with an admin listener; `projects` replaces the standard projects.
fn start(mock: &Mock, projects: &str) -> (Gateway, u16) {
    start_admin(&body_with_projects(mock, projects))
}

/// Project `p1` (key `KEY`) with one budget.
fn p1_with_budget(limit_usd: &str, period: &str) -> String {
    format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = {limit_usd}, period = \"{period}\" }}\n")
}

/// A `/v1/messages` POST with `KEY` and the `extra` header lines, on a socket of its own that
/// the caller reads or drops (a client that goes away).
fn post_raw(gw: &Gateway, extra: &str, body: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[test]
fn a_request_the_budget_cannot_cover_gets_402_and_never_reaches_the_provider() {
    let mock = Mock::start();
    // $0.01 limit; claude-sonnet-4 output is $15/M: 1000 output tokens alone is $0.015.
    let (gw, admin) = start(&mock, &p1_with_budget("0.01", "day"));
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY)],
        &chat("claude-sonnet-4", 1000),
    );
    assert_eq!(r.status, 402, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["type"], "budget_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("day budget of $0.01"), "{msg}");
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("claude-sonnet-4", 1000),
    );
    assert_eq!(r.status, 402);
    assert_eq!(
        r.json()["error"]["code"],
        "budget_exceeded",
        "OpenAI shape on OpenAI routes"
    );
    assert_eq!(mock.count(), 0);
    let s = project(admin, "p1");
    assert_eq!(s["reserved_usd"], 0.0, "a refused request holds nothing");
    eventually("reservation gauge published", || {
        get(&format!("http://127.0.0.1:{admin}/metrics"), &[])
            .body
            .lines()
            .any(|l| l == "tollgate_budget_reserved_usd{project=\"p1\"} 0")
    });
}

#[test]
fn policy_blocks_each_carry_their_code_and_never_reach_the_provider() {
    let mock = Mock::start();
    let (gw, _admin) = start(
        &mock,
        &format!(
            r#"[[projects]]
id = "p1"
keys = ["{KEY}"]
allow_models = ["gpt-4o-mini", "claude-*", "unpriced-*"]
deny_models = ["claude-opus-*"]
max_tokens = 100
block_secrets = true
block_patterns = ["(?i)internal use only"]
unpriced = "block"
"#
        ),
    );
    let aws = format!("my key is AKIA{}", "ABCDEFGHIJKLMNOP");
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/chat/completions", chat("gpt-4o", 5), "model_not_allowed"),
        ("/v1/messages", chat("claude-opus-4", 5), "model_not_allowed"),
        ("/v1/chat/completions", chat("gpt-4o-mini", 101), "max_tokens_exceeded"),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": aws}]}).to_string(),
            "secret_detected",
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4", "max_tokens": 5, "system": "INTERNAL use only", "messages": []})
                .to_string(),
            "pattern_blocked",
        ),
    ];
    for (path, body, code) in cases {
        let r = post(&gw.url(path), &[("x-api-key", KEY)], &body);
        assert_eq!(r.status, 403, "{code}: {}", r.body);
        let v = r.json();
        assert_eq!(
            v["error"]["code"], code,
            "both shapes carry the code: {}",
            r.body
        );
        assert_eq!(v["error"]["type"], "policy_blocked");
    }
    assert_eq!(mock.count(), 0, "no blocked request reached the provider");
    // Unpriced: needs a route.
    drop(gw);
    let std = standard_config(&mock);
    let cut = std.find("[[projects]]").unwrap();
    let body = format!(
        "{}[[routes]]\nprefix = \"unpriced-\"\nprovider = \"openai\"\n[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\n[[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\nunpriced = \"allow\"\n",
        &std[..cut]
    );
    let (gw, _admin) = start_admin(&body);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("unpriced-model", 5),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("unpriced_model")),
        "{}",
        r.body
    );
    assert_eq!(mock.count(), 0);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY2)],
        &chat("unpriced-model", 5),
    );
    assert_eq!(r.status, 200, "unpriced = \"allow\" forwards: {}", r.body);
    let line = gw.access_line(&r.request_id());
    assert_eq!(
        field(&line, "cost_usd"),
        "-",
        "recorded with unknown cost: {line}"
    );
}

#[test]
fn a_project_cap_is_injected_when_the_request_sets_none() {
    let mock = Mock::start();
    let (gw, _admin) = start(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nmax_tokens = 7\n"),
    );
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &body,
    );
    assert_eq!(r.status, 200);
    let up: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(up["max_completion_tokens"], 7);
    assert_eq!(r.json()["usage"]["completion_tokens"], 7);
}

#[test]
fn rpm_over_the_limit_is_429_with_retry_after() {
    let mock = Mock::start();
    let (gw, _admin) = start(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nrate_limit = {{ rpm = 3 }}\n"),
    );
    for _ in 0..3 {
        assert_eq!(
            post(
                &gw.url("/v1/chat/completions"),
                &[("x-api-key", KEY)],
                &chat("gpt-4o-mini", 2)
            )
            .status,
            200
        );
    }
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY)],
        &chat("claude-sonnet-4", 2),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "rate_limited");
    let ra: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ra));
    assert_eq!(
        mock.count(),
        3,
        "the limited request did not reach the provider"
    );
}

#[test]
fn concurrent_requests_never_push_spend_past_the_limit() {
    let mock = Mock::start();
    // Worst case of one request: prompt bound (~ hundreds of tokens) at $3/M + 1000 output at
    // $15/M ≈ $0.0165. A $0.10 budget fits a handful; 200 requests race for it.
    let limit = 0.10;
    let (mut gw, admin) = start(&mock, &p1_with_budget(&limit.to_string(), "total"));
    let url = gw.url("/v1/messages");
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = try_request(
                    "POST",
                    &url,
                    &[
                        ("x-api-key", KEY),
                        ("x-mock-latency-ms", "300"),
                        ("x-mock-tokens", "1000"),
                    ],
                    Some(chat("claude-sonnet-4", 1000).as_bytes()),
                );
                r.map(|r| r.status).unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(ok + refused, 200, "only 200 or 402: {statuses:?}");
    assert!(
        ok >= 5,
        "the budget fits at least 5 worst cases; admitted {ok}"
    );
    eventually("reservations released", || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent <= limit, "spent {spent} > limit {limit}");
    assert!(spent > 0.0);
    // And the durable record agrees after a graceful stop.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let db = rusqlite::Connection::open(gw.dir.path().join("ledger.db")).unwrap();
    let stored: i64 = db
        .query_row(
            "SELECT spent_nanos FROM spend WHERE project = 'p1' AND period = 'total'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((stored as f64 / 1e9) <= limit);
    assert!(
        ((stored as f64 / 1e9) - spent).abs() < 1e-6,
        "memory {spent} vs disk {stored}"
    );
}

#[test]
fn every_way_a_request_ends_releases_its_reservation() {
    let mock = Mock::start();
    let (gw, admin) = start(&mock, &p1_with_budget("100.0", "month"));
    let stream =
        json!({"model": "claude-sonnet-4", "max_tokens": 20, "stream": true, "messages": []})
            .to_string();
    let json_body = chat("claude-sonnet-4", 20);
    // (what, extra headers, body)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a String);
    let cases: Vec<Case> = vec![
        ("json", vec![], &json_body),
        ("stream", vec![], &stream),
        ("upstream 500", vec![("x-mock-status", "500")], &json_body),
        (
            "upstream cut mid-stream",
            vec![("x-mock-fault", "close-mid-stream")],
            &stream,
        ),
        (
            "upstream silent (504)",
            vec![("x-mock-fault", "hang")],
            &json_body,
        ),
    ];
    let mut last_spent = 0.0;
    for (what, extra, body) in cases {
        let mut h = vec![("x-api-key", KEY), ("x-mock-tokens", "20")];
        h.extend(extra);
        let _ = try_request("POST", &gw.url("/v1/messages"), &h, Some(body.as_bytes()));
        eventually(what, || project(admin, "p1")["reserved_usd"] == 0.0);
        let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
        match what {
            "upstream 500" | "upstream silent (504)" => {
                assert_eq!(spent, last_spent, "{what}: nothing charged")
            }
            _ => assert!(spent > last_spent, "{what}: charged for what was produced"),
        }
        last_spent = spent;
    }
    // The client disconnects in the middle of a slow stream.
    {
        use std::io::Read;
        let body =
            json!({"model": "claude-sonnet-4", "max_tokens": 50, "stream": true, "messages": []})
                .to_string();
        let mut s = post_raw(
            &gw,
            "x-mock-chunk-delay-ms: 50\r\nx-mock-tokens: 50\r\n",
            &body,
        );
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).unwrap();
        // Not synchronisation but the behaviour under test: a client that reads the first
        // bytes, stays a while (a few more 50 ms chunks are produced) and then goes away.
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
    }
    eventually("client disconnect released", || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    eventually("client disconnect charged", || {
        project(admin, "p1")["spent_usd"].as_f64().unwrap() > last_spent
    });
    // A client going away is routine: no error-level line for it.
    let log = gw.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Downstream")),
        "a client disconnect was logged as an error:\n{log}"
    );
}

#[test]
fn spend_and_freezes_survive_a_restart_and_kill_9_loses_at_most_one_flush() {
    let mock = Mock::start();
    let projects = format!(
        "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 100.0, period = \"month\" }}\n[[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\n"
    );
    let body = body_with_projects(&mock, &projects);
    let (mut gw, admin) = start_admin(&body);
    for _ in 0..3 {
        assert_eq!(
            post(
                &gw.url("/v1/messages"),
                &[("x-api-key", KEY)],
                &chat("claude-sonnet-4", 10)
            )
            .status,
            200
        );
    }
    let r = admin_post(admin, "/admin/projects/p2/freeze");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY2)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("project_frozen"))
    );
    eventually("settled", || project(admin, "p1")["reserved_usd"] == 0.0);
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);
    // Wait until the spend and the freeze are committed, then kill -9: nothing committed is
    // lost. The proof is the store itself (WAL mode: a second reader sees each commit), not
    // `tollgate_store_queued_writes`: that gauge is sampled every 2 s, so a 0 read now may
    // predate these writes.
    let db = gw.dir.path().to_path_buf();
    eventually("spend and freeze committed", || {
        let Ok(c) = rusqlite::Connection::open(db.join("ledger.db")) else {
            return false;
        };
        let nanos: i64 = c
            .query_row(
                "SELECT COALESCE(MIN(spent_nanos), 0) FROM spend WHERE project = 'p1'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let frozen: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM freezes WHERE project = 'p2' AND frozen = 1",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        (nanos as f64 / 1e9 - spent).abs() < 1e-9 && frozen == 1
    });
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5));

    // The killed gateway's directory (and its store) lives until `gw` drops at the end.
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{ADMIN_EXTRA}[store]\npath = \"{}\"\n{body}",
        db.join("ledger.db").display()
    );
    let cfg_path = db.join("restart.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut restarted = Gateway::spawn_on(&cfg_path, &[], &env_with_admin());
    restarted.wait_listening();
    let admin2 = restarted.admin_port();
    let base = format!("http://{}", restarted.addr);
    assert_eq!(
        get(&format!("{base}/healthz"), &[]).status,
        200,
        "restarted"
    );
    let s = project(admin2, "p1");
    assert!(
        (s["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "spend restored: {s} vs {spent}"
    );
    assert_eq!(project(admin2, "p2")["frozen"], true, "the freeze survived");
    let r = post(
        &format!("{base}/v1/chat/completions"),
        &[("x-api-key", KEY2)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        admin_post(admin2, "/admin/projects/p2/unfreeze").status,
        200
    );
    let r = post(
        &format!("{base}/v1/chat/completions"),
        &[("x-api-key", KEY2)],
        &chat("gpt-4o-mini", 5),
    );
    assert_eq!(r.status, 200, "unfreeze takes effect on the next request");
    drop(restarted);
}

#[test]
fn decisions_are_recorded_for_allowed_and_blocked_requests() {
    let mock = Mock::start();
    let (gw, admin) = start(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nblock_secrets = true\n"),
    );
    let ok = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &chat("gpt-4o-mini", 3),
    );
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
    let blocked = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": pem}]})
            .to_string(),
    );
    assert_eq!(blocked.status, 403);
    let ids = [ok.request_id(), blocked.request_id()];
    eventually("both recorded", || {
        let r = admin_get(admin, "/admin/decisions?project=p1&limit=10");
        r.json()["decisions"].as_array().map_or(0, |d| d.len()) >= 2
    });
    let r = admin_get(admin, "/admin/decisions?project=p1&limit=10");
    let d = r.json()["decisions"].as_array().unwrap().clone();
    assert_eq!(d[0]["id"], ids[1].as_str(), "newest first");
    assert_eq!(d[0]["decision"], "block");
    assert_eq!(d[0]["reason"], "secret_detected");
    assert_eq!(d[0]["usage_source"], "none");
    assert_eq!(d[0]["status"], 403);
    assert_eq!(d[1]["decision"], "allow");
    assert_eq!(d[1]["usage_source"], "reported");
    assert_eq!(d[1]["completion_tokens"], 3);
    assert!(d[1]["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(d[1]["project"], "p1");
}

#[test]
fn an_idle_gateway_stops_promptly_on_sigterm_and_keeps_what_it_charged() {
    let mock = Mock::start();
    let extra = format!("{ADMIN_EXTRA}grace_period_s = 30");
    let mut gw = Gateway::start_with(&standard_config(&mock), &extra, &env_with_admin());
    let admin_port = gw.admin_port();
    assert_eq!(
        post(
            &gw.url("/v1/chat/completions"),
            &[("x-api-key", KEY)],
            &chat("gpt-4o-mini", 3)
        )
        .status,
        200
    );
    eventually("settled", || {
        project(admin_port, "p1")["reserved_usd"] == 0.0
    });
    // The timing is the behaviour: an idle gateway must not sit out its 30 s grace period.
    // 20 s is generous for a loaded machine and still well short of the grace.
    let started = std::time::Instant::now();
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "exit 0 without waiting the 30 s grace:\n{}",
        gw.log()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let db = rusqlite::Connection::open(gw.dir.path().join("ledger.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM decisions WHERE project = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the decision record was flushed before exit");
}

#[test]
fn a_client_that_goes_away_is_recorded_as_client_closed_not_as_a_block() {
    use std::io::Read;
    let mock = Mock::start();
    let (gw, admin) = start(&mock, &p1_with_budget("100.0", "month"));
    let newest = || {
        let v = admin_get(admin, "/admin/decisions?project=p1&limit=1").json();
        v["decisions"][0].clone()
    };
    // Before the answer: the provider takes 600 ms, the client leaves after 150 (an SDK
    // timeout, a cancelled agent turn). The request did reach the provider.
    let s = post_raw(
        &gw,
        "x-mock-latency-ms: 600\r\n",
        &chat("claude-sonnet-4", 20),
    );
    std::thread::sleep(Duration::from_millis(150));
    drop(s);
    eventually("the record of the client that left early", || {
        newest()["reason"] == "client_closed"
    });
    let r = newest();
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["status"], 499, "{r}");
    assert_eq!(r["stream"], false, "{r}");
    assert_ne!(r["provider"], Value::Null, "{r}");
    // No answer, so no usage: charged nothing, as for a provider that went silent.
    assert_eq!(r["usage_source"], "none", "{r}");
    assert_eq!(r["cost_usd"], 0.0, "{r}");
    eventually("released", || project(admin, "p1")["reserved_usd"] == 0.0);
    assert_eq!(project(admin, "p1")["spent_usd"], 0.0);

    // Mid-stream: the provider's 200 was sent, so the record keeps it.
    let stream =
        json!({"model": "claude-sonnet-4", "max_tokens": 50, "stream": true, "messages": []})
            .to_string();
    let mut s = post_raw(
        &gw,
        "x-mock-chunk-delay-ms: 50\r\nx-mock-tokens: 50\r\n",
        &stream,
    );
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-tollgate-request-id: "))
        .map(|v| v.trim().to_string())
        .expect("the answer's request id");
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let r = decision(admin, &id);
    assert_eq!(r["reason"], "client_closed", "{r}");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["stream"], true, "{r}");
    // What was streamed before the client left is charged.
    assert!(r["cost_usd"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
}
