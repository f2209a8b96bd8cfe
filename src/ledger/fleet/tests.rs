//! The fleet store against a real `redis-server`: each test starts its own on a loopback
//! port (AOF on, in a temp dir) and kills it when done, also on panic. A missing
//! `redis-server` fails the test: these are the tests that pin the zero-overshoot contract.
//! The server fixture is `tests/common/redis.rs`, shared with the integration tests; the
//! same tests through a fault proxy are in `fault_tests.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::budget::Period;

#[path = "../../../tests/common/fault_proxy.rs"]
mod fault_proxy;
#[path = "fault_tests.rs"]
mod fault_tests;
#[path = "../../../tests/common/redis.rs"]
mod redis_fixture;

use redis_fixture::RedisServer;

/// The fleet store's view of the shared fixture.
trait StoreFixture {
    fn config(&self) -> FleetConfig;
    async fn store(&self) -> FleetStore;
    async fn raw(&self) -> redis::aio::MultiplexedConnection;
}

impl StoreFixture for RedisServer {
    /// Generous timeouts: the tests share 2 cores with other builds.
    fn config(&self) -> FleetConfig {
        FleetConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            ..FleetConfig::new(self.url())
        }
    }

    async fn store(&self) -> FleetStore {
        FleetStore::connect(&self.config())
            .await
            .expect("connect to the test redis")
    }

    /// A plain connection for raw commands the typed client would refuse (bad arguments).
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

const NOW: i64 = 1_790_000_000;

fn project(id: &str) -> ProjectKeys {
    ProjectKeys::new(id)
}

fn hold(key: &str, limit: Option<u64>, amount: u64) -> AccountHold {
    AccountHold {
        key: key.to_string(),
        limit: limit.map(Nanos),
        amount: Nanos(amount),
    }
}

fn actual(key: &str, n: u64) -> AccountActual {
    AccountActual {
        key: key.to_string(),
        actual: Nanos(n),
    }
}

async fn balances(s: &FleetStore, p: &ProjectKeys, keys: &[&str]) -> Vec<(i64, i64)> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let st = s.status(p, &keys).await.expect("status");
    st.value
        .accounts
        .iter()
        .map(|b| (b.committed, b.held))
        .collect()
}

fn reserved(a: &Answer<Reservation>) -> &Reserved {
    match &a.value {
        Reservation::Reserved(r) => r,
        other => panic!("expected a hold, got {other:?}"),
    }
}

#[tokio::test]
async fn reserve_admits_within_the_limit_and_refuses_past_it() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let day = p.budget(AccountKind::Project, "bot", Period::Day, NOW);

    let a = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&day, Some(100), 60)])
        .await
        .expect("reserve");
    assert_eq!(
        reserved(&a).remaining,
        vec![Some(Nanos(40))],
        "limit 100 − 60 held"
    );
    assert!(a.generation.is_some(), "every reply names the generation");

    let b = s
        .reserve(&p, "h2", "gw-a", 60, &[hold(&day, Some(100), 41)])
        .await
        .expect("reserve");
    assert_eq!(
        b.value,
        Reservation::Refused(Refused {
            account: 0,
            committed: 0,
            held: 60,
            limit: Nanos(100)
        }),
        "60 held + 41 > 100"
    );
    let c = s
        .reserve(&p, "h3", "gw-a", 60, &[hold(&day, Some(100), 40)])
        .await
        .expect("reserve");
    assert_eq!(
        reserved(&c).remaining,
        vec![Some(Nanos(0))],
        "exactly the limit fits"
    );
    assert_eq!(balances(&s, &p, &[&day]).await, vec![(0, 100)]);

    let free = p.budget(AccountKind::Key, "ci", Period::Total, NOW);
    let d = s
        .reserve(&p, "h4", "gw-a", 60, &[hold(&free, None, 1_000_000)])
        .await
        .expect("reserve");
    assert_eq!(
        reserved(&d).remaining,
        vec![None],
        "an account without a limit still counts"
    );
}

