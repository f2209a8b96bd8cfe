//! Fleet mode end to end (SPEC "Fleet: several instances on one Redis", issue 13): one real
//! `redis-server`, several real `tollgate` processes sharing it and one mock provider.
//!
//! Every figure is checked three ways that do not depend on each other: Redis's own counters
//! (read over raw RESP), each instance's decision records, and the mock's record of what it
//! served (its usage is deterministic: prompt tokens as `GET /_mock/requests` reports them, completion tokens
//! `x-mock-tokens` capped by `max_tokens`). Loopback only; every process is killed on drop.
//!
//! Fleet mode off is the rest of the suite: every other test file runs without `[fleet]`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fault_proxy::FaultProxy;
use common::redis::{Persistence, RedisServer, Reply};
use common::*;
use serde_json::{json, Value};

/// The instances' ids, in start order.
const IDS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const URL_ENV: &str = "TOLLGATE_REDIS_URL";
/// claude-sonnet-4 in the standard config: $3/M input, $15/M output, in nanos per token.
const IN_NANOS: u64 = 3_000;
const OUT_NANOS: u64 = 15_000;

/// Field order matters for drop: the gateways go first, then the ones killed earlier (their
/// temp dirs hold the config and SQLite file a restarted instance runs on), then the fault
/// proxies, the mock, and Redis.
struct Fleet {
    gws: Vec<Gateway>,
    dead: Vec<Gateway>,
    /// Each gateway's base URL (a `Gateway` is not `Sync`; threads take these).
    urls: Vec<String>,
    admins: Vec<u16>,
    /// The fault proxy between instance `i` and Redis, if it has one.
    proxies: Vec<Option<FaultProxy>>,
    /// The URL instance `i` reaches Redis at (its proxy's, or Redis's own).
    redis_urls: Vec<String>,
    /// Instance `i`'s SQLite ledger (the same file across its restarts).
    dbs: Vec<PathBuf>,
    mock: Mock,
    redis: RedisServer,
}

impl Fleet {
    /// The last lines of instance `gw`'s log, for failure messages.
    fn tail(&self, gw: usize) -> String {
        tail_of(&self.gws[gw])
    }

    /// Instance `gw`'s fault proxy (it must have one).
    fn proxy(&self, gw: usize) -> &FaultProxy {
        self.proxies[gw]
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no fault proxy", IDS[gw]))
    }

    /// `kill -9` instance `gw` and reap it (it stays in `gws` until [`Fleet::restart`]).
    fn kill9(&mut self, gw: usize) {
        self.gws[gw].kill9();
        assert!(!self.gws[gw].is_running(), "{} is gone", IDS[gw]);
    }

    /// Start instance `gw` again on its own config and SQLite file (after [`Fleet::kill9`],
    /// or a graceful stop); it gets new ports.
    fn restart(&mut self, gw: usize) {
        let mut env = env_with_admin();
        env.push((URL_ENV, self.redis_urls[gw].as_str()));
        let mut next = Gateway::spawn_on(&self.gws[gw].config_path, &[], &env);
        next.wait_listening();
        let health = next.url("/healthz");
        eventually(&format!("{} answers again", IDS[gw]), || {
            try_request("GET", &health, &[], None).is_ok_and(|r| r.status == 200)
        });
        self.urls[gw] = next.url("");
        self.admins[gw] = next.admin_port();
        let old = std::mem::replace(&mut self.gws[gw], next);
        self.dead.push(old);
    }
}

