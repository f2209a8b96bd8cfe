//! Fleet mode end to end (SPEC "Fleet: several instances on one Redis", issue 13): one real
//! `redis-server`, several real `tollgate` processes sharing it and one mock provider.
//!
//! Every figure is checked three ways that do not depend on each other: Redis's own counters
//! (read over raw RESP), each instance's decision records, and the mock's record of what it
//! served (its usage is deterministic: prompt tokens `ceil(body_len / 4)`, completion tokens
//! `x-mock-tokens` capped by `max_tokens`). Loopback only; every process is killed on drop.
//!
//! Fleet mode off is the rest of the suite: every other test file runs without `[fleet]`.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::{RedisServer, Reply};
use common::*;
use serde_json::Value;

/// The instances' ids, in start order.
const IDS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const URL_ENV: &str = "TOLLGATE_REDIS_URL";
/// claude-sonnet-4 in the standard config: $3/M input, $15/M output, in nanos per token.
const IN_NANOS: u64 = 3_000;
const OUT_NANOS: u64 = 15_000;

/// Field order matters for drop: the gateways go first, then the mock, then Redis.
struct Fleet {
    gws: Vec<Gateway>,
    /// Each gateway's base URL (a `Gateway` is not `Sync`; threads take these).
    urls: Vec<String>,
    admins: Vec<u16>,
    mock: Mock,
    redis: RedisServer,
}

