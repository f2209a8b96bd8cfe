//! Operating Tollgate, against the real binary and the mock provider: the admin API and its
//! auth, the metrics and their labels, config reloads (SIGHUP and the admin API), graceful
//! stop, systemd's readiness protocol and the zero-downtime binary upgrade.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "operate-admin-token-0123";
const KEY3: &str = "tg_test_key_project_three_0003";

fn env_with_admin() -> Vec<(&'static str, &'static str)> {
    let mut e = provider_env();
    e.push(("TEST_ADMIN_TOKEN", ADMIN));
    e
}

/// The standard config with its `[[projects]]` replaced.
fn body_with_projects(mock: &Mock, projects: &str) -> String {
    let std = standard_config(mock);
    let cut = std
        .find("[[projects]]")
        .expect("projects in the standard config");
    format!("{}{projects}", &std[..cut])
}

fn admin_extra(admin_port: u16) -> String {
    format!(
        "admin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token_env = \"TEST_ADMIN_TOKEN\"\ngrace_period_s = 5"
    )
}

/// A gateway with an admin listener and the admin token set.
fn start_admin(body: &str) -> (Gateway, u16) {
    let admin_port = free_port();
    let gw = Gateway::start_with(body, &admin_extra(admin_port), &env_with_admin());
    (gw, admin_port)
}

fn admin_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn admin_get(port: u16, path: &str) -> Resp {
    let auth = format!("Bearer {ADMIN}");
    get(&admin_url(port, path), &[("authorization", &auth)])
}

fn admin_post(port: u16, path: &str) -> Resp {
    let auth = format!("Bearer {ADMIN}");
    post(&admin_url(port, path), &[("authorization", &auth)], "")
}

fn project(port: u16, id: &str) -> Value {
    let r = admin_get(port, "/admin/projects");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no project {id} in {}", r.body))
}

fn chat(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens})
        .to_string()
}

fn chat_as(gw: &Gateway, key: &str, model: &str, max_tokens: u64) -> Resp {
    post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", key)],
        &chat(model, max_tokens),
    )
}

/// Wait (bounded) until `f` holds.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replace the config file in one step (write a sibling, rename over it).
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

fn p3_project() -> String {
    format!("\n[[projects]]\nid = \"p3\"\nkeys = [\"{KEY3}\"]\n")
}

/// A route to a provider that does not exist: `check` rejects the file.
const BAD_ROUTE: &str = "\n[[routes]]\nprefix = \"zzz-\"\nprovider = \"no-such-provider\"\n";

