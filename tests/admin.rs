//! The admin API against the real binary and the mock provider: its auth (and the listener
//! without a token), freezes, and the decisions log.

mod common;

use common::*;
use serde_json::{json, Value};

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
    // admin_token_env names TEST_ADMIN_TOKEN, which this process does not get.
    let gw = Gateway::start_with(&standard_config(&mock), ADMIN_EXTRA, &provider_env());
    let admin = gw.admin_port();
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
    let r = chat_as(&gw, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200);
    assert_eq!(get(&admin_url(admin, "/healthz"), &[]).status, 200);
    // The client has its answer before `logging` counts the request: wait for the count.
    let labels = [
        ("project", "p1"),
        ("model", "gpt-4o-mini"),
        ("status", "200"),
    ];
    eventually("the request is counted", || {
        value(&scrape(admin), "tollgate_requests_total", &labels).is_some()
    });
    assert_eq!(
        value(&scrape(admin), "tollgate_requests_total", &labels),
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
    eventually("six decisions recorded", || {
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