impl Fleet {
    /// The last lines of instance `gw`'s log, for failure messages.
    fn tail(&self, gw: usize) -> String {
        let log = self.gws[gw].log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The `[fleet]` section of instance `id` (per-request holds: no leases).
fn fleet_section(id: &str) -> String {
    format!(
        "\n[fleet]\nredis_url_env = \"{URL_ENV}\"\ninstance = \"{id}\"\nhold_ttl_s = 900\ntimeout_ms = 1000\nleases = false\n"
    )
}

/// `n` instances (`IDS[..n]`) on one Redis (AOF on) and one mock; `projects` replaces the
/// standard config's projects on every instance.
fn start_fleet(n: usize, projects: &str) -> Fleet {
    let redis = RedisServer::start();
    let mock = Mock::start();
    let url = redis.url();
    let mut env = env_with_admin();
    env.push((URL_ENV, url.as_str()));
    let mut gws = Vec::new();
    let mut admins = Vec::new();
    for id in &IDS[..n] {
        let body = format!(
            "{}{}",
            body_with_projects(&mock, projects),
            fleet_section(id)
        );
        let gw = Gateway::start_with(&body, &format!("{ADMIN_EXTRA}grace_period_s = 5"), &env);
        admins.push(gw.admin_port());
        gws.push(gw);
    }
    Fleet {
        urls: gws.iter().map(|g| g.url("")).collect(),
        gws,
        admins,
        mock,
        redis,
    }
}

/// Project `p1` with `KEY` and the given extra lines.
fn p1(extra: &str) -> String {
    format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\n{extra}\n")
}

/// The Redis budget key of a project's `total` window (`src/ledger/fleet/keys.rs`).
fn total_key(project: &str) -> String {
    format!("tg:{{p:{project}}}:b:project:{project}:total:total")
}

/// `(committed, held)` of a budget key, in one read (`HMGET`, so the two are consistent).
fn balance(redis: &RedisServer, key: &str) -> (i64, i64) {
    let r = redis
        .try_cmd(&["HMGET", key, "committed", "held"])
        .unwrap_or_else(|e| panic!("HMGET {key}: {e}"));
    let Reply::Array(Some(items)) = r else {
        panic!("HMGET {key} answered {r:?}");
    };
    let n = |r: &Reply| match r {
        Reply::Bulk(None) => 0,
        r => r
            .to_string()
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("{key}: not an integer: {r:?}")),
    };
    (n(&items[0]), n(&items[1]))
}

/// One request's outcome.
#[derive(Clone, Debug)]
struct Shot {
    gw: usize,
    started: Instant,
    status: u16,
    /// `error.code` of an error Tollgate answered (both SDK shapes carry it), else "".
    code: String,
}

fn send(urls: &[String], gw: usize, path: &str, headers: &[(&str, &str)], body: &str) -> Shot {
    let started = Instant::now();
    let (status, code) = match try_request(
        "POST",
        &format!("{}{path}", urls[gw]),
        headers,
        Some(body.as_bytes()),
    ) {
        Ok(r) => {
            let code = serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default();
            (r.status, code)
        }
        Err(e) => panic!("POST {path} on {}: {e}", IDS[gw]),
    };
    Shot {
        gw,
        started,
        status,
        code,
    }
}

/// An Anthropic Messages request on claude-sonnet-4 asking for `tokens` output tokens, the
/// mock answering exactly that many after `latency_ms`.
fn sonnet(urls: &[String], gw: usize, tokens: u64, latency_ms: u64) -> Shot {
    let (t, l) = (tokens.to_string(), latency_ms.to_string());
    send(
        urls,
        gw,
        "/v1/messages",
        &[
            ("x-api-key", KEY),
            ("x-mock-tokens", &t),
            ("x-mock-latency-ms", &l),
        ],
        &chat("claude-sonnet-4", tokens),
    )
}

/// A small OpenAI chat request on gpt-4o-mini (the mock takes 20 ms).
fn mini(urls: &[String], gw: usize) -> Shot {
    send(
        urls,
        gw,
        "/v1/chat/completions",
        &[
            ("x-api-key", KEY),
            ("x-mock-tokens", "2"),
            ("x-mock-latency-ms", "20"),
        ],
        &chat("gpt-4o-mini", 2),
    )
}

/// Every decision record of `project` that instance `gw` shows (all pages).
fn records(fleet: &Fleet, gw: usize, project: &str) -> Vec<Value> {
    let base = format!("/admin/decisions?project={project}&limit=1000");
    let mut out = Vec::new();
    let mut q = base.clone();
    loop {
        let r = admin_get(fleet.admins[gw], &q);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        out.extend(v["decisions"].as_array().cloned().unwrap_or_default());
        match v["next"].as_str() {
            Some(next) => q = format!("{base}&{next}"),
            None => return out,
        }
    }
}

/// The records instance `gw` made itself (its `instance` field), whatever else it shows.
fn own_records(fleet: &Fleet, gw: usize, project: &str) -> Vec<Value> {
    records(fleet, gw, project)
        .into_iter()
        .filter(|r| r["instance"] == IDS[gw])
        .collect()
}

fn nanos(usd: &Value) -> i64 {
    (usd.as_f64()
        .unwrap_or_else(|| panic!("not an amount: {usd}"))
        * 1e9)
        .round() as i64
}

/// How many of `shots` each instance admitted.
fn admitted(shots: &[Shot], n: usize) -> Vec<usize> {
    (0..n)
        .map(|gw| {
            shots
                .iter()
                .filter(|s| s.gw == gw && s.status == 200)
                .count()
        })
        .collect()
}

/// Σ `cost_usd` of the allowed records each instance made itself, once instance `i` shows
/// `allowed[i]` of them.
fn recorded_cost(fleet: &Fleet, project: &str, allowed: &[usize]) -> i64 {
    let mut total = 0;
    for (gw, &n) in allowed.iter().enumerate() {
        let mut own = Vec::new();
        eventually(
            &format!("{} recorded its {n} allowed requests", IDS[gw]),
            || {
                own = own_records(fleet, gw, project)
                    .into_iter()
                    .filter(|r| r["decision"] == "allow")
                    .collect();
                own.len() == n
            },
        );
        total += own.iter().map(|r| nanos(&r["cost_usd"])).sum::<i64>();
    }
    total
}

/// What the mock served, priced as claude-sonnet-4 from the mock's own usage rules.
fn mock_cost(mock: &Mock) -> i64 {
    mock.requests()
        .iter()
        .map(|r| {
            assert_eq!(r["path"], "/v1/messages", "only Messages in these tests");
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("")).expect("body");
            let prompt = r["body_len"].as_u64().expect("body_len").div_ceil(4);
            let asked: u64 = req_header(r, "x-mock-tokens")
                .and_then(|t| t.parse().ok())
                .unwrap_or(8);
            let completion = asked
                .min(body["max_tokens"].as_u64().unwrap_or(u64::MAX))
                .min(4096);
            (prompt * IN_NANOS + completion * OUT_NANOS) as i64
        })
        .sum()
}