// ---------------------------------------------------------------------------------------------
// Prometheus text parsing

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_string(), parse_labels(body, line))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(mut s: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (k, rest) = s
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in {line:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(k.to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

fn scrape(admin_port: u16) -> Vec<Sample> {
    let r = get(&admin_url(admin_port, "/metrics"), &[]);
    assert_eq!(r.status, 200);
    parse_metrics(&r.body)
}

/// The value of the series with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn series<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.name == name)
}

/// `tollgate_requests_total` over all series. The gateway's own `GET /healthz` (the harness's
/// readiness probe) is not traffic and must not be counted.
fn proxied_requests(m: &[Sample]) -> f64 {
    let probes = series(m, "tollgate_requests_total").filter(|s| {
        s.labels.get("project").is_some_and(|p| p == "other")
            && s.labels.get("status").is_some_and(|p| p == "200")
    });
    assert_eq!(
        probes.count(),
        0,
        "health probes must not appear as requests"
    );
    series(m, "tollgate_requests_total").map(|s| s.value).sum()
}

fn reloads(admin_port: u16, result: &str) -> f64 {
    value(
        &scrape(admin_port),
        "tollgate_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Admin API

#[test]
fn every_admin_route_needs_the_token_and_metrics_and_healthz_do_not() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    let routes = [
        ("GET", "/admin/projects"),
        ("POST", "/admin/projects/p1/freeze"),
        ("POST", "/admin/projects/p1/unfreeze"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/decisions?project=p1&limit=5"),
    ];
    let wrong = "Bearer not-the-admin-token".to_string();
    let raw = ADMIN.to_string(); // the token without the Bearer scheme
    for (method, path) in routes {
        for (what, auth) in [
            ("no token", None),
            ("wrong token", Some(&wrong)),
            ("no Bearer scheme", Some(&raw)),
        ] {
            let headers: Vec<(&str, &str)> = auth
                .map(|a| vec![("authorization", a.as_str())])
                .unwrap_or_default();
            let body = (method == "POST").then_some(&b""[..]);
            let r = try_request(method, &admin_url(admin, path), &headers, body).unwrap();
            assert_eq!(r.status, 401, "{what}: {method} {path}: {}", r.body);
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{r:?}"
            );
            assert_eq!(r.json()["error"]["type"], "unauthorized", "{}", r.body);
        }
    }
    // Refused calls changed nothing: no freeze, no reload.
    assert_eq!(project(admin, "p1")["frozen"], false);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    assert_eq!(reloads(admin, "ok") + reloads(admin, "error"), 0.0);

    // With the token every route answers.
    let auth = format!("Bearer {ADMIN}");
    for (method, path) in routes {
        let body = (method == "POST").then_some(&b""[..]);
        let r = try_request(
            method,
            &admin_url(admin, path),
            &[("authorization", &auth)],
            body,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r.json();
    }
    // Wrong method, unknown project, unknown admin path: JSON errors, still behind the token.
    let r = admin_get(admin, "/admin/reload");
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (405, json!("method_not_allowed"))
    );
    let r = admin_post(admin, "/admin/projects/nope/freeze");
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (404, json!("not_found"))
    );
    let r = admin_get(admin, "/admin/nothing-here");
    assert_eq!(r.status, 404);

    // No token needed for liveness and metrics.
    let r = get(&admin_url(admin, "/healthz"), &[]);
    assert_eq!(r.status, 200);
    let r = get(&admin_url(admin, "/metrics"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("# TYPE tollgate_requests_total counter"));
    drop(gw);
}

#[test]
fn without_the_token_variable_the_admin_api_is_off_but_metrics_and_healthz_serve() {
    let mock = Mock::start();
    let admin = free_port();
    // admin_token_env names TEST_ADMIN_TOKEN, which this process does not get.
    let gw = Gateway::start_with(
        &standard_config(&mock),
        &admin_extra(admin),
        &provider_env(),
    );
    let auth = format!("Bearer {ADMIN}");
    for (method, path) in [
        ("GET", "/admin/projects"),
        ("POST", "/admin/projects/p1/freeze"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/decisions"),
    ] {
        for headers in [vec![], vec![("authorization", auth.as_str())]] {
            let body = (method == "POST").then_some(&b""[..]);
            let r = try_request(method, &admin_url(admin, path), &headers, body).unwrap();
            assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
            let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                msg.contains("TEST_ADMIN_TOKEN"),
                "says how to enable it: {msg}"
            );
        }
    }
    // The refused freeze did nothing.
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    assert_eq!(get(&admin_url(admin, "/healthz"), &[]).status, 200);
    let m = scrape(admin);
    assert_eq!(
        value(
            &m,
            "tollgate_requests_total",
            &[
                ("project", "p1"),
                ("model", "gpt-4o-mini"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn a_freeze_blocks_the_very_next_request_and_an_unfreeze_lets_the_next_one_through() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    assert_eq!(mock.count(), 1);

    let r = admin_post(admin, "/admin/projects/p1/freeze");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id": "p1", "frozen": true}));
    let r = chat_as(&gw, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "project_frozen");
    assert_eq!(
        mock.count(),
        1,
        "a frozen project's request never reaches the provider"
    );
    assert_eq!(project(admin, "p1")["frozen"], true);
    // Other projects are unaffected.
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY2)],
        &chat("claude-sonnet-4", 2),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let r = admin_post(admin, "/admin/projects/p1/unfreeze");
    assert_eq!(r.json(), json!({"id": "p1", "frozen": false}));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    assert_eq!(project(admin, "p1")["frozen"], false);
}

#[test]
fn decisions_page_newest_first_with_limit_and_the_next_cursor() {
    let mock = Mock::start();
    let digest2 = tollgate::hex(&tollgate::key_digest(KEY2.as_bytes()));
    let body = body_with_projects(
        &mock,
        &format!(
            "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nblock_secrets = true\n\
             [[projects]]\nid = \"p2\"\nkeys = [\"sha256:{digest2}\"]\n"
        ),
    );
    let (gw, admin) = start_admin(&body);
    let mut ids = Vec::new();
    for i in 0..5 {
        // Alternate allowed and blocked (p1 may not send a secret) requests.
        let r = if i % 2 == 0 {
            chat_as(&gw, KEY, "gpt-4o-mini", 2)
        } else {
            let pem =
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
            post(
                &gw.url("/v1/chat/completions"),
                &[("x-api-key", KEY)],
                &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": pem}]})
                    .to_string(),
            )
        };
        ids.push(r.request_id());
    }
    // Another project's decision must not show up in p1's pages.
    let other = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY2)],
        &chat("claude-sonnet-4", 2),
    );
    assert_eq!(other.status, 200);
    let list = |q: &str| -> Value {
        let r = admin_get(admin, &format!("/admin/decisions?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    eventually("six decisions recorded", Duration::from_secs(10), || {
        list("limit=100")["decisions"].as_array().unwrap().len() == 6
    });
    let all = list("project=p1&limit=100");
    let all_ids: Vec<String> = all["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    assert_eq!(all_ids, ids, "newest first, only p1");
    assert_eq!(
        all["next"],
        Value::Null,
        "fewer than the limit: no next page"
    );

    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "project=p1&limit=2".to_string();
    loop {
        let page = list(&query);
        let items = page["decisions"].as_array().unwrap();
        sizes.push(items.len());
        paged.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => query = format!("project=p1&limit=2&{next}"),
            None => break,
        }
        assert!(sizes.len() < 10, "paging does not end: {sizes:?}");
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(
        paged, ids,
        "the pages together are the whole list, in order, once"
    );

    for bad in ["limit=0", "limit=1001", "limit=ten"] {
        let r = admin_get(admin, &format!("/admin/decisions?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["type"], "invalid_request");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn every_spec_metric_is_exposed_with_its_labels_after_real_traffic() {
    let mock = Mock::start();
    let digest2 = tollgate::hex(&tollgate::key_digest(KEY2.as_bytes()));
    let body = body_with_projects(
        &mock,
        &format!(
            "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 10.0, period = \"month\" }}\n\
             [[projects]]\nid = \"p2\"\nkeys = [\"sha256:{digest2}\"]\nallow_models = [\"claude-*\"]\n"
        ),
    );
    let (gw, admin) = start_admin(&body);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 3).status, 200);
    assert_eq!(chat_as(&gw, KEY, "openai/gpt-4o-mini", 4).status, 200);
    let stream = json!({"model": "gpt-4o-mini", "messages": [], "stream": true, "max_tokens": 5});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        &stream.to_string(),
    );
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY2)],
        &chat("claude-sonnet-4", 6),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = chat_as(&gw, KEY2, "gpt-4o-mini", 2);
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
    assert_eq!(chat_as(&gw, "tg_not_a_key", "gpt-4o-mini", 2).status, 401);
    assert_eq!(admin_post(admin, "/admin/reload").status, 200);

    eventually("six requests counted", Duration::from_secs(5), || {
        proxied_requests(&scrape(admin)) == 6.0
    });
    eventually("reservations released", Duration::from_secs(5), || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    let m = scrape(admin);

    // Each SPEC metric is there with exactly the SPEC's label names.
    let spec: [(&str, &[&str]); 8] = [
        ("tollgate_requests_total", &["model", "project", "status"]),
        (
            "tollgate_decisions_total",
            &["decision", "project", "reason"],
        ),
        ("tollgate_tokens_total", &["kind", "model", "project"]),
        ("tollgate_spend_usd_total", &["model", "project"]),
        ("tollgate_budget_remaining_usd", &["project"]),
        ("tollgate_request_duration_seconds_count", &["provider"]),
        ("tollgate_upstream_first_byte_seconds_count", &["provider"]),
        ("tollgate_config_reloads_total", &["result"]),
    ];
    for (name, labels) in spec {
        let found: Vec<&Sample> = series(&m, name).collect();
        assert!(!found.is_empty(), "{name} missing");
        for s in found {
            let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(names, labels, "{name} labels: {s:?}");
        }
    }
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&m, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}"))
    };
    let req = "tollgate_requests_total";
    assert_eq!(
        v(
            req,
            &[
                ("project", "p1"),
                ("model", "gpt-4o-mini"),
                ("status", "200")
            ]
        ),
        3.0,
        "the stripped prefix is counted under the priced name"
    );
    assert_eq!(
        v(
            req,
            &[
                ("project", "p2"),
                ("model", "claude-sonnet-4"),
                ("status", "200")
            ]
        ),
        1.0
    );
    let blocked: Vec<&Sample> = series(&m, req)
        .filter(|s| s.labels["project"] == "p2" && s.labels["status"] == "403")
        .collect();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0].value, 1.0);
    assert_eq!(
        v(
            req,
            &[("project", "other"), ("model", "other"), ("status", "401")]
        ),
        1.0,
        "an unknown key is counted without inventing a project"
    );

    let dec = "tollgate_decisions_total";
    assert_eq!(
        v(
            dec,
            &[("project", "p1"), ("decision", "allow"), ("reason", "ok")]
        ),
        3.0
    );
    assert_eq!(
        v(
            dec,
            &[
                ("project", "p2"),
                ("decision", "block"),
                ("reason", "model_not_allowed")
            ]
        ),
        1.0
    );

    let tok = "tollgate_tokens_total";
    assert_eq!(
        v(
            tok,
            &[
                ("project", "p1"),
                ("model", "gpt-4o-mini"),
                ("kind", "completion")
            ]
        ),
        12.0,
        "3 + 4 + 5 completion tokens"
    );
    assert!(
        v(
            tok,
            &[
                ("project", "p1"),
                ("model", "gpt-4o-mini"),
                ("kind", "prompt")
            ]
        ) > 0.0
    );
    assert_eq!(
        v(
            tok,
            &[
                ("project", "p2"),
                ("model", "claude-sonnet-4"),
                ("kind", "completion")
            ]
        ),
        6.0
    );

    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    let spend = v(
        "tollgate_spend_usd_total",
        &[("project", "p1"), ("model", "gpt-4o-mini")],
    );
    assert!(
        spend > 0.0 && (spend - spent).abs() < 1e-5,
        "metric {spend} vs ledger {spent}"
    );
    let remaining = v("tollgate_budget_remaining_usd", &[("project", "p1")]);
    assert!(
        (remaining - (10.0 - spent)).abs() < 1e-5,
        "remaining {remaining}, spent {spent}"
    );
    assert_eq!(v("tollgate_budget_limit_usd", &[("project", "p1")]), 10.0);
    assert!(
        value(&m, "tollgate_budget_remaining_usd", &[("project", "p2")]).is_none(),
        "no budget, no remaining"
    );

    for (provider, n) in [("openai", 3.0), ("anthropic", 1.0)] {
        for h in [
            "tollgate_request_duration_seconds",
            "tollgate_upstream_first_byte_seconds",
        ] {
            assert_eq!(
                v(&format!("{h}_count"), &[("provider", provider)]),
                n,
                "{h}"
            );
            assert_eq!(
                v(
                    &format!("{h}_bucket"),
                    &[("provider", provider), ("le", "+Inf")]
                ),
                n
            );
            assert!(v(&format!("{h}_sum"), &[("provider", provider)]) > 0.0);
        }
    }
    assert_eq!(v("tollgate_config_reloads_total", &[("result", "ok")]), 1.0);

    // The store's health, for alerting.
    assert_eq!(v("tollgate_store_flush_errors_total", &[]), 0.0);
    assert_eq!(v("tollgate_store_lost_writes_total", &[]), 0.0);
    assert!(value(&m, "tollgate_store_queued_writes", &[]).is_some());
    assert!(value(&m, "tollgate_store_flush_lag_seconds", &[]).is_some());
}