#[tokio::test]
async fn a_full_account_holds_nothing_on_any_account() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("checkout");
    let month = p.budget(AccountKind::Project, "checkout", Period::Month, NOW);
    let day = p.budget(AccountKind::Project, "checkout", Period::Day, NOW);
    let key = p.budget(AccountKind::Key, "ci", Period::Week, NOW);
    let user = p.budget(AccountKind::User, "alice", Period::Day, NOW);

    // Fill the user's account.
    s.reserve(&p, "u", "gw-a", 60, &[hold(&user, Some(10), 10)])
        .await
        .expect("reserve");
    let all = [
        hold(&month, Some(1_000), 5),
        hold(&day, Some(100), 5),
        hold(&key, None, 5),
        hold(&user, Some(10), 5),
    ];
    let a = s.reserve(&p, "h", "gw-a", 60, &all).await.expect("reserve");
    assert_eq!(
        a.value,
        Reservation::Refused(Refused {
            account: 3,
            committed: 0,
            held: 10,
            limit: Nanos(10)
        }),
        "the user account (index 3) is the one that refused"
    );
    assert_eq!(
        balances(&s, &p, &[&month, &day, &key, &user]).await,
        vec![(0, 0), (0, 0), (0, 0), (0, 10)],
        "all or nothing: no other account holds anything"
    );
    let all_fit: Vec<AccountHold> = all[..3].to_vec();
    s.reserve(&p, "h2", "gw-a", 60, &all_fit)
        .await
        .expect("reserve");
    assert_eq!(
        balances(&s, &p, &[&month, &day, &key]).await,
        vec![(0, 5), (0, 5), (0, 5)],
        "one call holds on every account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_reserves_admit_exactly_what_fits() {
    let r = RedisServer::start();
    let p = project("race");
    let key = p.budget(AccountKind::Project, "race", Period::Day, NOW);
    let limit = 1_000u64;
    // Several stores, as several instances would have.
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(r.store().await);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (s, p, key, stop) = (stores[0].clone(), p.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut looks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let b = balances(&s, &p, &[&key]).await[0];
                assert!(
                    b.0 + b.1 <= limit as i64,
                    "committed + held ≤ limit at every look: {b:?}"
                );
                looks += 1;
            }
            looks
        })
    };
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (s, p, key) = (stores[i % 4].clone(), p.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("h{i}");
            let a = s
                .reserve(&p, &id, "gw", 60, &[hold(&key, Some(limit), 100)])
                .await
                .expect("reserve");
            match a.value {
                Reservation::Reserved(_) => {
                    // Settle half of the admitted ones at once, below the hold.
                    if i % 2 == 0 {
                        s.settle(&p, &id, &[actual(&key, 100)])
                            .await
                            .expect("settle");
                    }
                    1
                }
                Reservation::Refused(_) => 0,
                other => panic!("unexpected {other:?}"),
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    stop.store(true, Ordering::Relaxed);
    let looks = watcher.await.expect("watcher");
    assert_eq!(
        admitted, 10,
        "a limit of 1000 fits exactly ten holds of 100"
    );
    assert!(looks > 0, "the watcher looked at least once");
    let b = balances(&stores[0], &p, &[&key]).await[0];
    assert_eq!(
        b.0 + b.1,
        limit as i64,
        "ten holds of 100, settled at their full cost or still held"
    );
}

#[tokio::test]
async fn settle_releases_the_hold_and_commits_an_overrun_in_full() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Month, NOW);
    let t = p.budget(AccountKind::Team, "pay", Period::Month, NOW);
    s.reserve(
        &p,
        "h1",
        "gw-a",
        60,
        &[hold(&a, Some(100), 50), hold(&t, Some(1000), 50)],
    )
    .await
    .expect("reserve");
    let x = s
        .settle(&p, "h1", &[actual(&a, 30), actual(&t, 30)])
        .await
        .expect("settle");
    assert_eq!(
        x.value,
        Settlement::Settled {
            overrun: vec![Nanos(0), Nanos(0)]
        }
    );
    assert_eq!(
        balances(&s, &p, &[&a, &t]).await,
        vec![(30, 0), (30, 0)],
        "held released, truth committed"
    );

    s.reserve(
        &p,
        "h2",
        "gw-a",
        60,
        &[hold(&a, Some(100), 50), hold(&t, Some(1000), 50)],
    )
    .await
    .expect("reserve");
    let y = s
        .settle(&p, "h2", &[actual(&a, 120), actual(&t, 120)])
        .await
        .expect("settle");
    assert_eq!(
        y.value,
        Settlement::Settled {
            overrun: vec![Nanos(70), Nanos(70)]
        },
        "the overrun is reported"
    );
    assert_eq!(
        balances(&s, &p, &[&a, &t]).await,
        vec![(150, 0), (150, 0)],
        "an overrun is committed in full, even past the limit"
    );
    let z = s
        .reserve(&p, "h3", "gw-a", 60, &[hold(&a, Some(100), 0)])
        .await
        .expect("reserve");
    assert!(
        matches!(z.value, Reservation::Refused(_)),
        "an account over its limit admits nothing more"
    );
}