/// Sets the flag when dropped: load threads stop even when the test panics (a scope joins
/// its threads before the panic goes on).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// At rest: no hold anywhere, and every instance shows the fleet-wide figures of `p1`
/// (`spent` nanos, limit `limit_usd`).
fn assert_at_rest(fleet: &Fleet, spent: i64, limit_usd: f64) {
    let key = total_key("p1");
    eventually("no hold left in Redis", || {
        balance(&fleet.redis, &key).1 == 0
    });
    for (gw, &admin) in fleet.admins.iter().enumerate() {
        let mut last = Value::Null;
        eventually(&format!("{} at rest", IDS[gw]), || {
            last = project(admin, "p1");
            last["reserved_usd"] == 0.0 && nanos(&last["spent_usd"]) == spent
        });
        assert_eq!(
            last["leased_usd"].as_f64(),
            Some(0.0),
            "{}: no leases in per-request mode: {last}\n{}",
            IDS[gw],
            fleet.tail(gw)
        );
        let remaining = last["remaining_usd"].as_f64().expect("remaining_usd");
        assert!(
            (remaining - (limit_usd - spent as f64 / 1e9)).abs() < 1e-9,
            "{}: remaining = limit − spent − reserved − leased: {last}",
            IDS[gw]
        );
    }
}

#[test]
fn three_instances_never_spend_past_one_shared_limit() {
    // One worst case: the prompt bound at $3/M plus 1000 output tokens at $15/M, about
    // $0.0153; the true cost is about $0.01507. $0.16 fits about ten.
    let limit_usd = 0.16;
    let limit = (limit_usd * 1e9) as i64;
    let fleet = start_fleet(
        3,
        &p1(&format!(
            "budget = {{ limit_usd = {limit_usd}, period = \"total\" }}"
        )),
    );
    let key = total_key("p1");
    let stop = AtomicBool::new(false);
    let looks = Mutex::new(0u32);
    let shots: Vec<Shot> = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Redis's own view, all along: committed + held never past the limit.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let (c, h) = balance(&fleet.redis, &key);
                assert!(c + h <= limit, "committed {c} + held {h} > limit {limit}");
                *looks.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let workers: Vec<_> = (0..300)
            .map(|i| {
                let urls = &fleet.urls;
                s.spawn(move || sonnet(urls, i % 3, 1000, 200))
            })
            .collect();
        let shots = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        stop.store(true, Ordering::SeqCst);
        shots
    });
    assert!(*looks.lock().unwrap() > 0, "the watcher looked");

    let ok = shots.iter().filter(|s| s.status == 200).count();
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 402 && s.code == "budget_exceeded"),
            "only 200 or 402 budget_exceeded: {s:?}"
        );
    }
    assert!(
        ok >= 5,
        "the budget fits about ten worst cases; admitted {ok}"
    );
    assert_eq!(
        fleet.mock.count(),
        ok as u64,
        "every admitted request reached the provider once, no refused one did"
    );

    let (committed, _) = balance(&fleet.redis, &key);
    assert!(committed <= limit, "spent {committed} > limit {limit}");
    let served = mock_cost(&fleet.mock);
    assert_eq!(committed, served, "Redis charged what the mock served");
    let recorded = recorded_cost(&fleet, "p1", &admitted(&shots, 3));
    assert_eq!(
        recorded, committed,
        "the instances' own records add up to Redis's total"
    );
    assert_at_rest(&fleet, committed, limit_usd);
}