#[test]
fn the_alert_rules_use_only_metrics_the_gateway_exports() {
    let mock = Mock::start();
    let body = body_with_projects(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 0.001, period = \"day\" }}\n"),
    );
    let (gw, admin) = start_admin(&body);
    // An allowed request, a budget refusal, an upstream failure and a rejected reload: every
    // family the rules use gets a series.
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 16000).status, 402);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY), ("x-mock-fault", "close-before-headers")],
        &chat("gpt-4o-mini", 2),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{BAD_ROUTE}"));
    assert_eq!(admin_post(admin, "/admin/reload").status, 422);
    eventually("three requests counted", Duration::from_secs(5), || {
        proxied_requests(&scrape(admin)) == 3.0
    });

    let exported: BTreeSet<String> = scrape(admin).into_iter().map(|s| s.name).collect();
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/alerts.yml"))
        .expect("conf/alerts.yml");
    let mut used = BTreeSet::new();
    for (i, _) in rules.match_indices("tollgate_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Skip prose such as "tollgate_*".
        if !name.ends_with('_') {
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 8,
        "the rules name the metrics they use: {used:?}"
    );
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "alerts.yml uses metrics nobody exports: {missing:?}"
    );
}

/// A random-enough lowercase hex string (std only).
fn random_hex() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