#[tokio::test]
async fn a_resent_reserve_or_settle_changes_nothing_and_answers_the_same() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let first = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");
    let again = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("resend");
    assert_eq!(first, again, "a resend answers the first result");
    assert_eq!(
        balances(&s, &p, &[&a]).await,
        vec![(0, 60)],
        "and holds once"
    );

    let x = s.settle(&p, "h1", &[actual(&a, 25)]).await.expect("settle");
    let y = s.settle(&p, "h1", &[actual(&a, 25)]).await.expect("resend");
    let z = s
        .settle(&p, "h1", &[actual(&a, 99)])
        .await
        .expect("resend, other actual");
    assert_eq!(x, y, "a resent settle answers the same");
    assert_eq!(x, z, "the first settle is the one that counts");
    assert_eq!(
        balances(&s, &p, &[&a]).await,
        vec![(25, 0)],
        "committed once"
    );

    let late = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("late resend");
    assert_eq!(
        late, first,
        "a reserve resent after the settle still answers the first result"
    );
    assert_eq!(
        balances(&s, &p, &[&a]).await,
        vec![(25, 0)],
        "and holds nothing"
    );

    // Outcome unknown, the caller settled to 0, then the reserve arrived late: it holds nothing.
    let n = s
        .settle(&p, "lost", &[actual(&a, 0)])
        .await
        .expect("settle unknown id");
    assert_eq!(n.value, Settlement::NotHeld);
    let v = s
        .reserve(&p, "lost", "gw-a", 60, &[hold(&a, Some(100), 10)])
        .await
        .expect("late reserve");
    assert_eq!(v.value, Reservation::Void);
    assert_eq!(balances(&s, &p, &[&a]).await, vec![(25, 0)]);

    // A refused resend also changes nothing.
    for _ in 0..2 {
        let f = s
            .reserve(&p, "big", "gw-a", 60, &[hold(&a, Some(100), 80)])
            .await
            .expect("reserve");
        assert!(matches!(f.value, Reservation::Refused(_)));
    }
    assert_eq!(balances(&s, &p, &[&a]).await, vec![(25, 0)]);
}

#[tokio::test]
async fn expired_holds_burn_and_a_late_settle_corrects_them_once() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let u = p.budget(AccountKind::User, "bob", Period::Day, NOW);
    s.reserve(
        &p,
        "h1",
        "gw-dead",
        1,
        &[hold(&a, Some(1000), 100), hold(&u, Some(500), 100)],
    )
    .await
    .expect("reserve");
    s.reserve(&p, "h2", "gw-dead", 1, &[hold(&a, Some(1000), 50)])
        .await
        .expect("reserve");
    let none = s.reap(&p, 100).await.expect("reap");
    assert_eq!(none.value.burned, 0, "nothing has expired yet");
    // The TTL runs on the server's clock: wait it out.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let burned = s.reap(&p, 1).await.expect("reap");
    assert_eq!(burned.value.burned, 1, "reap is bounded by its limit");
    // A reserve reaps on the way.
    s.reserve(&p, "h3", "gw-a", 60, &[hold(&a, Some(1000), 0)])
        .await
        .expect("reserve");
    let st = s.status(&p, &[a.clone(), u.clone()]).await.expect("status");
    assert_eq!(st.value.open_holds, 1, "only h3 is still open");
    assert_eq!(
        balances(&s, &p, &[&a, &u]).await,
        vec![(150, 0), (100, 0)],
        "expired holds count as spent, never refunded"
    );

    // The vanished instance comes back and settles h1 at its true cost.
    let c = s
        .settle(&p, "h1", &[actual(&a, 30), actual(&u, 130)])
        .await
        .expect("late settle");
    assert_eq!(
        c.value,
        Settlement::Corrected {
            overrun: vec![Nanos(0), Nanos(30)]
        }
    );
    assert_eq!(
        balances(&s, &p, &[&a, &u]).await,
        vec![(80, 0), (130, 0)],
        "the burn is replaced by the truth: −70 on one account, +30 on the other"
    );
    let again = s
        .settle(&p, "h1", &[actual(&a, 30), actual(&u, 130)])
        .await
        .expect("resend");
    assert_eq!(again, c, "same answer");
    assert_eq!(
        balances(&s, &p, &[&a, &u]).await,
        vec![(80, 0), (130, 0)],
        "corrected exactly once"
    );
}

