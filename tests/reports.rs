//! The reports API end to end (SPEC "Console and reports", issue 16): `/admin/spend` in every
//! grouping and bucket, JSON and CSV, against the ledger (`/admin/projects`) and the sum of the
//! decision records; `/admin/overview`; the decision-log filters; the live tail; the read-only
//! viewer token. The real binary on loopback against the mock provider.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const VIEWER: &str = "viewer-token-for-tests";
const KEY3: &str = "tg_test_key_project_three_03";

fn env() -> Vec<(&'static str, &'static str)> {
    let mut e = env_with_admin();
    e.push(("TEST_VIEWER_TOKEN", VIEWER));
    e
}

fn start(mock: &Mock) -> Gateway {
    let projects = format!(
        "[[teams]]\nid = \"payments\"\n\
         [[projects]]\nid = \"p1\"\nteam = \"payments\"\nkeys = [\"{KEY}\", {{ key = \"{KEY3}\", name = \"ci\" }}]\n\
         [[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\nallow_models = [\"claude-*\"]\n"
    );
    Gateway::start_with(
        &body_with_projects(mock, &projects),
        &format!("{ADMIN_EXTRA}viewer_token_env = \"TEST_VIEWER_TOKEN\"\n"),
        &env(),
    )
}

fn nanos(v: &Value) -> u64 {
    let f = v.as_f64().unwrap_or_else(|| panic!("not an amount: {v}"));
    (f * 1e9).round() as u64
}

fn viewer_get(port: u16, path: &str) -> Resp {
    get(
        &admin_url(port, path),
        &[("authorization", &format!("Bearer {VIEWER}"))],
    )
}