#[test]
fn random_model_names_and_keys_cannot_create_metric_series() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    for i in 0..50 {
        let model = format!("rnd-{}-{i}", random_hex());
        let r = chat_as(&gw, KEY, &model, 2);
        assert_eq!(r.status, 404, "{model}: {}", r.body);
        assert_eq!(r.json()["error"]["type"], "not_found");
    }
    for i in 0..10 {
        // Routed (gpt- goes to openai) but unpriced: blocked, and still no new label.
        let r = chat_as(&gw, KEY, &format!("gpt-rnd-{}-{i}", random_hex()), 2);
        assert_eq!(r.json()["error"]["code"], "unpriced_model", "{}", r.body);
        let r = chat_as(
            &gw,
            &format!("tg_random_{}", random_hex()),
            "gpt-4o-mini",
            2,
        );
        assert_eq!(r.status, 401);
    }
    assert_eq!(mock.count(), 1, "none of them reached the provider");
    eventually("71 requests counted", Duration::from_secs(5), || {
        proxied_requests(&scrape(admin)) == 71.0
    });
    let m = scrape(admin);
    let models: BTreeSet<&str> = [
        "gpt-4o-mini",
        "claude-sonnet-4",
        "text-embedding-3-small",
        "other",
    ]
    .into();
    let projects: BTreeSet<&str> = ["p1", "p2", "other"].into();
    for s in m.iter().filter(|s| s.name.starts_with("tollgate_")) {
        if let Some(model) = s.labels.get("model") {
            assert!(
                models.contains(model.as_str()),
                "model label {model:?} in {s:?}"
            );
        }
        if let Some(p) = s.labels.get("project") {
            assert!(
                projects.contains(p.as_str()),
                "project label {p:?} in {s:?}"
            );
        }
        for v in s.labels.values() {
            assert!(
                !v.contains("rnd"),
                "a client-chosen value became a label: {s:?}"
            );
        }
    }
    let v = |labels: &[(&str, &str)]| value(&m, "tollgate_requests_total", labels);
    assert_eq!(
        v(&[("project", "p1"), ("model", "other"), ("status", "404")]),
        Some(50.0)
    );
    assert_eq!(
        v(&[("project", "p1"), ("model", "other"), ("status", "403")]),
        Some(10.0)
    );
    assert_eq!(
        v(&[("project", "other"), ("model", "other"), ("status", "401")]),
        Some(10.0)
    );
    let keys: Vec<&BTreeMap<String, String>> = series(&m, "tollgate_requests_total")
        .map(|s| &s.labels)
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "one series per (project, priced model or other, status): {keys:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reload