#[tokio::test]
async fn a_freeze_refuses_the_next_reserve_and_bumps_the_version() {
    let r = RedisServer::start();
    let s = r.store().await;
    let other = r.store().await; // another instance
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let v1 = s.freeze(&p, true).await.expect("freeze").value;
    let f = other
        .reserve(&p, "h1", "gw-b", 60, &[hold(&a, Some(100), 1)])
        .await
        .expect("reserve");
    assert_eq!(
        f.value,
        Reservation::Frozen { version: v1 },
        "a freeze on one instance blocks every instance"
    );
    let st = s
        .status(&p, std::slice::from_ref(&a))
        .await
        .expect("status")
        .value;
    assert!(st.frozen);
    assert_eq!(
        st.accounts[0],
        Balance {
            committed: 0,
            held: 0,
            leased: 0,
        }
    );
    let v2 = s.freeze(&p, false).await.expect("unfreeze").value;
    assert!(v2 > v1, "every change bumps the version");
    let ok = other
        .reserve(&p, "h2", "gw-b", 60, &[hold(&a, Some(100), 1)])
        .await
        .expect("reserve");
    assert_eq!(reserved(&ok).version, v2);
}

#[tokio::test]
async fn the_generation_changes_when_redis_loses_its_data() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let g1 = s.generation().await.expect("gen").expect("set at connect");
    let x = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");
    assert_eq!(x.generation.as_deref(), Some(g1.as_str()));

    assert_eq!(r.cmd(&["FLUSHALL"]), "OK");
    assert_eq!(s.generation().await.expect("gen"), None);
    let y = s
        .reserve(&p, "h2", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");
    assert_eq!(
        y.value,
        Reservation::NoGeneration,
        "no admission on counters that were lost"
    );
    assert_eq!(balances(&s, &p, &[&a]).await, vec![(0, 0)]);

    let g2 = s.init_generation().await.expect("new generation");
    assert_ne!(g1, g2, "data loss is detectable");
    let z = s
        .reserve(&p, "h2", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");
    assert_eq!(z.generation, Some(g2.clone()));
    assert_eq!(
        s.init_generation().await.expect("again"),
        g2,
        "set only if absent"
    );
}

#[tokio::test]
async fn bad_arguments_are_errors_and_change_nothing() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let meta = p.meta();
    let mut raw = r.raw().await;
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "float amount",
            vec![a.clone()],
            vec!["h", "gw", "60", "100", "1.5"],
        ),
        (
            "exponent",
            vec![a.clone()],
            vec!["h", "gw", "60", "1e3", "1"],
        ),
        (
            "negative amount",
            vec![a.clone()],
            vec!["h", "gw", "60", "100", "-5"],
        ),
        (
            "above 2^53",
            vec![a.clone()],
            vec!["h", "gw", "60", "9007199254740992", "1"],
        ),
        (
            "zero ttl",
            vec![a.clone()],
            vec!["h", "gw", "0", "100", "1"],
        ),
        (
            "missing amount",
            vec![a.clone()],
            vec!["h", "gw", "60", "100"],
        ),
        (
            "empty id",
            vec![a.clone()],
            vec!["", "gw", "60", "100", "1"],
        ),
        (
            "other tag",
            vec!["tg:{p:x}:b:k".into()],
            vec!["h", "gw", "60", "100", "1"],
        ),
        (
            "repeated key",
            vec![a.clone(), a.clone()],
            vec!["h", "gw", "60", "100", "1", "100", "1"],
        ),
        ("no budget key", vec![], vec!["h", "gw", "60"]),
    ];
    for (why, budget, args) in cases {
        let keys: Vec<&str> = meta
            .iter()
            .map(String::as_str)
            .chain(budget.iter().map(String::as_str))
            .collect();
        let e = redis::cmd("FCALL")
            .arg("tg_reserve")
            .arg(keys.len())
            .arg(&keys)
            .arg(&args)
            .query_async::<Value>(&mut raw)
            .await
            .expect_err(why);
        assert_eq!(e.code(), Some("TGARG"), "{why}: {e}");
        assert!(
            matches!(classify(e), FleetError::BadArgument(ref d) if !d.is_empty()),
            "{why}: a bad argument, saying why"
        );
    }
    let wrong_meta = redis::cmd("FCALL")
        .arg("tg_reap")
        .arg(5)
        .arg(
            &[
                "tg:{p:bot}:cfg",
                "tg:{p:bot}:hexp",
                "tg:{p:bot}:holds",
                "tg:{p:bot}:done",
                "tg:{p:bot}:dexp",
            ][..],
        )
        .arg("10")
        .query_async::<Value>(&mut raw)
        .await
        .expect_err("keys out of order");
    assert!(matches!(classify(wrong_meta), FleetError::BadArgument(_)));

    let too_big = s
        .reserve(&p, "h", "gw", 60, &[hold(&a, Some(100), MAX_NANOS + 1)])
        .await;
    assert!(
        matches!(too_big, Err(FleetError::BadArgument(_))),
        "checked before sending: {too_big:?}"
    );
    let no_accounts = s.reserve(&p, "h", "gw", 60, &[]).await;
    assert!(matches!(no_accounts, Err(FleetError::BadArgument(_))));
    let mismatch = s
        .reserve(&p, "h9", "gw", 60, &[hold(&a, Some(100), 1)])
        .await
        .expect("reserve");
    assert!(matches!(mismatch.value, Reservation::Reserved(_)));
    let other = p.budget(AccountKind::User, "eve", Period::Day, NOW);
    let e = s.settle(&p, "h9", &[actual(&other, 1)]).await;
    assert!(
        matches!(e, Err(FleetError::BadArgument(_))),
        "a settle must name the hold's keys: {e:?}"
    );

    // Data that is not ours is an error, not a crash, and not a partial write.
    let _: () = redis::cmd("HSET")
        .arg(&a)
        .arg("committed")
        .arg("lots")
        .query_async(&mut raw)
        .await
        .expect("hset");
    let e = s
        .reserve(&p, "h10", "gw", 60, &[hold(&a, Some(100), 1)])
        .await;
    assert!(
        matches!(e, Err(FleetError::Protocol(ref m)) if m.contains("TGSTATE")),
        "{e:?}"
    );

    let pong: String = redis::cmd("PING")
        .query_async(&mut raw)
        .await
        .expect("server still up");
    assert_eq!(pong, "PONG");
    let st = s.status(&p, &[]).await.expect("status").value;
    assert_eq!(st.open_holds, 1, "only the one good hold exists");
}