#[test]
fn every_instance_sees_the_fleet_and_redis() {
    let fleet = start_fleet(3, &p1("budget = { limit_usd = 10.0, period = \"total\" }"));
    for gw in 0..3 {
        let s = sonnet(&fleet.urls, gw, 10, 0);
        assert_eq!(s.status, 200, "{s:?}");
    }
    let want: BTreeSet<&str> = IDS.iter().copied().collect();
    for (gw, &admin) in fleet.admins.iter().enumerate() {
        let mut last = Value::Null;
        eventually(&format!("{} lists the fleet", IDS[gw]), || {
            let r = admin_get(admin, "/admin/fleet");
            assert_eq!(r.status, 200, "{}", r.body);
            last = r.json();
            let ids: BTreeSet<&str> = last["instances"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
                .unwrap_or_default();
            ids == want
                && last["instances"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|i| i["in_flight"] == 0))
        });
        assert_eq!(last["redis"]["ok"], true, "{last}");
        for i in last["instances"].as_array().expect("instances") {
            assert!(
                i["version"].as_str().is_some_and(|v| !v.is_empty())
                    && i["last_seen"].as_str().is_some_and(|v| !v.is_empty()),
                "each instance has a version and a last_seen: {i}"
            );
        }
        assert_eq!(
            metric(admin, "tollgate_fleet_redis_up", &[]),
            1.0,
            "{}",
            IDS[gw]
        );
        let trips: f64 = series(&scrape(admin), "tollgate_fleet_roundtrip_seconds_count")
            .map(|s| s.value)
            .sum();
        assert!(trips > 0.0, "{}: round trips to Redis are timed", IDS[gw]);
    }
    // The fleet's decision records, each naming its instance, from any instance.
    let mut seen = BTreeSet::new();
    eventually("gw-a shows every instance's record", || {
        seen = records(&fleet, 0, "p1")
            .iter()
            .filter_map(|r| r["instance"].as_str().map(str::to_string))
            .collect();
        seen.len() == 3
    });
    assert_eq!(seen, want.iter().map(|s| s.to_string()).collect());
    let committed = balance(&fleet.redis, &total_key("p1")).0;
    assert!(committed > 0);
    assert_eq!(committed, mock_cost(&fleet.mock));
    assert_eq!(recorded_cost(&fleet, "p1", &[1, 1, 1]), committed);
    assert_at_rest(&fleet, committed, 10.0);
}

#[test]
fn rpm_counts_across_the_fleet() {
    let fleet = start_fleet(3, &p1("rate_limit = { rpm = 5 }"));
    // Fleet rate windows are per minute: stay clear of a boundary.
    let second = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            % 60
    };
    if second() >= 57 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while second() >= 57 {
            assert!(Instant::now() < deadline, "the minute does not turn");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let shots: Vec<Shot> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..15)
            .map(|i| {
                let urls = &fleet.urls;
                s.spawn(move || mini(urls, i % 3))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let ok = shots.iter().filter(|s| s.status == 200).count();
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 429 && s.code == "rate_limited"),
            "only 200 or 429 rate_limited: {s:?}"
        );
    }
    assert_eq!(ok, 5, "rpm 5 across three instances: {shots:?}");
    assert_eq!(fleet.mock.count(), 5);
}

#[test]
fn a_freeze_through_one_instance_stops_the_others_at_their_next_admission() {
    let fleet = start_fleet(3, &p1(""));
    let stop = AtomicBool::new(false);
    let shots = Mutex::new(Vec::<Shot>::new());
    let count = |gw: usize, pred: &dyn Fn(&Shot) -> bool| {
        shots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.gw == gw && pred(s))
            .count()
    };
    let frozen_at = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for gw in [1, 2] {
            let (urls, stop, shots) = (&fleet.urls, &stop, &shots);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let shot = mini(urls, gw);
                    shots.lock().unwrap().push(shot);
                }
            });
        }
        eventually("B and C serve", || {
            count(1, &|s| s.status == 200) >= 2 && count(2, &|s| s.status == 200) >= 2
        });
        let r = admin_post(fleet.admins[0], "/admin/projects/p1/freeze");
        assert_eq!(r.status, 200, "{}", r.body);
        let frozen_at = Instant::now();
        // The first admission on B and on C after the freeze answer.
        for gw in [1, 2] {
            let first = mini(&fleet.urls, gw);
            assert_eq!(
                (first.status, first.code.as_str()),
                (403, "project_frozen"),
                "{}: the next admission after the freeze",
                IDS[gw]
            );
        }
        eventually("B and C kept trying after the freeze", || {
            let after = |s: &Shot| s.started > frozen_at;
            count(1, &after) >= 3 && count(2, &after) >= 3
        });
        stop.store(true, Ordering::SeqCst);
        frozen_at
    });
    for s in shots.lock().unwrap().iter() {
        if s.started > frozen_at {
            assert_eq!(
                (s.status, s.code.as_str()),
                (403, "project_frozen"),
                "started after the freeze answer: {s:?}"
            );
        } else {
            assert!(
                s.status == 200 || (s.status == 403 && s.code == "project_frozen"),
                "{s:?}"
            );
        }
    }
    let served = fleet.mock.count();
    let r = admin_post(fleet.admins[1], "/admin/projects/p1/unfreeze");
    assert_eq!(r.status, 200, "{}", r.body);
    let again = mini(&fleet.urls, 2);
    assert_eq!(again.status, 200, "an unfreeze on B reaches C: {again:?}");
    assert_eq!(fleet.mock.count(), served + 1);
}