#[test]
fn sighup_applies_a_valid_config_rejects_an_invalid_one_and_keeps_the_spend() {
    let mock = Mock::start();
    let body = body_with_projects(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 5.0, period = \"month\" }}\n"),
    );
    let (mut gw, admin) = start_admin(&body);
    for n in [3, 4] {
        assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", n).status, 200);
    }
    eventually("settled", Duration::from_secs(5), || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 401);

    // A valid new file: p3's key works afterwards, p1's spend is untouched.
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    gw.signal("HUP");
    eventually("reload ok", Duration::from_secs(10), || {
        reloads(admin, "ok") == 1.0
    });
    let r = chat_as(&gw, KEY3, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200, "the new project's key: {}", r.body);
    let s = project(admin, "p1");
    assert_eq!(
        s["spent_usd"].as_f64().unwrap(),
        spent,
        "a reload never resets spend"
    );
    assert_eq!(s["limit_usd"], 5.0);
    assert!(gw.log().contains("configuration reloaded"), "{}", gw.log());

    // An invalid file: rejected, logged with the reason, the previous config keeps serving.
    let valid = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{valid}{BAD_ROUTE}"));
    gw.signal("HUP");
    eventually("reload error counted", Duration::from_secs(10), || {
        reloads(admin, "error") == 1.0
    });
    let log = gw.log();
    assert!(log.contains("reload rejected"), "{log}");
    assert!(
        log.contains("no-such-provider"),
        "the log names the error: {log}"
    );
    assert_eq!(reloads(admin, "ok"), 1.0);
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 200);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    eventually("settled", Duration::from_secs(5), || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    assert!(
        project(admin, "p1")["spent_usd"].as_f64().unwrap() > spent,
        "spend adds up"
    );
    assert_eq!(
        gw.wait_exit(Duration::ZERO),
        None,
        "SIGHUP never stops the process"
    );
}