#[tokio::test]
async fn an_unreachable_or_slow_redis_is_unavailable_and_a_resend_holds_once() {
    let nobody = FleetConfig {
        connect_timeout: Duration::from_millis(200),
        ..FleetConfig::new("redis://127.0.0.1:1/")
    };
    let e = FleetStore::connect(&nobody)
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(matches!(e, FleetError::Unavailable(_)), "{e:?}");

    let r = RedisServer::start();
    let fast = FleetStore::connect(&FleetConfig {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_millis(50),
        ..FleetConfig::new(r.url())
    })
    .await
    .expect("connect");
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    assert_eq!(r.cmd(&["CLIENT", "PAUSE", "400", "WRITE"]), "OK");
    let t = fast
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await;
    assert!(
        matches!(t, Err(FleetError::Unavailable(_))),
        "a reply past the deadline: {t:?}"
    );
    // The paused call runs when the pause ends; the caller does not know, and resends.
    let again = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("resend");
    assert!(matches!(again.value, Reservation::Reserved(_)));
    assert_eq!(
        balances(&s, &p, &[&a]).await,
        vec![(0, 60)],
        "held once, whichever call ran first"
    );
}

#[tokio::test]
async fn the_library_is_loaded_again_after_a_function_flush() {
    let r = RedisServer::start();
    let s = r.store().await;
    assert_eq!(r.cmd(&["FUNCTION", "FLUSH"]), "OK");
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let x = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 1)])
        .await
        .expect("reserve reloads");
    assert!(matches!(x.value, Reservation::Reserved(_)));
}

