//! The response cache end to end (SPEC "Response cache", issue 15): the real binary on
//! loopback against the mock provider, whose request count tells whether a provider was called.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn with_cache(mock: &Mock, ttl_s: u64, extra: &str) -> String {
    body_with_projects(
        mock,
        &format!(
            "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\ncache = {{ ttl_s = {ttl_s} }}\n{extra}\n\
             [[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\ncache = {{ ttl_s = {ttl_s} }}\n"
        ),
    )
}

fn send(gw: &Gateway, key: &str, path: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h: Vec<(&str, &str)> = vec![("x-api-key", key), ("anthropic-version", "2023-06-01")];
    h.extend_from_slice(extra);
    post(&gw.url(path), &h, body)
}

fn cost_nanos(v: &Value) -> i64 {
    (v.as_f64().unwrap_or(f64::NAN) * 1e9).round() as i64
}

#[test]
fn a_second_identical_request_is_a_hit_served_from_the_cache_for_free() {
    let mock = Mock::start();
    let gw = Gateway::start_with(&with_cache(&mock, 60, ""), ADMIN_EXTRA, &env_with_admin());
    let admin = gw.admin_port();
    let body = chat("gpt-4o-mini", 20);
    let first = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let second = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.body, first.body, "the same bytes");
    assert_eq!(
        second.header("content-type"),
        first.header("content-type"),
        "the same content type"
    );
    assert_eq!(mock.count(), 1, "the hit reached no provider");
    let d1 = decision(admin, &first.request_id());
    let d2 = decision(admin, &second.request_id());
    assert_eq!(d1["cache"], "miss");
    assert_eq!(d2["cache"], "hit");
    assert_eq!(cost_nanos(&d2["cost_usd"]), 0);
    assert!(cost_nanos(&d1["cost_usd"]) > 0);
    assert_eq!(cost_nanos(&d2["saved_usd"]), cost_nanos(&d1["cost_usd"]));
    assert_eq!(d2["decision"], "allow");
    // One field differs: another entry.
    let other = send(
        &gw,
        KEY,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", 21),
        &[],
    );
    assert_eq!(other.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(mock.count(), 2);
    // A hit costs nothing: the project's spend is the two misses.
    let p = project(admin, "p1");
    assert_eq!(
        cost_nanos(&p["spent_usd"]),
        cost_nanos(&d1["cost_usd"]) + cost_nanos(&decision(admin, &other.request_id())["cost_usd"])
    );
    let m = get(&admin_url(admin, "/metrics"), &[]).body;
    assert!(
        m.contains(r#"tollgate_cache_lookups_total{project="p1",result="hit"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("tollgate_cache_saved_usd_total{project=\"p1\"}"),
        "{m}"
    );
    assert!(m.contains("tollgate_cache_bytes "), "{m}");
}

#[test]
fn completed_streams_are_replayed_identically_and_a_cut_one_is_not_stored() {
    let mock = Mock::start();
    let gw = Gateway::start_with(&with_cache(&mock, 60, ""), ADMIN_EXTRA, &env_with_admin());
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 12,
                   "messages": [{"role": "user", "content": "stream me"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 12,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "stream me with usage"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "stream": true, "max_output_tokens": 12, "input": "stream me"}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4", "stream": true, "max_tokens": 12,
                   "messages": [{"role": "user", "content": "stream me"}]}),
        ),
    ];
    let mut calls = 0;
    for (path, body) in &cases {
        let body = body.to_string();
        let first = send(&gw, KEY, path, &body, &[]);
        calls += 1;
        assert_eq!(first.status, 200, "{path}: {}", first.body);
        assert!(first.body.contains("data:"), "{path}: a stream");
        let again = send(&gw, KEY, path, &body, &[]);
        assert_eq!(
            again.header("x-tollgate-cache"),
            Some("hit"),
            "{path}: first {:?}\n{}\n{}",
            first.headers,
            first.body,
            gw.log()
        );
        assert_eq!(
            again.body, first.body,
            "{path}: replayed as it was streamed"
        );
        assert!(
            again
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/event-stream")),
            "{path}"
        );
        assert_eq!(
            mock.count(),
            calls,
            "{path}: the replay reached no provider"
        );
    }
    // Without include_usage the client never sees the usage chunk, live or replayed.
    let plain = send(&gw, KEY, cases[0].0, &cases[0].1.to_string(), &[]);
    assert!(!plain.body.contains("\"usage\":{"), "{}", plain.body);
    let with = send(&gw, KEY, cases[1].0, &cases[1].1.to_string(), &[]);
    assert!(with.body.contains("\"usage\":{"), "{}", with.body);

    // A stream the provider cut off is not stored: the same body again reaches the provider.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 12,
                      "messages": [{"role": "user", "content": "cut me"}]})
    .to_string();
    let _ = try_request(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY), ("x-mock-fault", "close-mid-stream")],
        Some(body.as_bytes()),
    );
    let before = mock.count();
    let again = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(again.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(mock.count(), before + 1);
}