/// Mixed traffic: two projects, two keys, users, tags, both providers, a stream, blocks.
/// Returns the request ids sent.
fn traffic(gw: &Gateway) -> Vec<String> {
    let mut ids = Vec::new();
    let chat = |key: &str, user: Option<&str>, tags: Option<&str>, stream: bool| {
        let mut h = vec![("x-api-key", key), ("x-mock-tokens", "7")];
        if let Some(u) = user {
            h.push(("x-tollgate-user", u));
        }
        if let Some(t) = tags {
            h.push(("x-tollgate-tags", t));
        }
        let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20});
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        post(&gw.url("/v1/chat/completions"), &h, &body.to_string())
    };
    for (key, user, tags, stream) in [
        (KEY, Some("alice"), Some("env=prod,feature=search"), false),
        (KEY, Some("alice"), Some("env=prod"), true),
        (KEY, Some("bob,\"the\" builder"), Some("env=dev"), false),
        (KEY, None, None, false),
        (KEY3, Some("ci-runner"), Some("env=ci"), false),
        // A spreadsheet formula: its CSV cell gets a leading quote.
        (KEY3, Some("=2+3"), Some("env=ci"), false),
    ] {
        let r = chat(key, user, tags, stream);
        assert_eq!(r.status, 200, "{}", r.body);
        ids.push(r.request_id());
    }
    let m = post(
        &gw.url("/v1/messages"),
        &[
            ("x-api-key", KEY2),
            ("anthropic-version", "2023-06-01"),
            ("x-mock-tokens", "9"),
        ],
        &json!({"model": "claude-sonnet-4", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    );
    assert_eq!(m.status, 200, "{}", m.body);
    ids.push(m.request_id());
    // Blocked: p2 may not use gpt models.
    for _ in 0..2 {
        let b = chat_as(gw, KEY2, "gpt-4o-mini", 10);
        assert_eq!(b.status, 403, "{}", b.body);
        ids.push(b.request_id());
    }
    ids
}

/// Every decision record of the gateway, once all of `ids` are in the store.
fn records(admin: u16, ids: &[String]) -> Vec<Value> {
    let mut all = Vec::new();
    eventually("every record in the store", || {
        let v = admin_get(admin, "/admin/decisions?limit=1000").json();
        all = v["decisions"].as_array().cloned().unwrap_or_default();
        ids.iter().all(|id| all.iter().any(|r| &r["id"] == id))
    });
    all
}

fn report(admin: u16, q: &str) -> Value {
    let r = admin_get(admin, &format!("/admin/spend?{q}"));
    assert_eq!(r.status, 200, "{q}: {}", r.body);
    r.json()
}

#[test]
fn every_grouping_and_bucket_adds_up_to_the_ledger_and_the_records_to_the_nano_dollar() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    let ids = traffic(&gw);
    let recs = records(admin, &ids);
    let sum = |f: &dyn Fn(&Value) -> bool| -> u64 {
        recs.iter()
            .filter(|r| f(r))
            .map(|r| nanos(&r["cost_usd"]))
            .sum()
    };
    let total = sum(&|_| true);
    assert!(total > 0);
    let ledger: u64 = ["p1", "p2"]
        .iter()
        .map(|p| nanos(&project(admin, p)["spent_usd"]))
        .sum();
    assert_eq!(total, ledger, "the records sum to the ledger");
    let groups = [
        "",
        "project",
        "team",
        "model",
        "provider",
        "key",
        "user",
        "tag:env",
        "project,model",
        "project,user,tag:env,tag:feature",
    ];
    for g in groups {
        for b in ["", "hour", "day", "month"] {
            let q = format!("group_by={g}&bucket={b}");
            let v = report(admin, &q);
            let rows = v["rows"].as_array().expect("rows");
            let row_sum: u64 = rows.iter().map(|r| nanos(&r["cost_usd"])).sum();
            assert_eq!(row_sum, total, "{q}: rows add up to the records");
            assert_eq!(nanos(&v["totals"]["cost_usd"]), total, "{q}: totals");
            assert_eq!(
                v["totals"]["requests"].as_u64(),
                Some(recs.len() as u64),
                "{q}: every record counted"
            );
            assert_eq!(v["totals"]["blocked"], 2, "{q}");
            for r in rows {
                assert_eq!(r.get("bucket").is_some(), !b.is_empty(), "{q}: {r}");
                for f in g.split(',').filter(|f| !f.is_empty()) {
                    assert!(r.get(f).is_some(), "{q}: {f} missing in {r}");
                }
            }
            // CSV: the same rows, the same numbers.
            let csv = admin_get(admin, &format!("/admin/spend?{q}&format=csv"));
            assert_eq!(csv.status, 200);
            assert!(csv
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/csv"));
            let parsed = parse_csv(&csv.body);
            assert_eq!(parsed.len(), rows.len() + 1, "{q}: header + rows");
            let header = &parsed[0];
            for (line, row) in parsed[1..].iter().zip(rows) {
                for (name, cell) in header.iter().zip(line) {
                    match &row[name.as_str()] {
                        Value::Null => assert_eq!(cell, "", "{q}: CSV {name}"),
                        Value::String(s) if s.starts_with('=') => {
                            assert_eq!(*cell, format!("'{s}"), "{q}: CSV {name}")
                        }
                        Value::String(s) => assert_eq!(cell, s, "{q}: CSV {name}"),
                        n => assert_eq!(cell.parse::<f64>().ok(), n.as_f64(), "{q}: CSV {name}"),
                    }
                }
            }
        }
    }
    // Per group, against the records.
    let by = |q: &str, field: &str| -> BTreeMap<String, u64> {
        report(admin, q)["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[field].as_str().unwrap_or("-").to_string(),
                    nanos(&r["cost_usd"]),
                )
            })
            .collect()
    };
    let p = by("group_by=project", "project");
    assert_eq!(p["p1"], nanos(&project(admin, "p1")["spent_usd"]));
    assert_eq!(p["p2"], nanos(&project(admin, "p2")["spent_usd"]));
    let users = by("group_by=user", "user");
    assert_eq!(users["alice"], sum(&|r| r["user"] == "alice"));
    assert_eq!(
        users["bob,\"the\" builder"],
        sum(&|r| r["user"] == "bob,\"the\" builder")
    );
    let keys = by("group_by=key", "key");
    assert_eq!(keys["ci"], sum(&|r| r["key_name"] == "ci"));
    let env = by("group_by=tag:env", "tag:env");
    assert_eq!(env["prod"], sum(&|r| r["tags"]["env"] == "prod"));
    assert_eq!(env["ci"], sum(&|r| r["tags"]["env"] == "ci"));
    let teams = by("group_by=team", "team");
    assert_eq!(teams["payments"], p["p1"]);
    let providers = by("group_by=provider", "provider");
    assert_eq!(providers["anthropic"], p["p2"]);
    // A range that holds none of it.
    let empty = report(admin, "from=2020-01-01&to=2020-02-01&group_by=project");
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["totals"]["requests"], 0);
    // One project only.
    let only = report(admin, "project=p2&group_by=model");
    assert_eq!(nanos(&only["totals"]["cost_usd"]), p["p2"]);
}