#[test]
fn redis_killed_mid_load_refuses_with_503_and_resumes_from_its_aof() {
    let mut fleet = start_fleet(3, &p1("budget = { limit_usd = 10.0, period = \"total\" }"));
    let stop = AtomicBool::new(false);
    let shots = Mutex::new(Vec::<Shot>::new());
    let sum =
        |pred: &dyn Fn(&Shot) -> bool| shots.lock().unwrap().iter().filter(|s| pred(s)).count();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for gw in 0..3 {
            let (urls, stop, shots) = (&fleet.urls, &stop, &shots);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let shot = sonnet(urls, gw, 20, 100);
                    shots.lock().unwrap().push(shot);
                }
            });
        }
        eventually("load is served", || sum(&|s| s.status == 200) >= 6);
        kill_redis(&fleet.redis);
        eventually("every instance answers 503 ledger_unavailable", || {
            (0..3).all(|gw| count_503(&shots.lock().unwrap(), gw) >= 2)
        });
        stop.store(true, Ordering::SeqCst);
    });
    for s in shots.lock().unwrap().iter() {
        assert!(
            s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
            "only 200 or 503 ledger_unavailable: {s:?}"
        );
    }
    // Down: nothing is admitted without a hold, on any instance.
    let mut shots = shots.into_inner().unwrap();
    let served = fleet.mock.count();
    for (gw, id) in IDS.iter().enumerate() {
        for _ in 0..3 {
            let s = sonnet(&fleet.urls, gw, 20, 0);
            shots.push(s.clone());
            assert_eq!(
                (s.status, s.code.as_str()),
                (503, "ledger_unavailable"),
                "{id}: Redis is down\n{}",
                fleet.tail(gw)
            );
        }
        eventually(&format!("{id} reports Redis down"), || {
            metric(fleet.admins[gw], "tollgate_fleet_redis_up", &[]) == 0.0
        });
        let r = admin_get(fleet.admins[gw], "/admin/fleet");
        assert_eq!(r.json()["redis"]["ok"], false, "{}", r.body);
    }
    assert_eq!(
        fleet.mock.count(),
        served,
        "no request reached the provider while Redis was down"
    );

    fleet.redis.restart();
    for (gw, id) in IDS.iter().enumerate() {
        eventually(&format!("{id} admits again"), || {
            let s = sonnet(&fleet.urls, gw, 20, 0);
            shots.push(s.clone());
            assert!(
                s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
                "{s:?}"
            );
            s.status == 200
        });
        eventually(&format!("{id} reports Redis up"), || {
            metric(fleet.admins[gw], "tollgate_fleet_redis_up", &[]) == 1.0
        });
    }
    // At rest: the settles of requests in flight at the kill were replayed, once; the holds
    // of reserves whose outcome was unknown were settled to 0.
    let key = total_key("p1");
    eventually("no hold left in Redis", || {
        balance(&fleet.redis, &key).1 == 0
    });
    let committed = balance(&fleet.redis, &key).0;
    assert_eq!(
        committed,
        mock_cost(&fleet.mock),
        "Redis charged exactly what the mock served"
    );
    assert_eq!(
        recorded_cost(&fleet, "p1", &admitted(&shots, 3)),
        committed,
        "the instances' own records add up to Redis's total"
    );
    assert_at_rest(&fleet, committed, 10.0);
}

fn count_503(shots: &[Shot], gw: usize) -> usize {
    shots
        .iter()
        .filter(|s| s.gw == gw && s.status == 503)
        .count()
}

/// `kill -9` the fixture's server through a shared reference (the load threads hold one).
fn kill_redis(redis: &RedisServer) {
    let pid = redis.pid().expect("redis is running");
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -9 redis-server");
    eventually("redis-server is gone", || redis.try_cmd(&["PING"]).is_err());
}