#[test]
fn projects_never_share_entries_and_skip_refresh_and_ttl_behave() {
    let mock = Mock::start();
    let gw = Gateway::start_with(&with_cache(&mock, 1, ""), ADMIN_EXTRA, &env_with_admin());
    let body = chat("gpt-4o-mini", 7);
    let a = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(a.header("x-tollgate-cache"), Some("miss"));
    let b = send(&gw, KEY2, "/v1/chat/completions", &body, &[]);
    assert_eq!(
        b.header("x-tollgate-cache"),
        Some("miss"),
        "another project's entry"
    );
    assert_eq!(mock.count(), 2);

    let s = send(
        &gw,
        KEY,
        "/v1/chat/completions",
        &body,
        &[("x-tollgate-cache", "skip")],
    );
    assert_eq!(s.header("x-tollgate-cache"), Some("skip"));
    assert_eq!(mock.count(), 3, "skip reads nothing");
    let r = send(
        &gw,
        KEY,
        "/v1/chat/completions",
        &body,
        &[("x-tollgate-cache", "refresh")],
    );
    assert_eq!(
        r.header("x-tollgate-cache"),
        Some("miss"),
        "refresh does not read"
    );
    assert_eq!(mock.count(), 4);
    for r in mock.requests() {
        assert_eq!(
            req_header(&r, "x-tollgate-cache"),
            None,
            "Tollgate's cache directive is Tollgate's, never the provider's"
        );
    }
    let h = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(h.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(h.body, r.body, "refresh stored the new answer");
    let bad = send(
        &gw,
        KEY,
        "/v1/chat/completions",
        &body,
        &[("x-tollgate-cache", "always")],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Skip stores nothing either.
    let fresh = chat("gpt-4o-mini", 8);
    send(
        &gw,
        KEY,
        "/v1/chat/completions",
        &fresh,
        &[("x-tollgate-cache", "skip")],
    );
    let after_skip = send(&gw, KEY, "/v1/chat/completions", &fresh, &[]);
    assert_eq!(after_skip.header("x-tollgate-cache"), Some("miss"));

    // ttl_s = 1: gone a second later.
    std::thread::sleep(Duration::from_millis(1200));
    let late = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(late.header("x-tollgate-cache"), Some("miss"));
}

#[test]
fn every_control_still_runs_before_the_cache_is_read() {
    let mock = Mock::start();
    let gw = Gateway::start_with(&with_cache(&mock, 60, ""), ADMIN_EXTRA, &env_with_admin());
    let admin = gw.admin_port();
    let body = chat("gpt-4o-mini", 5);
    assert_eq!(
        send(&gw, KEY, "/v1/chat/completions", &body, &[]).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        send(&gw, KEY, "/v1/chat/completions", &body, &[]).header("x-tollgate-cache"),
        Some("hit")
    );
    // Frozen: blocked, cached answer or not.
    assert_eq!(admin_post(admin, "/admin/projects/p1/freeze").status, 200);
    let f = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert_eq!(f.status, 403);
    assert!(f.body.contains("project_frozen"), "{}", f.body);
    assert_eq!(admin_post(admin, "/admin/projects/p1/unfreeze").status, 200);
    // A pattern and a denied model added on reload: blocked although the answer is stored.
    let config = gw.config_path.clone();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "cache = { ttl_s = 60 }\n\n",
        "cache = { ttl_s = 60 }\nblock_patterns = [\"hello\"]\n\n",
    );
    assert!(text.contains("block_patterns"), "{text}");
    rewrite(&config, &text);
    gw.signal("HUP");
    eventually("the pattern is in force", || {
        send(&gw, KEY, "/v1/chat/completions", &body, &[]).status == 403
    });
    let p = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
    assert!(p.body.contains("pattern_blocked"), "{}", p.body);
    let text = text.replace(
        "block_patterns = [\"hello\"]",
        "deny_models = [\"gpt-4o-mini\"]",
    );
    rewrite(&config, &text);
    gw.signal("HUP");
    eventually("the model rule is in force", || {
        send(&gw, KEY, "/v1/chat/completions", &body, &[])
            .body
            .contains("model_not_allowed")
    });
    assert_eq!(mock.count(), 1, "no blocked request reached the provider");
    // The cache is removed from the project: neither read nor stored, at once.
    let text = text
        .replace("deny_models = [\"gpt-4o-mini\"]\n", "")
        .replacen("cache = { ttl_s = 60 }\n", "", 1);
    rewrite(&config, &text);
    gw.signal("HUP");
    eventually("the cache is off for p1", || {
        let r = send(&gw, KEY, "/v1/chat/completions", &body, &[]);
        r.status == 200 && r.header("x-tollgate-cache").is_none()
    });
}

/// The shard (of 16) an entry lands in: the first byte of its key, computed as the engine does
/// (SHA-256 over the length-prefixed project, endpoint, provider model and upstream body).
fn shard_of(project: &str, model: &str, body: &str) -> u8 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        project.as_bytes(),
        b"chat_completions".as_slice(),
        model.as_bytes(),
        body.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()[0] % 16
}