#[test]
fn admin_reload_answers_with_the_result_and_keeps_the_spend() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 5).status, 200);
    eventually("settled", Duration::from_secs(5), || {
        project(admin, "p1")["reserved_usd"] == 0.0
    });
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);

    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    let r = admin_post(admin, "/admin/reload");
    assert_eq!((r.status, r.json()), (200, json!({"reloaded": true})));
    // Synchronous: the very next request sees the new config.
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 200);
    assert_eq!(project(admin, "p1")["spent_usd"].as_f64().unwrap(), spent);

    let valid = std::fs::read_to_string(&gw.config_path).unwrap();
    for round in 1..=2 {
        rewrite(&gw.config_path, &format!("{valid}{BAD_ROUTE}"));
        let r = admin_post(admin, "/admin/reload");
        assert_eq!(r.status, 422, "{}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_config");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("routes[") && msg.contains("no-such-provider"),
            "names the field and the value: {msg}"
        );
        assert_eq!(
            reloads(admin, "error"),
            round as f64,
            "each rejection is counted"
        );
        assert_eq!(
            chat_as(&gw, KEY3, "gpt-4o-mini", 2).status,
            200,
            "old config serves"
        );
    }
    // Garbage is rejected the same way.
    rewrite(&gw.config_path, "this is = = not toml");
    assert_eq!(admin_post(admin, "/admin/reload").status, 422);
    assert_eq!(reloads(admin, "error"), 3.0);
    assert_eq!(reloads(admin, "ok"), 1.0);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
}

/// A slow OpenAI stream (20 tokens, 100 ms apart) on its own thread. Sends on `started` once
/// the first bytes of the body arrived; returns the status, the whole body, the request id and
/// when it ended.
fn slow_stream(
    gw: &Gateway,
    started: mpsc::Sender<()>,
) -> std::thread::JoinHandle<(u16, String, String, Instant)> {
    let url = gw.url("/v1/chat/completions");
    std::thread::spawn(move || {
        let body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me"}],
                          "stream": true, "max_tokens": 20})
            .to_string();
        let resp = agent()
            .post(&url)
            .set("x-api-key", KEY)
            .set("x-mock-chunk-delay-ms", "100")
            .send_string(&body)
            .expect("stream response");
        let status = resp.status();
        let id = resp
            .header("x-tollgate-request-id")
            .unwrap_or("")
            .to_string();
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 4096];
        let mut text = Vec::new();
        let n = reader.read(&mut buf).expect("first bytes");
        text.extend_from_slice(&buf[..n]);
        let _ = started.send(());
        reader
            .read_to_end(&mut text)
            .expect("the rest of the stream");
        (
            status,
            String::from_utf8_lossy(&text).into_owned(),
            id,
            Instant::now(),
        )
    })
}

fn content_events(stream: &str) -> usize {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count()
}