fn tail_of(gw: &Gateway) -> String {
    let log = gw.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// How a test's fleet is started.
struct Opts {
    n: usize,
    projects: String,
    hold_ttl_s: u32,
    /// `[fleet] rebuild_grace_ms`; the default when `None`.
    rebuild_grace_ms: Option<u64>,
    persistence: Persistence,
    /// Instances that reach Redis through a fault proxy of their own.
    proxied: Vec<usize>,
    /// `[fleet] leases`.
    leases: bool,
}

impl Opts {
    /// `n` instances with `projects`, hold TTL 900 s, AOF on, no proxy.
    fn new(n: usize, projects: &str) -> Opts {
        Opts {
            n,
            projects: projects.to_string(),
            hold_ttl_s: 900,
            rebuild_grace_ms: None,
            persistence: Persistence::Aof,
            proxied: Vec::new(),
            leases: false,
        }
    }
}

/// `rebuild_grace_ms` of a test fleet unless a test sets its own.
const DEFAULT_TEST_GRACE_MS: u64 = 300;

/// The `[fleet]` section of instance `id` (per-request holds: no leases).
fn fleet_section(id: &str) -> String {
    fleet_section_with(id, 900, None, false)
}

fn fleet_section_with(
    id: &str,
    hold_ttl_s: u32,
    rebuild_grace_ms: Option<u64>,
    leases: bool,
) -> String {
    // A fresh Redis keeps admission closed for the grace while instances report their
    // ledgers; the tests' default is short so a fresh fleet opens quickly.
    let grace = format!(
        "rebuild_grace_ms = {}\n",
        rebuild_grace_ms.unwrap_or(DEFAULT_TEST_GRACE_MS)
    );
    format!(
        "\n[fleet]\nredis_url_env = \"{URL_ENV}\"\ninstance = \"{id}\"\nhold_ttl_s = {hold_ttl_s}\ntimeout_ms = 1000\n{grace}leases = {leases}\n"
    )
}

/// `n` instances (`IDS[..n]`) on one Redis (AOF on) and one mock; `projects` replaces the
/// standard config's projects on every instance.
fn start_fleet(n: usize, projects: &str) -> Fleet {
    start(Opts::new(n, projects))
}

fn start(o: Opts) -> Fleet {
    let redis = RedisServer::start_with(o.persistence);
    let mock = Mock::start();
    let mut gws = Vec::new();
    let mut admins = Vec::new();
    let mut proxies = Vec::new();
    let mut redis_urls = Vec::new();
    for (i, id) in IDS[..o.n].iter().enumerate() {
        let proxy = o
            .proxied
            .contains(&i)
            .then(|| FaultProxy::start(redis.addr()));
        let url = proxy.as_ref().map_or(redis.url(), FaultProxy::redis_url);
        let mut env = env_with_admin();
        env.push((URL_ENV, url.as_str()));
        let body = format!(
            "{}{}",
            body_with_projects(&mock, &o.projects),
            fleet_section_with(id, o.hold_ttl_s, o.rebuild_grace_ms, o.leases)
        );
        let gw = Gateway::start_with(&body, &format!("{ADMIN_EXTRA}grace_period_s = 5"), &env);
        admins.push(gw.admin_port());
        gws.push(gw);
        proxies.push(proxy);
        redis_urls.push(url);
    }
    // Admission opens once every instance joined the generation and its grace is over.
    eventually("the fresh fleet opens admission", || {
        redis
            .try_cmd(&["EXISTS", "tg:rebuilding"])
            .is_ok_and(|r| r.to_string() == "0")
            && redis
                .try_cmd(&["EXISTS", "tg:gen"])
                .is_ok_and(|r| r.to_string() == "1")
            && admins
                .iter()
                .all(|a| admin_get(*a, "/admin/fleet").json()["redis"]["joined"] == true)
    });
    Fleet {
        urls: gws.iter().map(|g| g.url("")).collect(),
        dbs: gws.iter().map(|g| g.dir.path().join("ledger.db")).collect(),
        gws,
        dead: Vec::new(),
        admins,
        proxies,
        redis_urls,
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
    sonnet_as(urls, gw, KEY, tokens, latency_ms)
}

/// [`sonnet`] with project key `key`.
fn sonnet_as(urls: &[String], gw: usize, key: &str, tokens: u64, latency_ms: u64) -> Shot {
    let (t, l) = (tokens.to_string(), latency_ms.to_string());
    send(
        urls,
        gw,
        "/v1/messages",
        &[
            ("x-api-key", key),
            ("x-mock-tokens", &t),
            ("x-mock-latency-ms", &l),
        ],
        &chat("claude-sonnet-4", tokens),
    )
}

/// A streamed Messages request on claude-sonnet-4 to the instance at `base`: `tokens` output
/// tokens, one stream event every `chunk_ms`. `Err` when the connection broke (the instance
/// died under it).
fn sonnet_stream(base: &str, tokens: u64, chunk_ms: u64) -> Result<Resp, String> {
    let body = json!({
        "model": "claude-sonnet-4",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "stream": true,
    })
    .to_string();
    let (t, c) = (tokens.to_string(), chunk_ms.to_string());
    try_request(
        "POST",
        &format!("{base}/v1/messages"),
        &[
            ("x-api-key", KEY),
            ("x-mock-tokens", &t),
            ("x-mock-chunk-delay-ms", &c),
        ],
        Some(body.as_bytes()),
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
    records_where(fleet, gw, &format!("project={project}"))
}

/// Every decision record instance `gw` shows for the query `filters` (all pages).
fn records_where(fleet: &Fleet, gw: usize, filters: &str) -> Vec<Value> {
    let base = format!("/admin/decisions?{filters}&limit=1000");
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

/// The allowed records instance `gw` made itself, from its own store: a filter besides the
/// project reads the instance's SQLite, which keeps every record, where the project alone
/// reads the fleet's stream in Redis, which can miss a record made while Redis was away.
fn own_allowed_records(fleet: &Fleet, gw: usize, project: &str) -> Vec<Value> {
    let own = records_where(fleet, gw, &format!("project={project}&decision=allow"));
    for r in &own {
        assert_eq!(r["instance"], IDS[gw], "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
    }
    own
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

/// Σ `cost_usd` of the allowed records each instance made itself (from its own store), once
/// instance `i` shows `allowed[i]` of them.
fn recorded_cost(fleet: &Fleet, project: &str, allowed: &[usize]) -> i64 {
    let mut total = 0;
    for (gw, &n) in allowed.iter().enumerate() {
        let deadline = Instant::now() + common::EVENTUALLY;
        let own: Vec<Value> = loop {
            let own = own_allowed_records(fleet, gw, project);
            if own.len() == n {
                break own;
            }
            // Say what was there, so a miscount can be told from a record that came late.
            assert!(
                Instant::now() < deadline,
                "{} recorded {} allowed requests, not {n}: {:#?}\nthe fleet view's records: {:#?}\n{}",
                IDS[gw],
                own.len(),
                own.iter()
                    .map(|r| (&r["id"], &r["status"], &r["time"]))
                    .collect::<Vec<_>>(),
                records(fleet, gw, project)
                    .iter()
                    .map(|r| (
                        &r["id"],
                        &r["instance"],
                        &r["decision"],
                        &r["reason"],
                        &r["status"]
                    ))
                    .collect::<Vec<_>>(),
                fleet.tail(gw)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        total += own.iter().map(|r| nanos(&r["cost_usd"])).sum::<i64>();
    }
    total
}

/// What the mock served, priced as claude-sonnet-4 from the mock's own usage rules.
fn mock_cost(mock: &Mock) -> i64 {
    mock_cost_where(mock, |_| true)
}

/// The `x-mock-tokens` a recorded mock request asked for (8 when none).
fn asked_tokens(r: &Value) -> u64 {
    req_header(r, "x-mock-tokens")
        .and_then(|t| t.parse().ok())
        .unwrap_or(8)
}

/// [`mock_cost`] of the recorded requests `pick` selects.
fn mock_cost_where(mock: &Mock, pick: impl Fn(&Value) -> bool) -> i64 {
    mock.requests()
        .iter()
        .filter(|r| pick(r))
        .map(|r| {
            assert_eq!(r["path"], "/v1/messages", "only Messages in these tests");
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("")).expect("body");
            let prompt = r["prompt_tokens"].as_u64().expect("prompt_tokens");
            let completion = asked_tokens(r)
                .min(body["max_tokens"].as_u64().unwrap_or(u64::MAX))
                .min(4096);
            (prompt * IN_NANOS + completion * OUT_NANOS) as i64
        })
        .sum()
}

/// The Redis hash `tg:{p:PROJECT}:<what>` (`holds` or `done`), each value parsed as JSON.
fn records_in(redis: &RedisServer, project: &str, what: &str) -> BTreeMap<String, Value> {
    redis
        .hgetall(&format!("tg:{{p:{project}}}:{what}"))
        .into_iter()
        .map(|(id, raw)| {
            let v = serde_json::from_str(&raw)
                .unwrap_or_else(|e| panic!("{what} record {id} is not JSON ({e}): {raw}"));
            (id, v)
        })
        .collect()
}

/// The open holds of `project` in Redis: id → record (`o` its instance, `e` its expiry in
/// server ms, `m` the amount held on each account).
fn open_holds(redis: &RedisServer, project: &str) -> BTreeMap<String, Value> {
    records_in(redis, project, "holds")
}

/// The tombstones of `project` (settled, corrected, burned, charged, void): id → record
/// (`s` what happened, `x` the actuals of a settle, `b` when a burn happened).
fn tombstones(redis: &RedisServer, project: &str) -> BTreeMap<String, Value> {
    records_in(redis, project, "done")
}

/// A decimal-string field of a Lua record as an integer.
fn int_field(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The amount a hold (or a burned hold's tombstone) holds on its one account.
fn held_amount(rec: &Value) -> i64 {
    int_field(&rec["m"][0])
}

/// Integer `SELECT` on an instance's SQLite ledger (read with its own connection while the
/// instance runs, or after it died).
fn sqlite_i64(db: &Path, sql: &str, args: &[&str]) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy_timeout");
    c.query_row(sql, rusqlite::params_from_iter(args), |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", db.display()))
}

/// What an instance's own ledger says it spent on `project` (its `total` row: every charge is
/// added to the day, week, month and total rows of each account).
fn sqlite_spend(db: &Path, project: &str) -> i64 {
    sqlite_i64(
        db,
        "SELECT COALESCE(SUM(spent_nanos), 0) FROM spend WHERE project = ?1 AND period = 'total'",
        &[project],
    )
}

/// Σ over the fleet's instances of [`sqlite_spend`].
fn fleet_sqlite_spend(fleet: &Fleet, project: &str) -> i64 {
    fleet.dbs.iter().map(|db| sqlite_spend(db, project)).sum()
}

/// An instance's settle queue (`fleet_settles`): hold id → the settle it will send.
fn sqlite_queue(db: &Path) -> BTreeMap<String, Value> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy_timeout");
    let mut st = c
        .prepare("SELECT hold_id, body FROM fleet_settles")
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("query fleet_settles");
    rows.map(|r| {
        let (id, body) = r.expect("row");
        (
            id,
            serde_json::from_str(&body).expect("settle body is JSON"),
        )
    })
    .collect()
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
            "{}: no lease left at rest: {last}\n{}",
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
    shared_limit(false);
}

/// Leases near the limit: slices shrink, then requests hold their own; never past it.
#[test]
fn three_instances_on_leases_never_spend_past_one_shared_limit() {
    shared_limit(true);
}

fn shared_limit(leases: bool) {
    // One worst case: the prompt bound at $3/M plus 1000 output tokens at $15/M, about
    // $0.0153; the true cost is about $0.01507. $0.16 fits about ten.
    let limit_usd = 0.16;
    let limit = (limit_usd * 1e9) as i64;
    let mut o = Opts::new(
        3,
        &p1(&format!(
            "budget = {{ limit_usd = {limit_usd}, period = \"total\" }}"
        )),
    );
    o.leases = leases;
    let fleet = start(o);
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

    // Settles run in `logging`, after the client has its response: wait for them to land.
    eventually("every hold settled", || balance(&fleet.redis, &key).1 == 0);
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
        // Every fleet metric the alert rules use is exported in fleet mode.
        let rules =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/alerts.yml"))
                .expect("conf/alerts.yml");
        let exported: BTreeSet<String> = scrape(admin).into_iter().map(|s| s.name).collect();
        for (i, _) in rules.match_indices("tollgate_fleet_") {
            let name: String = rules[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "alerts.yml uses {name}, not exported"
            );
        }
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
    eventually("every hold settled", || {
        balance(&fleet.redis, &total_key("p1")).1 == 0
    });
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

/// `budget = { limit_usd = L, period = "total" }`
fn total_budget(limit_usd: f64) -> String {
    format!("budget = {{ limit_usd = {limit_usd}, period = \"total\" }}")
}

/// Each of gw-a's holds (as they were while open) is either still open, and counted in
/// `held`, or burned after its expiry into `committed`: never released without a settle.
fn assert_still_counted(redis: &RedisServer, holds: &BTreeMap<String, Value>) {
    let open = open_holds(redis, "p1");
    let done = tombstones(redis, "p1");
    for (id, rec) in holds {
        if let Some(now) = open.get(id) {
            assert_eq!(held_amount(now), held_amount(rec), "{id}: the same hold");
            continue;
        }
        let t = done
            .get(id)
            .unwrap_or_else(|| panic!("hold {id} left Redis without a trace: {open:?} {done:?}"));
        assert_eq!(t["s"], "burned", "{id} was never settled, only burned: {t}");
        assert_eq!(
            held_amount(t),
            held_amount(rec),
            "{id}: the whole worst case burns"
        );
        assert!(
            int_field(&t["b"]) >= int_field(&rec["e"]),
            "{id} burned at {} before it expired at {}",
            t["b"],
            rec["e"]
        );
    }
}

/// Issue 13, kill -9 one instance mid-stream: its open holds stay counted (held) until their
/// TTL, then burn into committed (spent, never refunded); meanwhile the other instances admit
/// only within what is left of the one limit; restarted on its own SQLite file, the instance
/// replays the settles it had queued before the kill, once, and the holds of the streams that
/// never finished stay burned. At rest, Redis = Σ SQLite + the burned worst cases.
#[test]
fn an_instance_killed_mid_stream_burns_its_holds_and_replays_its_queued_settles_once() {
    // Worst cases: a streamed request asking for 120 tokens holds about $0.0021, one asking
    // for 30 about $0.0008, a plain one for 100 about $0.0018 (it costs about $0.0016).
    let limit_usd = 0.02;
    let limit = 20_000_000;
    let mut o = Opts::new(3, &p1(&total_budget(limit_usd)));
    o.hold_ttl_s = 3;
    o.proxied = vec![0];
    let mut fleet = start(o);
    let key = total_key("p1");
    for gw in 0..3 {
        for _ in 0..2 {
            let s = sonnet(&fleet.urls, gw, 10, 0);
            assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(gw));
        }
    }
    let before = fleet.mock.count();

    // On gw-a: three long streams (the kill cuts them) and two short ones, which end while
    // gw-a cannot reach Redis, so their settles wait in its SQLite queue.
    let a_holds: BTreeMap<String, Value> = std::thread::scope(|s| {
        let base = fleet.urls[0].clone();
        let long: Vec<_> = (0..3)
            .map(|_| {
                let b = base.clone();
                s.spawn(move || sonnet_stream(&b, 120, 200))
            })
            .collect();
        let short: Vec<_> = (0..2)
            .map(|_| {
                let b = base.clone();
                s.spawn(move || sonnet_stream(&b, 30, 200))
            })
            .collect();
        let mut holds = BTreeMap::new();
        eventually(
            "gw-a holds five worst cases and the mock streams them",
            || {
                holds = open_holds(&fleet.redis, "p1")
                    .into_iter()
                    .filter(|(_, r)| r["o"] == "gw-a")
                    .collect();
                holds.len() == 5 && fleet.mock.count() == before + 5
            },
        );
        fleet.proxy(0).refuse();
        for t in short {
            let r = t
                .join()
                .expect("short stream")
                .expect("a short stream ends normally");
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                r.body.contains("message_stop"),
                "the whole stream: {}",
                r.body
            );
        }
        eventually("gw-a queued its two settles in SQLite", || {
            sqlite_queue(&fleet.dbs[0]).len() == 2
        });
        fleet.kill9(0);
        for t in long {
            let r = t.join().expect("long stream");
            assert!(
                !r.as_ref().is_ok_and(|r| r.body.contains("message_stop")),
                "a long stream was cut by the kill: {r:?}"
            );
        }
        holds
    });

    let queued = sqlite_queue(&fleet.dbs[0]);
    let queued_actual: i64 = queued
        .values()
        .map(|b| b["actuals"][0].as_i64().expect("actual"))
        .sum();
    for (id, b) in &queued {
        assert!(
            a_holds.contains_key(id),
            "queued {id} is one of gw-a's holds"
        );
        assert!(
            b["actuals"][0].as_i64() > Some(0),
            "a served stream costs: {b}"
        );
    }
    let a_amount: i64 = a_holds.values().map(held_amount).sum();
    let cut: BTreeMap<String, Value> = a_holds
        .iter()
        .filter(|(id, _)| !queued.contains_key(*id))
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect();
    assert_eq!(cut.len(), 3, "the three long streams' holds");
    let cut_amount: i64 = cut.values().map(held_amount).sum();

    // Right after the kill every hold of gw-a still counts, held or burned.
    assert_still_counted(&fleet.redis, &a_holds);
    eventually_eq(
        "committed + held = Σ SQLite − what gw-a queued + gw-a's worst cases",
        || {
            let (c, h) = balance(&fleet.redis, &key);
            (
                c + h,
                fleet_sqlite_spend(&fleet, "p1") - queued_actual + a_amount,
            )
        },
    );

    // Meanwhile the other instances admit only within what gw-a's holds leave of the limit.
    let stop = AtomicBool::new(false);
    let (bc_admitted, refused_at) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let (c, h) = balance(&fleet.redis, &key);
                assert!(c + h <= limit, "committed {c} + held {h} > limit {limit}");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut admitted = 0;
        for i in 0..40 {
            let s = sonnet(&fleet.urls, 1 + i % 2, 100, 0);
            if s.status == 402 {
                assert_eq!(s.code, "budget_exceeded", "{s:?}");
                return (admitted, Some(balance(&fleet.redis, &key)));
            }
            assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(s.gw));
            admitted += 1;
        }
        (admitted, None)
    });
    let (c1, h1) = refused_at.expect("gw-b and gw-c reach the limit");
    assert!(bc_admitted >= 1, "there was room for some: {c1} {h1}");
    let worst_bc = tombstones(&fleet.redis, "p1")
        .values()
        .find(|t| t["o"] == "gw-b")
        .map(held_amount)
        .expect("a settled hold of gw-b");
    assert!(c1 + h1 <= limit, "{c1} + {h1} > {limit}");
    assert!(
        c1 + h1 - a_amount + worst_bc <= limit,
        "without gw-a's holds there would have been room: the refusal counts them ({c1} + {h1}, gw-a {a_amount}, worst {worst_bc})"
    );

    // After their TTL the holds burn (the live instances reap every 5 s and on reserves).
    eventually("gw-a's holds burned", || {
        open_holds(&fleet.redis, "p1")
            .values()
            .all(|r| r["o"] != "gw-a")
    });
    assert_still_counted(&fleet.redis, &a_holds);
    eventually_eq(
        "burned: (committed, held) = (Σ SQLite − queued + gw-a's worst cases, 0)",
        || {
            (
                balance(&fleet.redis, &key),
                (
                    fleet_sqlite_spend(&fleet, "p1") - queued_actual + a_amount,
                    0,
                ),
            )
        },
    );

    // gw-a again, on the same SQLite file: it replays its queue, once.
    fleet.proxy(0).heal();
    fleet.restart(0);
    eventually("gw-a replayed its queue", || {
        sqlite_queue(&fleet.dbs[0]).is_empty()
    });
    let done = tombstones(&fleet.redis, "p1");
    for (id, b) in &queued {
        let t = &done[id];
        assert!(
            t["s"] == "corrected" || t["s"] == "settled",
            "{id}: the queued settle was applied: {t}"
        );
        assert_eq!(
            int_field(&t["x"][0]),
            b["actuals"][0].as_i64().expect("actual"),
            "{id}: at its true cost"
        );
    }
    for id in cut.keys() {
        assert_eq!(
            done[id]["s"], "burned",
            "{id}: never finished, stays burned"
        );
    }
    eventually_eq(
        "at rest: (committed, held) = (Σ SQLite + the burned worst cases, 0)",
        || {
            (
                balance(&fleet.redis, &key),
                (fleet_sqlite_spend(&fleet, "p1") + cut_amount, 0),
            )
        },
    );
    let spent = fleet_sqlite_spend(&fleet, "p1");
    assert_eq!(
        spent,
        mock_cost_where(&fleet.mock, |r| asked_tokens(r) != 120),
        "the ledgers hold what the mock served to the end"
    );
    assert!(spent + cut_amount <= limit);
    // The restarted instance decides again (its share of the budget is gone: 402, not 503).
    let s = sonnet(&fleet.urls, 0, 100, 0);
    assert!(
        s.status == 200 || (s.status == 402 && s.code == "budget_exceeded"),
        "{s:?}\n{}",
        fleet.tail(0)
    );
    let f = admin_get(fleet.admins[0], "/admin/fleet").json();
    assert_eq!(f["redis"]["ok"], true, "{f}");
    assert_eq!(f["redis"]["joined"], true, "{f}");
}

/// [`eventually`] for an equality: polls `f` until its two sides agree, and names both when
/// they never do.
fn eventually_eq<T: PartialEq + std::fmt::Debug>(what: &str, mut f: impl FnMut() -> (T, T)) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (a, b) = f();
        if a == b {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}: {a:?} != {b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether Redis is in its rebuild (after a data loss): no generation yet, or the rebuild
/// grace running. Either only ends: once seen after an answer, it was so during the reserve.
fn rebuilding(redis: &RedisServer) -> bool {
    let gen = redis.try_cmd(&["GET", "tg:gen"]).expect("GET tg:gen");
    let grace = redis
        .try_cmd(&["EXISTS", "tg:rebuilding"])
        .expect("EXISTS tg:rebuilding");
    gen == Reply::Bulk(None) || grace == Reply::Int(1)
}

/// Issue 13, Redis with persistence off killed and restarted (everything lost): while the
/// fleet rebuilds, budgeted requests get 503 ledger_unavailable; then the counters are the
/// instances' own ledgers (the spend from before the loss carried by their joins), admission
/// resumes, and the budget still holds.
#[test]
fn redis_losing_its_data_rebuilds_the_counters_from_the_instances_ledgers() {
    let limit_usd = 0.03;
    let limit = 30_000_000;
    let mut o = Opts::new(3, &p1(&total_budget(limit_usd)));
    o.persistence = Persistence::Off;
    o.rebuild_grace_ms = Some(2000);
    let mut fleet = start(o);
    let key = total_key("p1");
    for gw in 0..3 {
        for _ in 0..3 {
            let s = sonnet(&fleet.urls, gw, 100, 0);
            assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(gw));
        }
    }
    eventually_eq("Redis and the ledgers agree", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
    let spent_before = balance(&fleet.redis, &key).0;
    assert_eq!(spent_before, mock_cost(&fleet.mock));
    let old_gen = fleet.redis.cmd(&["GET", "tg:gen"]);

    // Persistence off: the restart loses everything (the instances notice on their own).
    fleet.redis.restart();
    let mut shots = Vec::new();
    let mut while_rebuilding = 0;
    let mut served = [false; 3];
    eventually("every instance admits again", || {
        for gw in 0..3 {
            if served[gw] {
                continue;
            }
            let s = sonnet(&fleet.urls, gw, 100, 0);
            if rebuilding(&fleet.redis) {
                assert_eq!(
                    (s.status, s.code.as_str()),
                    (503, "ledger_unavailable"),
                    "{}: answered while Redis was rebuilding\n{}",
                    IDS[gw],
                    fleet.tail(gw)
                );
                while_rebuilding += 1;
            }
            assert!(
                s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
                "{s:?}\n{}",
                fleet.tail(gw)
            );
            served[gw] |= s.status == 200;
            shots.push(s);
        }
        served.iter().all(|s| *s)
    });
    assert!(
        while_rebuilding > 0,
        "some requests came while Redis was rebuilding: {shots:?}"
    );
    let gen = fleet.redis.cmd(&["GET", "tg:gen"]);
    assert_ne!(gen, old_gen, "a new generation");
    for (gw, &admin) in fleet.admins.iter().enumerate() {
        let f = admin_get(admin, "/admin/fleet").json();
        assert_eq!(f["redis"]["generation"], gen.as_str(), "{}: {f}", IDS[gw]);
    }
    eventually_eq(
        "rebuilt: Redis = Σ SQLite, the spend from before the loss included",
        || {
            (
                balance(&fleet.redis, &key),
                (fleet_sqlite_spend(&fleet, "p1"), 0),
            )
        },
    );
    let rebuilt = balance(&fleet.redis, &key).0;
    assert!(
        rebuilt > spent_before,
        "carried {spent_before} and the new spend: {rebuilt}"
    );

    // The rest of the budget, from every instance at once: never past the limit.
    let stop = AtomicBool::new(false);
    let shots: Vec<Shot> = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let (c, h) = balance(&fleet.redis, &key);
                assert!(c + h <= limit, "committed {c} + held {h} > limit {limit}");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let workers: Vec<_> = (0..30)
            .map(|i| {
                let urls = &fleet.urls;
                s.spawn(move || sonnet(urls, i % 3, 100, 100))
            })
            .collect();
        let shots = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        stop.store(true, Ordering::SeqCst);
        shots
    });
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 402 && s.code == "budget_exceeded"),
            "only 200 or 402 budget_exceeded: {s:?}"
        );
    }
    assert!(
        shots.iter().any(|s| s.status == 402),
        "the budget ran out: {shots:?}"
    );
    eventually_eq("at rest: (committed, held) = (Σ SQLite, 0)", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
    let spent = fleet_sqlite_spend(&fleet, "p1");
    assert_eq!(
        spent,
        mock_cost(&fleet.mock),
        "the ledgers hold what the mock served"
    );
    assert!(spent <= limit, "spent {spent} > limit {limit}");
}

/// Issue 13, moving a single instance to fleet mode: its SQLite spend is carried into Redis
/// (once, however often it restarts), a second instance sees the fleet-wide figure in
/// `/admin/projects`, and admits only within what the first left of the limit.
#[test]
fn a_single_instance_moved_to_fleet_mode_carries_its_spend_over() {
    let limit_usd = 0.01;
    let limit = 10_000_000;
    let redis = RedisServer::start();
    let mock = Mock::start();
    let url = redis.url();
    let mut env = env_with_admin();
    env.push((URL_ENV, url.as_str()));
    let server = format!("{ADMIN_EXTRA}grace_period_s = 5");
    let body = body_with_projects(&mock, &p1(&total_budget(limit_usd)));

    // Alone, on its own SQLite ledger.
    let mut solo = Gateway::start_with(&body, &server, &env_with_admin());
    let db = solo.dir.path().join("ledger.db");
    for _ in 0..3 {
        let s = sonnet(&[solo.url("")], 0, 100, 0);
        assert_eq!(s.status, 200, "{s:?}\n{}", tail_of(&solo));
    }
    solo.signal("TERM");
    assert!(
        solo.wait_exit(Duration::from_secs(20)).is_some(),
        "a graceful stop\n{}",
        tail_of(&solo)
    );
    let spent = sqlite_spend(&db, "p1");
    assert!(spent > 0);
    assert_eq!(
        spent,
        mock_cost(&mock),
        "the ledger holds what the mock served"
    );
    assert_eq!(
        redis.try_cmd(&["EXISTS", &total_key("p1")]),
        Ok(Reply::Int(0)),
        "nothing in Redis yet"
    );

    // The same file, now in fleet mode.
    let config = std::fs::read_to_string(&solo.config_path).expect("config");
    rewrite(
        &solo.config_path,
        &format!("{config}{}", fleet_section("gw-a")),
    );
    let start_a = || {
        let mut a = Gateway::spawn_on(&solo.config_path, &[], &env);
        a.wait_listening();
        let health = a.url("/healthz");
        eventually("gw-a answers", || {
            try_request("GET", &health, &[], None).is_ok_and(|r| r.status == 200)
        });
        a
    };
    let mut a = start_a();
    eventually_eq("Redis carries gw-a's spend", || {
        (balance(&redis, &total_key("p1")), (spent, 0))
    });
    let b_body = format!("{body}{}", fleet_section("gw-b"));
    let b = Gateway::start_with(&b_body, &server, &env);
    // A new instance refuses budgeted requests until it has reported its ledger.
    eventually(
        "gw-b joined the generation and the fresh Redis's grace is over",
        || {
            admin_get(b.admin_port(), "/admin/fleet").json()["redis"]["joined"] == true
                && redis
                    .try_cmd(&["EXISTS", "tg:rebuilding"])
                    .is_ok_and(|r| r.to_string() == "0")
        },
    );
    for (who, admin) in [("gw-a", a.admin_port()), ("gw-b", b.admin_port())] {
        let p = project(admin, "p1");
        assert_eq!(p["source"], "fleet", "{who}: {p}");
        assert_eq!(
            nanos(&p["spent_usd"]),
            spent,
            "{who}: the fleet-wide figure: {p}"
        );
        assert_eq!(nanos(&p["reserved_usd"]), 0, "{who}: {p}");
        assert_eq!(
            nanos(&p["remaining_usd"]),
            limit - spent,
            "{who}: limit − spent: {p}"
        );
    }

    // gw-b, with nothing spent on its own, admits only within what gw-a left.
    let b_db = b.dir.path().join("ledger.db");
    let mut refused = false;
    for _ in 0..10 {
        let s = sonnet(&[b.url("")], 0, 100, 0);
        if s.status == 402 {
            assert_eq!(s.code, "budget_exceeded", "{s:?}");
            refused = true;
            break;
        }
        assert_eq!(s.status, 200, "{s:?}\n{}", tail_of(&b));
    }
    assert!(refused, "gw-b reached the fleet-wide limit");
    eventually_eq("Redis = gw-a's carried spend + gw-b's", || {
        (
            balance(&redis, &total_key("p1")),
            (spent + sqlite_spend(&b_db, "p1"), 0),
        )
    });
    let b_spent = sqlite_spend(&b_db, "p1");
    assert!(
        b_spent <= limit - spent,
        "gw-b spent {b_spent}, more than the {} gw-a left",
        limit - spent
    );

    // A restart of gw-a joins the same generation again: its spend is not carried twice.
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        tail_of(&a)
    );
    let a = start_a();
    eventually("gw-a joined again", || {
        admin_get(a.admin_port(), "/admin/fleet").json()["redis"]["joined"] == true
    });
    assert_eq!(
        balance(&redis, &total_key("p1")),
        (spent + b_spent, 0),
        "carried once"
    );
    assert_eq!(
        nanos(&project(a.admin_port(), "p1")["spent_usd"]),
        spent + b_spent
    );
}