/// RFC 4180, enough for the reports (quoted cells with doubled quotes and commas).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let mut cells = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', false) if cur.is_empty() => quoted = true,
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', true) => quoted = false,
                (',', false) => cells.push(std::mem::take(&mut cur)),
                (c, _) => cur.push(c),
            }
        }
        cells.push(cur);
        rows.push(cells);
    }
    rows
}

#[test]
fn bad_report_parameters_are_a_clear_400() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    for (q, needle) in [
        ("group_by=color", "unknown field"),
        ("bucket=week", "bucket must be"),
        ("from=last-tuesday", "from must be"),
        ("from=2026-11-03&to=2026-11-02", "before"),
        ("format=xml", "format must be"),
    ] {
        let r = admin_get(admin, &format!("/admin/spend?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        let msg = r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(msg.contains(needle), "{q}: {msg}");
    }
    for q in ["decision=maybe", "tag=novalue", "from=soon"] {
        let r = admin_get(admin, &format!("/admin/decisions?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }
    let r = get(&admin_url(admin, "/admin/spend"), &[]);
    assert_eq!(r.status, 401);
}

#[test]
fn the_decision_log_filters_by_decision_reason_model_user_tag_and_time() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    let ids = traffic(&gw);
    let recs = records(admin, &ids);
    let ask = |q: &str| -> Vec<Value> {
        let r = admin_get(admin, &format!("/admin/decisions?limit=1000&{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()["decisions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let count = |f: &dyn Fn(&Value) -> bool| recs.iter().filter(|r| f(r)).count();
    let blocked = ask("decision=block");
    assert_eq!(blocked.len(), 2);
    assert!(blocked.iter().all(|r| r["reason"] == "model_not_allowed"));
    assert_eq!(ask("reason=model_not_allowed&project=p2").len(), 2);
    assert_eq!(
        ask("decision=allow").len(),
        count(&|r| r["decision"] == "allow")
    );
    assert_eq!(ask("model=claude-sonnet-4").len(), 1);
    assert_eq!(ask("user=alice").len(), 2);
    assert_eq!(ask("user=bob%2C%22the%22%20builder").len(), 1);
    assert_eq!(ask("tag=env:prod").len(), 2);
    assert_eq!(ask("tag=feature:search&user=alice").len(), 1);
    assert_eq!(ask("from=2020-01-01&to=2020-01-02").len(), 0);
    assert_eq!(ask("from=2020-01-01").len(), recs.len());
    // Filtered pages page on.
    let first = admin_get(admin, "/admin/decisions?limit=1&decision=allow").json();
    let next = first["next"].as_str().expect("a next cursor").to_string();
    let second = admin_get(
        admin,
        &format!("/admin/decisions?limit=1&decision=allow&{next}"),
    )
    .json();
    assert_ne!(first["decisions"][0]["id"], second["decisions"][0]["id"]);
    assert_eq!(second["decisions"][0]["decision"], "allow");
}

#[test]
fn the_overview_answers_the_first_view_in_one_request() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    let ids = traffic(&gw);
    let recs = records(admin, &ids);
    let total: u64 = recs.iter().map(|r| nanos(&r["cost_usd"])).sum();
    let v = admin_get(admin, "/admin/overview").json();
    assert_eq!(v["role"], "admin");
    assert_eq!(v["instance"], Value::Null);
    let hourly = v["hourly"].as_array().expect("hourly");
    assert_eq!(hourly.len(), 24);
    let last = hourly.last().unwrap();
    assert_eq!(last["requests"].as_u64(), Some(recs.len() as u64));
    assert_eq!(nanos(&v["totals"]["hour"]["cost_usd"]), total);
    assert_eq!(nanos(&v["totals"]["day"]["cost_usd"]), total);
    assert_eq!(v["totals"]["day"]["blocked"], 2);
    assert_eq!(
        v["totals"]["day"]["allowed"].as_u64(),
        Some(recs.len() as u64 - 2)
    );
    assert_eq!(
        v["top_reasons"],
        json!([{"reason": "model_not_allowed", "count": 2}])
    );
    assert_eq!(v["tags"], json!(["env", "feature"]));
    let projects = v["projects"].as_array().expect("projects");
    assert_eq!(projects.len(), 2);
    for p in projects {
        assert!(nanos(&p["projection_usd"]) >= nanos(&p["spent_usd"]), "{p}");
    }
    assert!(v["providers"]["providers"].as_array().is_some());
    assert_eq!(v["fleet"], Value::Null);
    // The same projection in /admin/projects.
    let p1 = project(admin, "p1");
    assert!(nanos(&p1["projection_usd"]) > 0);
}

#[test]
fn the_viewer_token_reads_everything_and_changes_nothing() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    for path in [
        "/admin/overview",
        "/admin/projects",
        "/admin/spend?group_by=project",
        "/admin/decisions",
        "/admin/providers",
        "/admin/teams",
        "/admin/users?project=p1",
    ] {
        let r = viewer_get(admin, path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(
        viewer_get(admin, "/admin/overview").json()["role"],
        "viewer"
    );
    let auth = format!("Bearer {VIEWER}");
    for path in ["/admin/projects/p1/freeze", "/admin/reload"] {
        let r = post(&admin_url(admin, path), &[("authorization", &auth)], "");
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "read_only_token");
    }
    assert_eq!(project(admin, "p1")["frozen"], false, "nothing was frozen");
    let wrong = get(
        &admin_url(admin, "/admin/overview"),
        &[("authorization", "Bearer viewer-token-for-test")],
    );
    assert_eq!(wrong.status, 401);
    // The console itself needs no token and carries its CSP.
    let page = get(&admin_url(admin, "/"), &[]);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!page.body.contains(ADMIN) && !page.body.contains(VIEWER));
}

/// An open `GET /admin/decisions/stream`, read line by line.
struct Tail {
    lines: BufReader<TcpStream>,
}

impl Tail {
    fn open(port: u16, query: &str, token: &str) -> (u16, Tail) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /admin/decisions/stream{query} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s);
        let mut status = String::new();
        lines.read_line(&mut status).unwrap();
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        loop {
            let mut h = String::new();
            if lines.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        (code, Tail { lines })
    }

    /// The next `data:` payload of an event (chunk-size lines and comments skipped).
    fn next_event(&mut self) -> Value {
        loop {
            let mut l = String::new();
            let n = self.lines.read_line(&mut l).expect("read the tail");
            assert!(n > 0, "the tail ended");
            if let Some(d) = l.trim_end().strip_prefix("data: ") {
                return serde_json::from_str(d).expect("event JSON");
            }
        }
    }

    fn saw_connected(&mut self) -> bool {
        for _ in 0..4 {
            let mut l = String::new();
            if self.lines.read_line(&mut l).unwrap_or(0) == 0 {
                return false;
            }
            if l.starts_with(": connected") {
                return true;
            }
        }
        false
    }
}

#[test]
fn the_live_tail_streams_each_new_record_and_filters_by_project() {
    let mock = Mock::start();
    let gw = start(&mock);
    let admin = gw.admin_port();
    let (code, mut all) = Tail::open(admin, "", ADMIN);
    assert_eq!(code, 200);
    assert!(all.saw_connected());
    let (code, mut p2) = Tail::open(admin, "?project=p2", VIEWER);
    assert_eq!(code, 200, "the viewer may watch");
    assert!(p2.saw_connected());
    let r = chat_as(&gw, KEY, "gpt-4o-mini", 10);
    assert_eq!(r.status, 200);
    let e = all.next_event();
    assert_eq!(e["id"], r.request_id().as_str());
    assert_eq!(e["project"], "p1");
    let b = chat_as(&gw, KEY2, "gpt-4o-mini", 10);
    assert_eq!(b.status, 403);
    let e = all.next_event();
    assert_eq!(e["id"], b.request_id().as_str());
    let e = p2.next_event();
    assert_eq!(
        e["id"],
        b.request_id().as_str(),
        "p1's record was not sent to the p2 tail"
    );
    assert_eq!(e["decision"], "block");
    let (code, _) = Tail::open(admin, "", "wrong");
    assert_eq!(code, 401);
    let (code, _) = Tail::open(admin, "?project=nope", ADMIN);
    assert_eq!(code, 404);
}