#[test]
fn a_reload_during_a_stream_loses_nothing() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    let (tx, rx) = mpsc::channel();
    let stream = slow_stream(&gw, tx);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    assert_eq!(admin_post(admin, "/admin/reload").status, 200);
    gw.signal("HUP");
    eventually("both reloads done", Duration::from_secs(10), || {
        reloads(admin, "ok") == 2.0
    });
    let reloaded_at = Instant::now();
    assert_eq!(
        chat_as(&gw, KEY3, "gpt-4o-mini", 2).status,
        200,
        "the new config serves"
    );

    let (status, body, id, ended_at) = stream.join().unwrap();
    assert!(
        ended_at > reloaded_at,
        "the reloads happened while the stream was open"
    );
    assert_eq!(status, 200);
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(content_events(&body), 20, "every token arrived: {body}");
    // And it was metered in full.
    eventually("the stream's decision", Duration::from_secs(10), || {
        let r = admin_get(admin, "/admin/decisions?project=p1&limit=10");
        r.json()["decisions"].as_array().unwrap().iter().any(|d| {
            d["id"] == id.as_str()
                && d["completion_tokens"] == 20
                && d["usage_source"] == "reported"
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Stopping

#[test]
fn sigterm_lets_a_stream_finish_exits_0_and_the_ledger_has_its_spend() {
    let mock = Mock::start();
    let (mut gw, _admin) = start_admin(&standard_config(&mock));
    let (tx, rx) = mpsc::channel();
    let stream = slow_stream(&gw, tx);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    gw.signal("TERM");
    let (status, body, id, _) = stream.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream finished: {body}"
    );
    assert_eq!(content_events(&body), 20);
    // grace_period_s = 5: Pingora waits it out, then stops its runtimes (2 s) and we flush.
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );

    let db = rusqlite::Connection::open(gw.dir.path().join("ledger.db")).unwrap();
    let (tokens, source, cost): (i64, String, i64) = db
        .query_row(
            "SELECT completion_tokens, usage_source, cost_nanos FROM decisions WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap_or_else(|e| panic!("decision {id} on disk: {e}"));
    assert_eq!((tokens, source.as_str()), (20, "reported"));
    assert!(cost > 0);
    let spent: i64 = db
        .query_row(
            "SELECT SUM(spent_nanos) FROM spend WHERE project = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        spent, cost,
        "the stream's cost is the project's spend on disk"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd notifications

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
struct NotifySocket {
    _dir: tempfile::TempDir,
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            _dir: dir,
            sock,
            path,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message, waiting up to `within`.
    fn recv(&self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn expect(&self, what: &str, within: Duration) -> String {
        self.recv(within)
            .unwrap_or_else(|| panic!("no notification ({what}) within {within:?}"))
    }
}

/// Write a config the way `Gateway::start_with` does, for a process started with `spawn_on`.
fn write_config(dir: &Path, port: u16, extra: &str, body: &str) -> PathBuf {
    let path = dir.join("tollgate.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n{extra}\n[store]\npath = \"{}\"\n{body}",
        dir.join("ledger.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_hears_ready_once_accepting_reloading_around_reloads_and_stopping_on_sigterm() {
    let mock = Mock::start();
    let notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        "grace_period_s = 1",
        &standard_config(&mock),
    );
    let mut env = provider_env();
    env.push(("NOTIFY_SOCKET", notify.path()));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gw = Gateway::spawn_on(&config, addr, &[], &env);

    let ready = notify.expect("READY", Duration::from_secs(20));
    assert_eq!(ready, format!("READY=1\nMAINPID={}", gw.pid()));
    // READY=1 promises a listener that accepts: the first request after it must succeed.
    let r = chat_as(&gw, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200, "{}", r.body);

    // A reload is bracketed by RELOADING=1 (with the monotonic time) and READY=1.
    let before = tollgate::monotonic_usec().unwrap();
    gw.signal("HUP");
    let reloading = notify.expect("RELOADING", Duration::from_secs(10));
    let after = tollgate::monotonic_usec().unwrap();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let us: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    assert!(
        (before..=after).contains(&us),
        "{before} <= {us} <= {after}"
    );
    assert!(notify
        .expect("READY after reload", Duration::from_secs(10))
        .starts_with("READY=1\n"));

    // A rejected reload also ends in READY=1: the old config serves on.
    let text = std::fs::read_to_string(&config).unwrap();
    rewrite(&config, &format!("{text}{BAD_ROUTE}"));
    gw.signal("HUP");
    assert!(notify
        .expect("RELOADING", Duration::from_secs(10))
        .starts_with("RELOADING=1\n"));
    assert!(notify
        .expect("READY", Duration::from_secs(10))
        .starts_with("READY=1\n"));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);

    gw.signal("TERM");
    assert_eq!(
        notify.expect("STOPPING", Duration::from_secs(10)),
        "STOPPING=1"
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.log()
    );
    assert_eq!(
        notify.recv(Duration::from_millis(100)),
        None,
        "nothing after STOPPING=1"
    );
}

// ---------------------------------------------------------------------------------------------
// Zero-downtime binary upgrade

#[derive(Default)]
struct LoadResults {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Sequential requests through the gateway until `stop` (or a hard cap): even ones on one
/// keep-alive connection, odd ones each on a new connection.
fn run_load(url: String, stop: Arc<AtomicBool>, out: Arc<LoadResults>) {
    let keep_alive = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let fresh;
        let client = if i % 2 == 0 {
            &keep_alive
        } else {
            fresh = agent();
            &fresh
        };
        let res = client
            .post(&url)
            .set("x-api-key", KEY)
            .send_string(&chat("gpt-4o-mini", 2));
        let outcome = match res {
            Ok(r) => {
                let status = r.status();
                let mut body = String::new();
                match r.into_reader().read_to_string(&mut body) {
                    Ok(_) if status == 200 && body.contains("chat.completion") => Ok(()),
                    Ok(_) => Err(format!("status {status}: {body}")),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(ureq::Error::Status(s, r)) => Err(format!(
                "status {s}: {}",
                r.into_string().unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                out.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => out.failures.lock().unwrap().push(format!(
                "request {i} ({}): {e}",
                if i % 2 == 0 {
                    "keep-alive"
                } else {
                    "new connection"
                }
            )),
        }
        i += 1;
        // Pace the load so it spans the hand-over without flooding the machine.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_binary_upgrade_hands_the_sockets_over_without_a_failed_request() {
    let mock = Mock::start();
    let notify = NotifySocket::new();
    let sock_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = sock_dir.path().join("upgrade.sock");
    let extra = format!(
        "upgrade_sock = \"{}\"\ngrace_period_s = 1",
        upgrade_sock.display()
    );
    let mut env = provider_env();
    env.push(("NOTIFY_SOCKET", notify.path()));
    let mut old = Gateway::start_with(&standard_config(&mock), &extra, &env);
    assert!(notify
        .expect("READY from the old process", Duration::from_secs(10))
        .starts_with("READY=1\n"));

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(LoadResults::default());
    let load = {
        let (url, stop, results) = (
            old.url("/v1/chat/completions"),
            stop.clone(),
            results.clone(),
        );
        std::thread::spawn(move || run_load(url, stop, results))
    };
    let ok_now = || results.ok.load(Ordering::Relaxed);
    eventually("load running", Duration::from_secs(10), || ok_now() >= 20);

    // The successor binds the upgrade socket and waits there for the listeners...
    let mut new = Gateway::spawn_on(&old.config_path, old.addr, &["--upgrade"], &env);
    eventually(
        "successor waiting for the sockets",
        Duration::from_secs(10),
        || upgrade_sock.exists(),
    );
    // ...which the old process sends on SIGQUIT, then it drains and exits.
    old.signal("QUIT");
    let ready = notify.expect("READY from the successor", Duration::from_secs(15));
    assert_eq!(ready, format!("READY=1\nMAINPID={}", new.pid()));
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let served_before_exit = ok_now();
    eventually(
        "the successor serves alone",
        Duration::from_secs(10),
        || ok_now() >= served_before_exit + 50,
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let failures = results.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the hand-over: {failures:#?}\nold log:\n{}\nnew log:\n{}",
        failures.len(),
        failures.len() + ok_now(),
        old.log(),
        new.log()
    );
    let old_log = old.log();
    assert!(old_log.contains("listener sockets sent"), "{old_log}");
    // The load crossed the hand-over: the old process kept serving after SIGQUIT (its
    // keep-alive connection, and accepts during Pingora's 5 s close timeout) before it closed.
    let quit_at = old_log
        .find("SIGQUIT received")
        .expect("SIGQUIT in the old log");
    let served_after_quit = old_log[quit_at..].matches(" id=").count();
    assert!(served_after_quit > 0, "{old_log}");
    eprintln!(
        "hand-over: {} requests, the old process served {served_after_quit} after SIGQUIT",
        ok_now()
    );
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the successor runs: {}",
        new.log()
    );
    let r = chat_as(&new, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200);
    // The successor served it (its access line is written right after the response).
    new.access_line(&r.request_id());
    // The old process never told systemd STOPPING=1 (that would stop the successor too)...
    let mut seen = Vec::new();
    while let Some(m) = notify.recv(Duration::from_millis(200)) {
        seen.push(m);
    }
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    // ...while the successor's own stop does.
    new.signal("TERM");
    assert_eq!(
        notify.expect("STOPPING", Duration::from_secs(10)),
        "STOPPING=1"
    );
    assert_eq!(
        new.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        new.log()
    );
}