/// A period rolls over while a hold is open: the new period's window starts empty (the hold
/// stays on the window it was reserved in, which its settle charges), and a limit lowered
/// below what is committed refuses everything without going negative.
#[tokio::test]
async fn a_period_rollover_with_a_hold_open_and_a_lowered_limit() {
    let r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let today = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let tomorrow = p.budget(AccountKind::Project, "bot", Period::Day, NOW + 86_400);
    assert_ne!(today, tomorrow, "one window per day");
    s.reserve(&p, "late", "gw-a", 60, &[hold(&today, Some(100), 100)])
        .await
        .expect("reserve");
    let next = s
        .reserve(&p, "early", "gw-a", 60, &[hold(&tomorrow, Some(100), 100)])
        .await
        .expect("reserve");
    assert!(
        matches!(next.value, Reservation::Reserved(_)),
        "the new day's window is its own: {next:?}"
    );
    s.settle(&p, "late", &[actual(&today, 70)])
        .await
        .expect("settle");
    assert_eq!(
        balances(&s, &p, &[&today, &tomorrow]).await,
        vec![(70, 0), (0, 100)],
        "the late request charged the day it was admitted in"
    );
    s.settle(&p, "early", &[actual(&tomorrow, 90)])
        .await
        .expect("settle");
    // The limit is lowered to 50 (a reload): below the 90 committed.
    let low = s
        .reserve(&p, "after", "gw-a", 60, &[hold(&tomorrow, Some(50), 1)])
        .await
        .expect("reserve");
    assert_eq!(
        low.value,
        Reservation::Refused(Refused {
            account: 0,
            committed: 90,
            held: 0,
            limit: Nanos(50)
        })
    );
    let zero = s
        .reserve(&p, "zero", "gw-a", 60, &[hold(&tomorrow, Some(50), 0)])
        .await
        .expect("reserve");
    assert!(
        matches!(zero.value, Reservation::Refused(_)),
        "even a zero worst case is refused past the limit: {zero:?}"
    );
    assert_eq!(balances(&s, &p, &[&tomorrow]).await, vec![(90, 0)]);
}

#[tokio::test]
async fn a_team_key_is_shared_by_its_projects_and_never_passed_by_their_holds() {
    let r = RedisServer::start();
    let s = r.store().await;
    let team = keys::team_budget("pay", Period::Month, NOW);
    let (a, b) = (project("a"), project("b"));
    let own_a = a.budget(AccountKind::Project, "a", Period::Month, NOW);
    let own_b = b.budget(AccountKind::Project, "b", Period::Month, NOW);
    // The team fits five holds of 100; each project alone would fit four.
    let mut admitted = 0;
    for i in 0..12 {
        let (p, own) = if i % 2 == 0 {
            (&a, &own_a)
        } else {
            (&b, &own_b)
        };
        let x = s
            .reserve(
                p,
                &format!("h{i}"),
                "gw-a",
                60,
                &[hold(own, Some(400), 100), hold(&team, Some(500), 100)],
            )
            .await
            .expect("reserve");
        match x.value {
            Reservation::Reserved(_) => admitted += 1,
            Reservation::Refused(r) => {
                assert_eq!(r.account, 1, "the team refuses, not the project");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(balances(&s, &a, &[&team]).await, vec![(0, 500)]);
    assert_eq!(balances(&s, &a, &[&own_a]).await, vec![(0, 300)]);
    assert_eq!(balances(&s, &b, &[&own_b]).await, vec![(0, 200)]);
    // A budget key of another project is still refused: only teams cross projects.
    let e = s
        .reserve(&a, "x", "gw-a", 60, &[hold(&own_b, Some(400), 1)])
        .await;
    assert!(e.is_err(), "{e:?}");
}