/// At rest after a fault: no hold open in Redis, no settle left in any queue, and Redis = Σ
/// SQLite = what the mock served (priced from its own usage rules).
fn assert_clean_at_rest(fleet: &Fleet) {
    let key = total_key("p1");
    eventually_eq("no hold open in Redis", || {
        (open_holds(&fleet.redis, "p1"), BTreeMap::new())
    });
    for (gw, db) in fleet.dbs.iter().enumerate() {
        eventually_eq(&format!("{}'s settle queue is empty", IDS[gw]), || {
            (sqlite_queue(db), BTreeMap::new())
        });
    }
    eventually_eq("(committed, held) = (Σ SQLite, 0)", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(fleet, "p1"), 0),
        )
    });
    assert_eq!(
        balance(&fleet.redis, &key).0,
        mock_cost(&fleet.mock),
        "Redis charged exactly what the mock served"
    );
}

/// Issue 13, Redis slower than `timeout_ms` for one instance (a fault proxy adds latency):
/// its budgeted requests get 503 ledger_unavailable and reach no provider, the other
/// instance is unaffected, and once healed no hold is left behind (a reserve that timed out
/// may still have made its hold: it is settled to 0), with a hold TTL far longer than the
/// test, so a leak cannot hide behind a burn.
#[test]
fn redis_slower_than_the_timeout_gives_503_and_leaks_no_hold() {
    let mut o = Opts::new(2, &p1(&total_budget(10.0)));
    o.proxied = vec![0];
    let fleet = start(o);
    for gw in 0..2 {
        let s = sonnet(&fleet.urls, gw, 10, 0);
        assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(gw));
    }
    let served = fleet.mock.count();
    fleet
        .proxy(0)
        .latency(Duration::from_millis(1500), Duration::ZERO);
    for _ in 0..3 {
        let s = sonnet(&fleet.urls, 0, 10, 0);
        assert_eq!(
            (s.status, s.code.as_str()),
            (503, "ledger_unavailable"),
            "Redis answers gw-a later than timeout_ms\n{}",
            fleet.tail(0)
        );
    }
    assert_eq!(fleet.mock.count(), served, "no 503 reached the provider");
    let s = sonnet(&fleet.urls, 1, 10, 0);
    assert_eq!(s.status, 200, "gw-b talks to Redis directly: {s:?}");
    assert!(fleet.proxy(0).bytes_up() > 0);

    fleet.proxy(0).heal();
    eventually("gw-a admits again", || {
        let s = sonnet(&fleet.urls, 0, 10, 0);
        assert!(
            s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
            "{s:?}"
        );
        s.status == 200
    });
    assert_clean_at_rest(&fleet);
}