#[test]
fn the_byte_budget_evicts_the_least_recently_used_entry_of_its_shard() {
    let mock = Mock::start();
    // Measure one answer's size, then give each of the 16 shards room for one entry only.
    let probe = Gateway::start_with(&with_cache(&mock, 60, ""), "", &provider_env());
    let a = chat("gpt-4o-mini", 6);
    let size = send(&probe, KEY, "/v1/chat/completions", &a, &[])
        .body
        .len();
    drop(probe);
    let weight = size + "application/json".len() + 128;
    let budget = 16 * (weight + weight / 2);
    let body = format!(
        "[cache]\nmax_bytes = {budget}\n{}",
        with_cache(&mock, 60, "")
    );
    let gw = Gateway::start_with(&body, "", &provider_env());
    // Bodies that differ only in max_tokens: same answer size, keys in known shards.
    let target = shard_of("p1", "gpt-4o-mini", &a);
    let same_shard = (7..400)
        .map(|n| chat("gpt-4o-mini", n))
        .find(|b| shard_of("p1", "gpt-4o-mini", b) == target)
        .expect("a body in the same shard");
    let other_shard = (7..400)
        .map(|n| chat("gpt-4o-mini", n))
        .find(|b| shard_of("p1", "gpt-4o-mini", b) != target && *b != same_shard)
        .expect("a body in another shard");
    let hit = |b: &str| {
        send(&gw, KEY, "/v1/chat/completions", b, &[])
            .header("x-tollgate-cache")
            .map(str::to_string)
    };
    assert_eq!(hit(&a).as_deref(), Some("miss"));
    assert_eq!(hit(&a).as_deref(), Some("hit"), "stored");
    assert_eq!(hit(&other_shard).as_deref(), Some("miss"));
    assert_eq!(
        hit(&a).as_deref(),
        Some("hit"),
        "another shard's entry evicts nothing here"
    );
    assert_eq!(hit(&same_shard).as_deref(), Some("miss"));
    assert_eq!(
        hit(&a).as_deref(),
        Some("miss"),
        "the shard had room for one: the least recently used went"
    );
    assert_eq!(hit(&other_shard).as_deref(), Some("hit"));
}
