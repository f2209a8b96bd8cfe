//! The metrics against the real binary and the mock provider: every SPEC metric and its
//! labels after real traffic, the alert rules' metric names, bounded label sets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};

use common::*;
use serde_json::json;

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

    eventually("six requests counted", || {
        proxied_requests(&scrape(admin)) == 6.0
    });
    eventually("reservations released", || {
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
    assert_eq!(v("tollgate_access_log_dropped_total", &[]), 0.0);
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
    // An allowed request that overruns its reservation (the provider reports more prompt
    // tokens than any tokenizer could count), a budget refusal, an upstream failure and a
    // rejected reload: every family the rules use gets a series.
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY), ("x-mock-prompt-tokens", "5000")],
        &chat("gpt-4o-mini", 2),
    );
    assert_eq!(r.status, 200, "{}", r.body);
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
    eventually("three requests counted", || {
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
        // Skip prose such as "tollgate_*". Fleet families exist only in fleet mode:
        // tests/fleet.rs checks that its rules' metrics are exported there.
        if !name.ends_with('_') && !name.starts_with("tollgate_fleet_") {
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
    eventually("71 requests counted", || {
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

/// Stderr that nobody reads (a stuck journald, a full pipe) never stalls a request: the access
/// lines wait in a queue of their own, and come out, all of them and in order, once stderr
/// moves again.
#[test]
fn a_stuck_stderr_never_stalls_a_request_and_the_access_lines_come_out_later_in_order() {
    use std::io::BufRead;
    let mock = Mock::start();
    let (gw, stderr) =
        Gateway::start_with_stderr_pipe(&standard_config(&mock), ADMIN_EXTRA, &env_with_admin());
    // A pipe holds 64 KiB; 600 access lines are about 150 KB. Before the queue, the pingora
    // threads blocked writing to the full pipe and the next requests waited for ever.
    let quick = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    let auth = bearer(KEY);
    let mut ids = Vec::new();
    for i in 0..600 {
        let r = try_request_with(
            &quick,
            "POST",
            &gw.url("/v1/chat/completions"),
            &[("content-type", "application/json"), (auth.0, &auth.1)],
            Some(chat("gpt-4o-mini", 5).as_bytes()),
        )
        .unwrap_or_else(|e| panic!("request {i} with stderr unread: {e}"));
        assert_eq!(r.status, 200, "{}", r.body);
        ids.push(r.request_id());
    }
    assert_eq!(
        metric(gw.admin_port(), "tollgate_access_log_dropped_total", &[]),
        0.0,
        "600 lines fit the queue"
    );
    // Now read stderr: every request's line, in the order the requests were made.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut next = 0;
    while next < ids.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("access line {next} of {} never came", ids.len()));
        // The harness's readiness probe and the scrape have lines of their own.
        if !line.contains("tollgate::access") || !line.contains("endpoint=chat_completions") {
            continue;
        }
        assert!(
            line.contains(&format!("id={} ", ids[next])),
            "line {next} is not request {}'s: {line}",
            ids[next]
        );
        assert!(line.contains(" status=200 "), "{line}");
        next += 1;
    }
}