/// Issue 13, replies lost after Redis ran the command (a fault proxy resets gw-a's
/// connection instead of forwarding the answer), several times under load: whatever the
/// command was (a reserve, a settle, a heartbeat), no settle is applied twice and no hold is
/// left: at rest Redis = Σ SQLite = what the mock served.
#[test]
fn replies_lost_under_load_double_apply_nothing_and_leak_no_hold() {
    let mut o = Opts::new(2, &p1(&total_budget(10.0)));
    o.proxied = vec![0];
    let fleet = start(o);
    let stop = AtomicBool::new(false);
    let shots = Mutex::new(Vec::<Shot>::new());
    let served_by_a = || {
        shots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.gw == 0 && s.status == 200)
            .count()
    };
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for gw in [0, 0, 0, 1] {
            let (urls, stop, shots) = (&fleet.urls, &stop, &shots);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let shot = sonnet(urls, gw, 20, 30);
                    shots.lock().unwrap().push(shot);
                }
            });
        }
        eventually("load is served", || served_by_a() >= 5);
        for n in 1..=6 {
            fleet.proxy(0).drop_next_reply();
            eventually(&format!("reply {n} dropped"), || {
                fleet.proxy(0).replies_dropped() == n
            });
            let now = served_by_a();
            eventually("gw-a serves again", || served_by_a() > now);
        }
        stop.store(true, Ordering::SeqCst);
    });
    let shots = shots.into_inner().unwrap();
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
            "only 200 or 503 ledger_unavailable: {s:?}"
        );
    }
    assert!(fleet.proxy(0).resets() >= 6);
    assert_clean_at_rest(&fleet);
    let ok = shots.iter().filter(|s| s.status == 200).count();
    assert_eq!(
        fleet.mock.count(),
        ok as u64,
        "every admitted request reached the provider once, no refused one did"
    );
}

/// `p1` with a budget (key `KEY`) and `p2` with neither budget nor rate limit (key `KEY2`).
fn p1_budget_p2_free(limit_usd: f64) -> String {
    format!(
        "{}[[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\n",
        p1(&total_budget(limit_usd))
    )
}

/// The one budget key of a project in Redis (a project without a budget counts its spend in
/// the month's window).
fn only_budget_key(redis: &RedisServer, project: &str) -> String {
    let keys = redis.cmd(&["KEYS", &format!("tg:{{p:{project}}}:b:*")]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 1, "one budget key of {project}: {keys:?}");
    keys[0].to_string()
}

/// Issue 13, Redis down: a project with no budget and no rate limit needs no hold, so it
/// keeps serving on every instance while a budgeted one gets 503; once Redis is back its
/// spend reaches Redis (the queued settles replayed: `charged`, there was no hold).
#[test]
fn a_project_without_limits_serves_while_redis_is_down_and_is_charged_when_it_is_back() {
    let mut fleet = start_fleet(2, &p1_budget_p2_free(10.0));
    // p1 asks for 10 tokens, p2 for 30: the mock's records tell them apart.
    let p2_cost = |mock: &Mock| mock_cost_where(mock, |r| asked_tokens(r) == 30);
    for gw in 0..2 {
        for (key, tokens) in [(KEY, 10), (KEY2, 30)] {
            let s = sonnet_as(&fleet.urls, gw, key, tokens, 0);
            assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(gw));
        }
    }
    let p2_key = only_budget_key(&fleet.redis, "p2");
    eventually_eq("p2 in Redis before", || {
        (
            fleet.redis.hget_i64(&p2_key, "committed"),
            p2_cost(&fleet.mock),
        )
    });
    let charged_before = tombstones(&fleet.redis, "p2")
        .values()
        .filter(|t| t["s"] == "charged")
        .count();
    assert_eq!(charged_before, 0, "every settle so far had its hold");

    kill_redis(&fleet.redis);
    let served = fleet.mock.count();
    let mut down: usize = 0;
    for gw in 0..2 {
        for _ in 0..3 {
            let s = sonnet_as(&fleet.urls, gw, KEY, 10, 0);
            assert_eq!(
                (s.status, s.code.as_str()),
                (503, "ledger_unavailable"),
                "p1 has a budget\n{}",
                fleet.tail(gw)
            );
            let s = sonnet_as(&fleet.urls, gw, KEY2, 30, 0);
            assert_eq!(s.status, 200, "p2 needs no hold: {s:?}\n{}", fleet.tail(gw));
            down += 1;
        }
    }
    assert_eq!(
        fleet.mock.count(),
        served + down as u64,
        "only p2 reached the provider while Redis was down"
    );
    eventually("p2's settles wait in SQLite", || {
        let queued: usize = fleet.dbs.iter().map(|db| sqlite_queue(db).len()).sum();
        queued >= down
    });

    fleet.redis.restart();
    eventually_eq("p2's spend reached Redis", || {
        (
            (
                fleet.redis.hget_i64(&p2_key, "committed"),
                fleet.redis.hget_i64(&p2_key, "held"),
            ),
            (p2_cost(&fleet.mock), 0),
        )
    });
    assert_eq!(
        fleet.redis.hget_i64(&p2_key, "committed"),
        fleet
            .dbs
            .iter()
            .map(|db| sqlite_spend(db, "p2"))
            .sum::<i64>(),
        "Redis = Σ SQLite for p2"
    );
    let charged = tombstones(&fleet.redis, "p2")
        .values()
        .filter(|t| t["s"] == "charged")
        .count();
    assert_eq!(charged, down, "each served while down was charged once");
    for (gw, db) in fleet.dbs.iter().enumerate() {
        eventually_eq(&format!("{}'s settle queue is empty", IDS[gw]), || {
            (sqlite_queue(db), BTreeMap::new())
        });
    }
    for (gw, id) in IDS.iter().enumerate().take(2) {
        eventually(&format!("{} admits p1 again", id), || {
            sonnet_as(&fleet.urls, gw, KEY, 10, 0).status == 200
        });
    }
    eventually_eq("p1 at rest", || {
        (
            balance(&fleet.redis, &total_key("p1")),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
}

/// Wait, if needed, until the current minute has at least `need_s` seconds left: the fleet's
/// rate windows are per minute.
fn clear_of_minute_boundary(need_s: u64) {
    let second = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            % 60
    };
    let deadline = Instant::now() + Duration::from_secs(need_s + 5);
    while second() + need_s >= 60 {
        assert!(Instant::now() < deadline, "the minute does not turn");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Σ of a project's `tpm` window counts in Redis (one window: the test stays in one minute).
fn tpm_count(redis: &RedisServer, project: &str) -> i64 {
    let keys = redis.cmd(&["KEYS", &format!("tg:{{p:{project}}}:r:tpm:*")]);
    keys.lines()
        .filter(|l| !l.is_empty())
        .map(|k| redis.hget_i64(k, "n"))
        .sum()
}

/// Issue 13, tpm counts across the fleet: requests of known token usage, one at a time over
/// three instances; once the fleet's tokens in the minute reach tpm, every instance refuses
/// with 429 rate_limited.
#[test]
fn tpm_counts_tokens_across_the_fleet() {
    let tpm = 100;
    let fleet = start_fleet(3, &p1(&format!("rate_limit = {{ tpm = {tpm} }}")));
    clear_of_minute_boundary(15);
    let mut admitted = 0;
    let mut refused = None;
    for i in 0..20 {
        let s = mini(&fleet.urls, i % 3);
        if s.status == 429 {
            refused = Some(s);
            break;
        }
        assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(s.gw));
        admitted += 1;
        // The mock's usage for what it served: prompt as it reported, completion 2.
        let used: i64 = fleet
            .mock
            .requests()
            .iter()
            .map(|r| r["prompt_tokens"].as_u64().expect("prompt_tokens") as i64 + 2)
            .sum();
        // Wait for the settle to count the tokens before the next admission.
        eventually_eq("the fleet's tpm window counts what was served", || {
            (tpm_count(&fleet.redis, "p1"), used)
        });
    }
    let refused = refused.expect("the tpm limit is reached");
    assert_eq!(refused.code, "rate_limited", "{refused:?}");
    let per: Vec<i64> = fleet
        .mock
        .requests()
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().expect("prompt_tokens") as i64 + 2)
        .collect();
    // Admitted while the count was below tpm: exactly until the running total reached it.
    let mut total = 0;
    let want = per
        .iter()
        .position(|t| {
            total += t;
            total >= tpm
        })
        .map(|i| i + 1);
    assert_eq!(
        Some(admitted),
        want,
        "tokens per request {per:?}, tpm {tpm}"
    );
    for (gw, id) in IDS.iter().enumerate().take(3) {
        let s = mini(&fleet.urls, gw);
        assert_eq!(
            (s.status, s.code.as_str()),
            (429, "rate_limited"),
            "{}: the fleet is over its tpm",
            id
        );
    }
    assert_eq!(
        fleet.mock.count(),
        admitted as u64,
        "no refused request was served"
    );
}

/// Change `from` to `to` in instance `gw`'s config file and reload it: `POST /admin/reload`,
/// or SIGHUP when `hup`. Returns once the instance runs the new config.
fn reload_with(fleet: &Fleet, gw: usize, from: &str, to: &str, hup: bool) {
    let path = &fleet.gws[gw].config_path;
    let text = std::fs::read_to_string(path).expect("config");
    assert!(text.contains(from), "{from:?} in {}", path.display());
    rewrite(path, &text.replace(from, to));
    let admin = fleet.admins[gw];
    if hup {
        let ok = reloads(admin, "ok");
        fleet.gws[gw].signal("HUP");
        eventually(&format!("{} reloaded on SIGHUP", IDS[gw]), || {
            reloads(admin, "ok") > ok
        });
    } else {
        let r = admin_post(admin, "/admin/reload");
        assert_eq!(r.status, 200, "{}: {}\n{}", IDS[gw], r.body, fleet.tail(gw));
    }
}

/// Issue 13, a limit lowered below what the fleet has committed (the nearest end-to-end
/// stand-in for a period rolling over with holds open): after a reload on every instance each
/// refuses at once with 402, `remaining_usd` is 0 (never negative), and nothing else breaks:
/// another project serves, Redis is unchanged, raising the limit again admits again.
#[test]
fn a_limit_lowered_below_the_committed_spend_refuses_everywhere_at_once() {
    let fleet = start_fleet(3, &p1_budget_p2_free(0.5));
    let key = total_key("p1");
    // About $0.0016 on each instance: $0.0047 committed fleet-wide.
    for gw in 0..3 {
        let s = sonnet(&fleet.urls, gw, 100, 0);
        assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(gw));
    }
    eventually_eq("at rest", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
    let committed = balance(&fleet.redis, &key).0;
    let served = fleet.mock.count();

    // $0.002: below the fleet's $0.0047, above what any one instance spent, so the refusal
    // can only come from the fleet-wide figure.
    let (high, low) = ("limit_usd = 0.5", "limit_usd = 0.002");
    for gw in 0..3 {
        reload_with(&fleet, gw, high, low, gw == 2);
    }
    for (gw, id) in IDS.iter().enumerate().take(3) {
        // One output token: a worst case of about $0.0003, which the instance's own spend
        // would leave room for.
        let s = sonnet(&fleet.urls, gw, 1, 0);
        assert_eq!(
            (s.status, s.code.as_str()),
            (402, "budget_exceeded"),
            "{}: the first request after the reload\n{}",
            id,
            fleet.tail(gw)
        );
        let p = project(fleet.admins[gw], "p1");
        assert_eq!(p["limit_usd"].as_f64(), Some(0.002), "{}: {p}", id);
        assert_eq!(
            p["remaining_usd"].as_f64(),
            Some(0.0),
            "{}: never negative: {p}",
            id
        );
        assert_eq!(nanos(&p["spent_usd"]), committed, "{}: {p}", id);
        assert_eq!(nanos(&p["reserved_usd"]), 0, "{}: {p}", id);
        let s = sonnet_as(&fleet.urls, gw, KEY2, 30, 0);
        assert_eq!(s.status, 200, "{}: p2 has no budget: {s:?}", id);
        let f = admin_get(fleet.admins[gw], "/admin/fleet").json();
        assert_eq!(f["redis"]["ok"], true, "{f}");
    }
    assert_eq!(
        balance(&fleet.redis, &key),
        (committed, 0),
        "the refusals changed nothing in Redis"
    );
    assert_eq!(
        fleet.mock.count(),
        served + 3,
        "only p2's requests were served"
    );

    for gw in 0..3 {
        reload_with(&fleet, gw, low, high, gw == 0);
    }
    for (gw, id) in IDS.iter().enumerate().take(3) {
        let s = sonnet(&fleet.urls, gw, 1, 0);
        assert_eq!(s.status, 200, "{}: the limit raised again: {s:?}", id);
    }
    eventually_eq("at rest", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
}

/// Issue 13, `serve` with Redis unreachable at start (nothing listens on its port yet): the
/// gateway starts anyway, says clearly in its log that it cannot reach Redis (never echoing
/// the URL's password), answers 503 ledger_unavailable for budgeted requests, and begins
/// admitting once a Redis appears on that port.
#[test]
fn serve_starts_without_redis_and_admits_once_redis_appears() {
    const PW: &str = "pw-for-fleet-tests-0xC0FFEE";
    let mut redis = RedisServer::start_with_args(Persistence::Aof, &["--requirepass", PW]);
    let url = format!("redis://:{PW}@127.0.0.1:{}/", redis.port());
    redis.kill9();
    let mock = Mock::start();
    let mut env = env_with_admin();
    env.push((URL_ENV, url.as_str()));
    let body = format!(
        "{}{}",
        body_with_projects(&mock, &p1(&total_budget(10.0))),
        fleet_section("gw-a")
    );
    // start_with waits for LISTENING (and ADMIN_LISTENING) and a 200 on /healthz.
    let gw = Gateway::start_with(&body, &format!("{ADMIN_EXTRA}grace_period_s = 5"), &env);
    eventually("the log says Redis cannot be reached", || {
        gw.log()
            .lines()
            .any(|l| l.contains("cannot reach Redis") && l.contains(URL_ENV))
    });
    let urls = [gw.url("")];
    for _ in 0..3 {
        let s = sonnet(&urls, 0, 10, 0);
        assert_eq!(
            (s.status, s.code.as_str()),
            (503, "ledger_unavailable"),
            "a budgeted request without Redis\n{}",
            tail_of(&gw)
        );
    }
    assert_eq!(mock.count(), 0, "nothing reached the provider");
    let f = admin_get(gw.admin_port(), "/admin/fleet").json();
    assert_eq!(f["redis"]["ok"], false, "{f}");
    assert_eq!(metric(gw.admin_port(), "tollgate_fleet_redis_up", &[]), 0.0);

    redis.restart();
    eventually("admits once Redis is there", || {
        let s = sonnet(&urls, 0, 10, 0);
        assert!(
            s.status == 200 || (s.status == 503 && s.code == "ledger_unavailable"),
            "{s:?}"
        );
        s.status == 200
    });
    eventually("reports Redis up", || {
        metric(gw.admin_port(), "tollgate_fleet_redis_up", &[]) == 1.0
    });
    let f = admin_get(gw.admin_port(), "/admin/fleet").json();
    assert_eq!(f["redis"]["ok"], true, "{f}");
    assert!(
        !gw.log().contains(PW),
        "the log never shows the URL's password:\n{}",
        gw.log()
    );
}

/// Issue 13, Redis loses its data while an instance restarts (a deploy, a crash): the
/// restarted process is the first to connect to the empty Redis. The rebuild must still
/// wait for the other instances' reports before admitting (SPEC: "If Redis loses its data,
/// the fleet rebuilds the counters from the instances' ledgers before admitting again"): the
/// restarted instance must not admit against counters that lack the others' spend. gw-b is
/// cut off from Redis (a blackhole) until gw-a has joined and sent a burst, so the window is
/// not a race: at the end the fleet's true spend (Σ SQLite) is within the limit.
#[test]
fn an_instance_restarted_onto_a_redis_that_lost_its_data_waits_for_the_rebuild() {
    let limit_usd = 0.02;
    let limit = 20_000_000;
    let mut o = Opts::new(2, &p1(&total_budget(limit_usd)));
    o.persistence = Persistence::Off;
    o.rebuild_grace_ms = Some(3000);
    o.proxied = vec![1];
    let mut fleet = start(o);
    let key = total_key("p1");
    // gw-b spends most of the budget, gw-a a little: about $0.0126 and $0.0016.
    for _ in 0..8 {
        let s = sonnet(&fleet.urls, 1, 100, 0);
        assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(1));
    }
    let s = sonnet(&fleet.urls, 0, 100, 0);
    assert_eq!(s.status, 200, "{s:?}\n{}", fleet.tail(0));
    eventually_eq("at rest", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
    let b_spent = sqlite_spend(&fleet.dbs[1], "p1");

    fleet.proxy(1).blackhole();
    fleet.gws[0].signal("TERM");
    assert!(
        fleet.gws[0].wait_exit(Duration::from_secs(20)).is_some(),
        "gw-a stops\n{}",
        fleet.tail(0)
    );
    fleet.redis.restart();
    fleet.restart(0);
    eventually("gw-a joined the new generation", || {
        admin_get(fleet.admins[0], "/admin/fleet").json()["redis"]["joined"] == true
    });
    let gen = fleet.redis.cmd(&["GET", "tg:gen"]);
    let grace_at_join = rebuilding(&fleet.redis);
    // A burst on gw-a while gw-b's spend is not in the counters yet.
    let burst: Vec<Shot> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..10)
            .map(|_| {
                let urls = &fleet.urls;
                s.spawn(move || sonnet(urls, 0, 100, 300))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    for s in &burst {
        assert!(
            s.status == 200
                || (s.status == 503 && s.code == "ledger_unavailable")
                || (s.status == 402 && s.code == "budget_exceeded"),
            "{s:?}"
        );
    }
    let admitted = burst.iter().filter(|s| s.status == 200).count();

    fleet.proxy(1).heal();
    eventually("gw-b joined the new generation", || {
        let f = admin_get(fleet.admins[1], "/admin/fleet").json();
        f["redis"]["joined"] == true && f["redis"]["generation"] == gen.as_str()
    });
    eventually_eq("Redis = Σ SQLite once both joined", || {
        (
            balance(&fleet.redis, &key),
            (fleet_sqlite_spend(&fleet, "p1"), 0),
        )
    });
    let spent = fleet_sqlite_spend(&fleet, "p1");
    assert!(
        spent <= limit,
        "the fleet spent {spent} nanos, past its limit of {limit}: gw-a admitted {admitted} of \
         its burst against counters without gw-b's {b_spent} (rebuild grace set when gw-a \
         joined: {grace_at_join})\n{}",
        fleet.tail(0)
    );
}

/// Leases with a budget big enough for slices: most requests are admitted without a Redis
/// call, and at rest every lease is settled and Redis = Σ SQLite = what the mock served.
#[test]
fn leases_admit_locally_and_settle_exactly() {
    let mut o = Opts::new(3, &p1("budget = { limit_usd = 50.0, period = \"total\" }"));
    o.leases = true;
    let fleet = start(o);
    let before = fleet.redis.calls("fcall");
    let shots: Vec<Shot> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let urls = &fleet.urls;
                s.spawn(move || {
                    (0..40)
                        .map(|i| sonnet(urls, (t + i) % 3, 100, 0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    for s in &shots {
        assert_eq!(s.status, 200, "{s:?}");
    }
    let calls = fleet.redis.calls("fcall") - before;
    assert!(
        calls < shots.len() as u64 / 2,
        "leases admit without a Redis call per request: {calls} FCALLs for {} requests",
        shots.len()
    );
    // Mid-run the fleet shows budget leased out.
    let served = mock_cost(&fleet.mock);
    let key = total_key("p1");
    eventually_eq(
        "leases go back when idle: Redis = the mock's cost, nothing held",
        || (balance(&fleet.redis, &key), (served, 0)),
    );
    let recorded = recorded_cost(&fleet, "p1", &admitted(&shots, 3));
    assert_eq!(
        recorded, served,
        "the instances' records add up to Redis's total"
    );
    let sqlite: i64 = fleet.dbs.iter().map(|d| sqlite_spend(d, "p1")).sum();
    assert_eq!(sqlite, served, "Σ SQLite = Redis");
    assert_at_rest(&fleet, served, 50.0);
}

/// Under leases a freeze reaches the other instances by pub/sub: the lag from the freeze
/// answer to the first refusal on B and C is measured (and printed), and bounded by the poll
/// that backs pub/sub up.
#[test]
fn a_freeze_reaches_instances_on_leases_within_the_measured_lag() {
    let mut o = Opts::new(3, &p1("budget = { limit_usd = 50.0, period = \"total\" }"));
    o.leases = true;
    let fleet = start(o);
    // Warm: B and C hold leases (requests found none at first, so one was taken).
    for gw in [1, 2] {
        eventually(&format!("{} serves on a lease", IDS[gw]), || {
            let s = mini(&fleet.urls, gw);
            assert_eq!(s.status, 200, "{s:?}");
            project(fleet.admins[gw], "p1")["leased_usd"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
        });
    }
    let r = admin_post(fleet.admins[0], "/admin/projects/p1/freeze");
    assert_eq!(r.status, 200, "{}", r.body);
    let frozen_at = Instant::now();
    for gw in [1, 2] {
        let mut admitted_after = 0;
        loop {
            let s = mini(&fleet.urls, gw);
            if s.status == 403 {
                assert_eq!(s.code, "project_frozen", "{s:?}");
                break;
            }
            assert_eq!(s.status, 200, "{s:?}");
            admitted_after += 1;
            assert!(
                frozen_at.elapsed() < Duration::from_secs(2),
                "{}: still admitting {} ms after the freeze",
                IDS[gw],
                frozen_at.elapsed().as_millis()
            );
        }
        println!(
            "freeze lag on {}: refused after {admitted_after} admissions, {:.2} ms after the freeze answer",
            IDS[gw],
            frozen_at.elapsed().as_secs_f64() * 1000.0
        );
    }
    // Every later request is refused, and the leases went back.
    for gw in 0..3 {
        let s = mini(&fleet.urls, gw);
        assert_eq!(
            (s.status, s.code.as_str()),
            (403, "project_frozen"),
            "{s:?}"
        );
    }
    let key = total_key("p1");
    eventually("the frozen project's leases are settled", || {
        balance(&fleet.redis, &key).1 == 0
    });
    let r = admin_post(fleet.admins[1], "/admin/projects/p1/unfreeze");
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("an unfreeze on B reaches C", || {
        mini(&fleet.urls, 2).status == 200
    });
}

/// Redis killed under leases: an instance keeps admitting within the budget it leased (and
/// only that), and after Redis returns every lease settles once.
#[test]
fn with_redis_down_an_instance_admits_only_within_its_lease() {
    let mut o = Opts::new(2, &p1("budget = { limit_usd = 50.0, period = \"total\" }"));
    o.leases = true;
    let mut fleet = start(o);
    eventually("gw-a serves on a lease", || {
        let s = sonnet(&fleet.urls, 0, 100, 0);
        assert_eq!(s.status, 200, "{s:?}");
        project(fleet.admins[0], "p1")["leased_usd"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    });
    let leased = nanos(&project(fleet.admins[0], "p1")["leased_usd"]);
    let (committed_before, _) = balance(&fleet.redis, &total_key("p1"));
    let served_before = mock_cost(&fleet.mock);
    fleet.redis.kill9();
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..40 {
        let s = sonnet(&fleet.urls, 0, 100, 0);
        match s.status {
            200 => ok += 1,
            503 => {
                assert_eq!(s.code, "ledger_unavailable", "{s:?}");
                refused += 1;
            }
            _ => panic!("only 200 (on the lease) or 503: {s:?}"),
        }
    }
    assert!(ok > 0, "the lease kept serving with Redis down");
    let spent_down = mock_cost(&fleet.mock) - served_before;
    assert!(
        spent_down <= leased,
        "admitted with Redis down only within the lease: {spent_down} > {leased} (refused {refused})"
    );
    fleet.redis.restart();
    let key = total_key("p1");
    eventually("leases settle once Redis is back", || {
        balance(&fleet.redis, &key).1 == 0
    });
    let served = mock_cost(&fleet.mock);
    let (committed, _) = balance(&fleet.redis, &key);
    assert!(committed >= committed_before);
    assert_eq!(
        committed, served,
        "every lease settled once, at its true cost"
    );
    let sqlite: i64 = fleet.dbs.iter().map(|d| sqlite_spend(d, "p1")).sum();
    assert_eq!(sqlite, served, "Σ SQLite = Redis");
}

/// `rediss://`: the instance reaches Redis over TLS, verifying its certificate against the
/// system roots (here `SSL_CERT_FILE`, which rustls' native roots honour); an instance that
/// does not trust the CA refuses to talk to it and answers 503.
#[test]
fn rediss_reaches_redis_over_tls_and_checks_its_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl is needed for the test certificates (tests/run-all.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=fleet-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let tls_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let path = |f: &str| d.join(f).display().to_string();
    let (port_s, cert, key, ca) = (
        tls_port.to_string(),
        path("srv.pem"),
        path("srv.key"),
        path("ca.pem"),
    );
    let redis = RedisServer::start_with_args(
        Persistence::Aof,
        &[
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let mock = Mock::start();
    let body = |id: &str| {
        format!(
            "{}{}",
            body_with_projects(&mock, &p1(&total_budget(10.0))),
            fleet_section(id)
        )
    };
    let server = format!("{ADMIN_EXTRA}grace_period_s = 5");
    let mut env = env_with_admin();
    env.push((URL_ENV, url.as_str()));
    env.push(("SSL_CERT_FILE", ca.as_str()));
    let a = Gateway::start_with(&body("gw-a"), &server, &env);
    eventually("gw-a joined over TLS", || {
        admin_get(a.admin_port(), "/admin/fleet").json()["redis"]["joined"] == true
            && redis
                .try_cmd(&["EXISTS", "tg:rebuilding"])
                .is_ok_and(|r| r.to_string() == "0")
    });
    let s = sonnet(&[a.url("")], 0, 100, 0);
    assert_eq!(s.status, 200, "{s:?}\n{}", tail_of(&a));
    let served = mock_cost(&mock);
    eventually_eq("the spend reached Redis over TLS", || {
        (balance(&redis, &total_key("p1")), (served, 0))
    });

    // The same URL trusting another CA: the certificate is refused, and so is the request.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=another-ca",
    ]);
    let other = path("other.pem");
    let mut env = env_with_admin();
    env.push((URL_ENV, url.as_str()));
    env.push(("SSL_CERT_FILE", other.as_str()));
    let b = Gateway::start_with(&body("gw-b"), &server, &env);
    eventually("gw-b says why it cannot reach Redis", || {
        b.log()
            .lines()
            .any(|l| l.contains("cannot reach Redis") && l.to_lowercase().contains("certificate"))
    });
    let s = sonnet(&[b.url("")], 0, 100, 0);
    assert_eq!(
        (s.status, s.code.as_str()),
        (503, "ledger_unavailable"),
        "{s:?}"
    );
    assert_eq!(mock.count(), 1, "only gw-a's request reached the provider");
}

/// Watch `keys` in Redis while `work` runs: committed + held never past `limit` on any.
fn watched<T: Send>(
    redis: &RedisServer,
    keys: &[String],
    limit: i64,
    work: impl FnOnce() -> T,
) -> T {
    let stop = AtomicBool::new(false);
    let looks = Mutex::new(0u32);
    let out = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                for k in keys {
                    let (c, h) = balance(redis, k);
                    assert!(
                        c + h <= limit,
                        "{k}: committed {c} + held {h} > limit {limit}"
                    );
                }
                *looks.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let out = work();
        stop.store(true, Ordering::SeqCst);
        out
    });
    assert!(*looks.lock().unwrap() > 0, "the watcher looked");
    out
}

/// Issue 14: a team budget shared by two projects, requests for both on three instances:
/// the team's key in Redis never passes its limit, and the refusals name the team.
#[test]
fn a_team_budget_holds_across_projects_and_instances() {
    // One worst case ≈ $0.0153 (see shared_limit); the team fits five, each project ten.
    let team_usd = 0.08;
    let limit = (team_usd * 1e9) as i64;
    let projects = format!(
        "[[teams]]\nid = \"pay\"\nbudget = {{ limit_usd = {team_usd}, period = \"total\" }}\n\
         [[projects]]\nid = \"p1\"\nteam = \"pay\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 0.16, period = \"total\" }}\n\
         [[projects]]\nid = \"p2\"\nteam = \"pay\"\nkeys = [\"{KEY2}\"]\nbudget = {{ limit_usd = 0.16, period = \"total\" }}\n"
    );
    let fleet = start_fleet(3, &projects);
    let team_key = "tg:{t:pay}:b:team:pay:total:total".to_string();
    let shots: Vec<Shot> = watched(&fleet.redis, std::slice::from_ref(&team_key), limit, || {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..120)
                .map(|i| {
                    let urls = &fleet.urls;
                    let key = if i % 2 == 0 { KEY } else { KEY2 };
                    s.spawn(move || sonnet_as(urls, i % 3, key, 1000, 200))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        })
    });
    let ok = shots.iter().filter(|s| s.status == 200).count();
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 402 && s.code == "team_budget_exceeded"),
            "the team is the tighter account: {s:?}"
        );
    }
    assert!(
        (3..=5).contains(&ok),
        "the team fits five worst cases; admitted {ok}"
    );
    assert_eq!(
        fleet.mock.count(),
        ok as u64,
        "no refused request reached the provider"
    );
    // Settles run in `logging`, after the client has its response: wait for them to land.
    eventually("every hold settled", || {
        balance(&fleet.redis, &team_key).1 == 0
    });
    let (committed, _) = balance(&fleet.redis, &team_key);
    assert!(committed <= limit);
    assert_eq!(
        committed,
        mock_cost(&fleet.mock),
        "the team was charged what was served"
    );
    let p1 = balance(&fleet.redis, &total_key("p1")).0;
    let p2 = balance(&fleet.redis, &total_key("p2")).0;
    assert_eq!(p1 + p2, committed, "each project's own key has its share");
    let teams = admin_get(fleet.admins[1], "/admin/teams").json();
    let t = &teams["teams"][0];
    assert_eq!(t["id"], "pay");
    assert_eq!(t["source"], "fleet");
    assert_eq!(nanos(&t["budgets"][0]["spent_usd"]), committed, "{teams}");
}

/// Issue 14: end users' budgets count across the fleet: 10 users, 120 requests spread over
/// three instances, each user's budget fitting two worst cases.
#[test]
fn end_user_budgets_hold_across_instances() {
    let user_usd = 0.035;
    let limit = (user_usd * 1e9) as i64;
    let fleet = start_fleet(
        3,
        &p1(&format!(
            "user_budget = {{ limit_usd = {user_usd}, period = \"total\" }}"
        )),
    );
    let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    let keys: Vec<String> = users
        .iter()
        .map(|u| format!("tg:{{p:p1}}:b:user:{u}:total:total"))
        .collect();
    let shots: Vec<(usize, Shot)> = watched(&fleet.redis, &keys, limit, || {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..120)
                .map(|i| {
                    let (urls, user) = (&fleet.urls, users[i % 10].as_str());
                    s.spawn(move || {
                        let shot = send(
                            urls,
                            i % 3,
                            "/v1/messages",
                            &[
                                ("x-api-key", KEY),
                                ("x-tollgate-user", user),
                                ("x-mock-tokens", "1000"),
                                ("x-mock-latency-ms", "150"),
                            ],
                            &chat("claude-sonnet-4", 1000),
                        );
                        (i % 10, shot)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        })
    });
    for (u, key) in keys.iter().enumerate() {
        let ok = shots
            .iter()
            .filter(|(x, s)| *x == u && s.status == 200)
            .count();
        assert!((1..=2).contains(&ok), "user {u}: {ok} admitted");
        // Settles run in `logging`, after the client has its response: wait for them to land.
        eventually(&format!("user {u}: every hold settled"), || {
            balance(&fleet.redis, key).1 == 0
        });
        let (committed, _) = balance(&fleet.redis, key);
        assert!(committed <= limit, "user {u}: {committed} > {limit}");
    }
    for (_, s) in &shots {
        assert!(
            s.status == 200 || (s.status == 402 && s.code == "user_budget_exceeded"),
            "{s:?}"
        );
    }
    let ok = shots.iter().filter(|(_, s)| s.status == 200).count();
    assert_eq!(fleet.mock.count(), ok as u64);
    let recs = records(&fleet, 0, "p1");
    assert!(
        recs.iter()
            .any(|r| r["user"].as_str().is_some_and(|u| u.starts_with("user-"))),
        "records name the end user"
    );
}

/// Issue 18 in fleet mode: Redis is the shared ledger of the old process and its successor,
/// so a SIGUSR2 upgrade with requests in flight keeps the budget exact with nothing handed over.
#[test]
fn a_binary_upgrade_in_fleet_mode_keeps_the_shared_budget_exact() {
    let limit_usd = 0.16; // ten worst cases (see shared_limit)
    let limit = (limit_usd * 1e9) as i64;
    let redis = RedisServer::start_with(Persistence::Aof);
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = sock_dir.path().join("upgrade.sock");
    let mut env = env_with_admin();
    let url = redis.url();
    env.push((URL_ENV, url.as_str()));
    let body = format!(
        "{}{}",
        body_with_projects(
            &mock,
            &p1(&format!(
                "budget = {{ limit_usd = {limit_usd}, period = \"total\" }}"
            ))
        ),
        fleet_section("gw-a")
    );
    let extra = format!(
        "{ADMIN_EXTRA}grace_period_s = 10\nupgrade_sock = \"{}\"",
        upgrade_sock.display()
    );
    let mut old = Gateway::start_with(&body, &extra, &env);
    let admin = old.admin_port();
    eventually("the fleet opens admission", || {
        admin_get(admin, "/admin/fleet").json()["redis"]["joined"] == true
            && redis
                .try_cmd(&["EXISTS", "tg:rebuilding"])
                .is_ok_and(|r| r.to_string() == "0")
    });
    let urls = vec![old.url("")];
    let key = total_key("p1");
    let shots: Vec<Shot> = watched(&redis, std::slice::from_ref(&key), limit, || {
        std::thread::scope(|s| {
            let first: Vec<_> = (0..6)
                .map(|_| {
                    let urls = &urls;
                    s.spawn(move || sonnet(urls, 0, 1000, 2500))
                })
                .collect();
            eventually("six in flight upstream", || mock.count() >= 6);
            old.signal("USR2");
            let second: Vec<_> = (0..24)
                .map(|i| {
                    let urls = &urls;
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(80 * i));
                        sonnet(urls, 0, 1000, 200)
                    })
                })
                .collect();
            first
                .into_iter()
                .chain(second)
                .map(|w| w.join().expect("client"))
                .collect()
        })
    });
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let ok = shots.iter().filter(|s| s.status == 200).count();
    for s in &shots {
        assert!(
            s.status == 200 || (s.status == 402 && s.code == "budget_exceeded"),
            "only 200 or 402 across the upgrade: {s:?}\n{}",
            old.log()
        );
    }
    assert!((6..=10).contains(&ok), "{ok} admitted");
    assert_eq!(mock.count(), ok as u64);
    eventually("every hold settled", || balance(&redis, &key).1 == 0);
    assert_eq!(
        balance(&redis, &key).0,
        mock_cost(&mock),
        "Redis charged what was served"
    );
    // The successor (the old one's child) serves on; stop it.
    let log = old.log();
    let pid = log
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("the successor's pid in the log: {log}"));
    let r = mini(&urls, 0);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert_eq!(
        r.status, 200,
        "the successor serves after the old process left"
    );
}

/// Issue 15 in fleet mode: an answer stored by one instance is a hit on another.
#[test]
fn a_cached_answer_stored_by_one_instance_is_a_hit_on_another() {
    let fleet = start_fleet(2, &p1("cache = { ttl_s = 60 }"));
    let body = chat("gpt-4o-mini", 9);
    let first = send(
        &fleet.urls,
        0,
        "/v1/chat/completions",
        &[("x-api-key", KEY)],
        &body,
    );
    assert_eq!(first.status, 200);
    eventually("the entry is in Redis", || {
        redis_keys(&fleet.redis, "tg:{p:p1}:cache:*") == 1
    });
    let r = try_request(
        "POST",
        &format!("{}/v1/chat/completions", fleet.urls[1]),
        &[("x-api-key", KEY)],
        Some(body.as_bytes()),
    )
    .expect("instance b");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tollgate-cache"), Some("hit"), "{}", r.body);
    assert_eq!(fleet.mock.count(), 1, "instance b called no provider");
}

fn redis_keys(redis: &RedisServer, pattern: &str) -> usize {
    match redis.try_cmd(&["KEYS", pattern]) {
        Ok(Reply::Array(Some(items))) => items.len(),
        other => panic!("KEYS {pattern}: {other:?}"),
    }
}
