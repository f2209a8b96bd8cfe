//! The fleet store through a TCP fault proxy (`tests/common/fault_proxy.rs`) in front of a
//! real `redis-server`: lost replies, late replies, commands that never arrive, refused
//! connections, a Redis killed and restarted. What each test pins is that the outcome the
//! client cannot know is made harmless by idempotence: a resend answers the first result and
//! counts once, and `settle(id, 0)` leaves nothing held whether or not the reserve ran.
//!
//! The proxied store has a tight response deadline ([`DEADLINE`]), and the injected latency
//! ([`SLOW`]) is several times that, so "too late" never depends on the machine's load.
//! Nothing here asserts a duration.

use std::time::{Duration, Instant};

use super::fault_proxy::FaultProxy;
use super::redis_fixture::{Persistence, RedisServer};
use super::*;

/// The proxied store's response deadline: tight, yet far above a loopback round trip on a
/// loaded machine (a call that should succeed never hits it).
const DEADLINE: Duration = Duration::from_millis(750);
/// Injected latency: far past [`DEADLINE`].
const SLOW: Duration = Duration::from_millis(2_500);
/// How long a call may keep failing after a fault is healed.
const RECOVERY: Duration = Duration::from_secs(15);

/// A store that talks to Redis through `proxy`.
async fn through(proxy: &FaultProxy) -> FleetStore {
    FleetStore::connect(&FleetConfig {
        connect_timeout: Duration::from_secs(1),
        response_timeout: DEADLINE,
        ..FleetConfig::new(proxy.redis_url())
    })
    .await
    .expect("connect through the fault proxy")
}

/// Resend a call while it is `Unavailable` (every call is idempotent), until [`RECOVERY`]
/// has passed; any other error fails the test.
macro_rules! until_ok {
    ($what:expr, $call:expr) => {{
        let deadline = Instant::now() + RECOVERY;
        loop {
            match $call.await {
                Ok(v) => break v,
                Err(FleetError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{}: {e:?}", $what),
            }
        }
    }};
}

/// Wait (polling Redis, not sleeping a guess) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + RECOVERY;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unavailable<T: std::fmt::Debug>(r: &Result<T, FleetError>) -> bool {
    matches!(r, Err(FleetError::Unavailable(_)))
}

async fn open_holds(s: &FleetStore, p: &ProjectKeys) -> u64 {
    s.status(p, &[]).await.expect("status").value.open_holds
}

#[tokio::test]
async fn a_reserve_whose_reply_is_lost_ran_once_and_a_resend_answers_the_same() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let accounts = [hold(&a, Some(100), 60)];

    proxy.drop_next_reply();
    let lost = s.reserve(&p, "h1", "gw-a", 60, &accounts).await;
    assert!(unavailable(&lost), "the reply never came: {lost:?}");
    assert_eq!(proxy.replies_dropped(), 1, "the fault was injected");
    assert_eq!(
        balances(&direct, &p, &[&a]).await,
        vec![(0, 60)],
        "the script ran although the client got no answer"
    );

    let again = until_ok!("resend", s.reserve(&p, "h1", "gw-a", 60, &accounts));
    assert_eq!(
        reserved(&again).remaining,
        vec![Some(Nanos(40))],
        "the resend answers the first result: 100 − 60, held once"
    );
    let other = direct
        .reserve(&p, "h1", "gw-a", 60, &accounts)
        .await
        .expect("another resend");
    assert_eq!(
        other, again,
        "every resend answers the same, expiry included"
    );
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 60)]);
    assert_eq!(open_holds(&direct, &p).await, 1);
}

#[tokio::test]
async fn a_settle_whose_reply_is_lost_committed_once_and_a_resend_answers_the_same() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    s.reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");

    proxy.drop_next_reply();
    let lost = s.settle(&p, "h1", &[actual(&a, 25)]).await;
    assert!(unavailable(&lost), "the reply never came: {lost:?}");
    assert_eq!(proxy.replies_dropped(), 1, "the fault was injected");
    assert_eq!(
        balances(&direct, &p, &[&a]).await,
        vec![(25, 0)],
        "the settle ran although the client got no answer"
    );

    let again = until_ok!("resend", s.settle(&p, "h1", &[actual(&a, 25)]));
    assert_eq!(
        again.value,
        Settlement::Settled {
            overrun: vec![Nanos(0)]
        },
        "the resend answers what the lost reply said"
    );
    let other = direct
        .settle(&p, "h1", &[actual(&a, 25)])
        .await
        .expect("another resend");
    assert_eq!(other, again);
    assert_eq!(
        balances(&direct, &p, &[&a]).await,
        vec![(25, 0)],
        "committed once, nothing held"
    );
    assert_eq!(open_holds(&direct, &p).await, 0, "no hold left");
}

#[tokio::test]
async fn a_late_reply_is_unavailable_and_settle_to_zero_after_the_reserve_ran_holds_nothing() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let accounts = [hold(&a, Some(100), 60)];
    let fcalls = r.calls("fcall");

    // The command reaches Redis at once; its answer is held back past the deadline.
    proxy.latency(Duration::ZERO, SLOW);
    let late = s.reserve(&p, "h1", "gw-a", 60, &accounts).await;
    assert!(unavailable(&late), "a reply past the deadline: {late:?}");
    eventually("the reserve ran on the server", || {
        r.calls("fcall") == fcalls + 1
    })
    .await;
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 60)]);

    // The caller does not know it ran, so it settles the id to 0 later.
    proxy.heal();
    let settled = until_ok!("settle to 0", s.settle(&p, "h1", &[actual(&a, 0)]));
    assert!(
        matches!(
            settled.value,
            Settlement::Settled { .. } | Settlement::NotHeld
        ),
        "{settled:?}"
    );
    assert_eq!(
        balances(&direct, &p, &[&a]).await,
        vec![(0, 0)],
        "nothing held, nothing charged"
    );
    assert_eq!(open_holds(&direct, &p).await, 0);
    // A straggling resend of the reserve changes nothing either.
    let resend = until_ok!("late resend", s.reserve(&p, "h1", "gw-a", 60, &accounts));
    assert!(
        matches!(resend.value, Reservation::Reserved(_) | Reservation::Void),
        "{resend:?}"
    );
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 0)]);
}

#[tokio::test]
async fn a_reserve_delayed_past_the_deadline_and_settled_to_zero_first_holds_nothing() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let fcalls = r.calls("fcall");

    // The command itself is held back in the proxy past the deadline.
    proxy.latency(SLOW, Duration::ZERO);
    let late = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await;
    assert!(unavailable(&late), "{late:?}");
    // Another path (the settle queue, another connection) settles the id to 0 meanwhile.
    let settled = direct
        .settle(&p, "h1", &[actual(&a, 0)])
        .await
        .expect("settle to 0");
    assert!(
        matches!(
            settled.value,
            Settlement::NotHeld | Settlement::Settled { .. }
        ),
        "{settled:?}"
    );
    // Then the delayed reserve arrives and runs.
    eventually("the delayed reserve and the settle both ran", || {
        r.calls("fcall") == fcalls + 2
    })
    .await;
    assert_eq!(
        balances(&direct, &p, &[&a]).await,
        vec![(0, 0)],
        "whichever ran first, nothing is held"
    );
    assert_eq!(open_holds(&direct, &p).await, 0);
    proxy.heal();
    let resend = until_ok!(
        "resend",
        s.reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
    );
    if settled.value == Settlement::NotHeld {
        assert_eq!(
            resend.value,
            Reservation::Void,
            "settled before it arrived: void for good"
        );
    }
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 0)]);
}

#[tokio::test]
async fn a_reserve_that_never_reached_redis_then_settled_to_zero_is_void() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let accounts = [hold(&a, Some(100), 60)];
    let fcalls = r.calls("fcall");
    let up = proxy.bytes_up();

    proxy.blackhole();
    let lost = s.reserve(&p, "h1", "gw-a", 60, &accounts).await;
    assert!(unavailable(&lost), "no reply: {lost:?}");
    assert_eq!(proxy.bytes_up(), up, "not one byte reached Redis");
    assert_eq!(r.calls("fcall"), fcalls, "the reserve never ran");
    assert_eq!(open_holds(&direct, &p).await, 0);

    proxy.heal();
    let settled = until_ok!("settle to 0", s.settle(&p, "h1", &[actual(&a, 0)]));
    assert_eq!(settled.value, Settlement::NotHeld, "nothing to release");
    let resend = until_ok!("late reserve", s.reserve(&p, "h1", "gw-a", 60, &accounts));
    assert_eq!(
        resend.value,
        Reservation::Void,
        "a reserve after the settle holds nothing"
    );
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 0)]);
    assert_eq!(open_holds(&direct, &p).await, 0);
}

#[tokio::test]
async fn after_refused_connections_heal_the_store_reconnects_by_itself() {
    let r = RedisServer::start();
    let proxy = FaultProxy::start(r.addr());
    let s = through(&proxy).await;
    let direct = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let accounts = [hold(&a, Some(100), 60)];
    let fcalls = r.calls("fcall");

    proxy.refuse();
    for i in 0..3 {
        let e = s.reserve(&p, "h1", "gw-a", 60, &accounts).await;
        assert!(unavailable(&e), "call {i} while refused: {e:?}");
    }
    assert_eq!(r.calls("fcall"), fcalls, "nothing reached Redis");
    let before = proxy.connections();

    proxy.heal();
    let ok = until_ok!(
        "reserve after heal",
        s.reserve(&p, "h1", "gw-a", 60, &accounts)
    );
    assert_eq!(reserved(&ok).remaining, vec![Some(Nanos(40))]);
    assert!(
        proxy.connections() > before,
        "the same store opened a new connection: {} then {}",
        before,
        proxy.connections()
    );
    assert_eq!(balances(&direct, &p, &[&a]).await, vec![(0, 60)]);
    let st = s
        .status(&p, std::slice::from_ref(&a))
        .await
        .expect("status");
    assert_eq!(st.value.accounts[0].held, 60, "and keeps working");
}

#[tokio::test]
async fn a_redis_killed_and_restarted_keeps_its_aof_and_the_store_reconnects() {
    let mut r = RedisServer::start();
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    let first = s
        .reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");

    r.kill9();
    let down = s
        .reserve(&p, "h2", "gw-a", 60, &[hold(&a, Some(100), 10)])
        .await;
    assert!(unavailable(&down), "{down:?}");
    assert!(r.try_cmd(&["PING"]).is_err(), "the port refuses");

    r.restart();
    let again = until_ok!(
        "resend after restart",
        s.reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
    );
    assert_eq!(again, first, "the hold came back from the AOF, same answer");
    assert_eq!(balances(&s, &p, &[&a]).await, vec![(0, 60)]);
    assert_eq!(r.hget_i64(&a, "held"), 60, "the fixture's own view agrees");
}

#[tokio::test]
async fn a_redis_restarted_without_persistence_has_lost_its_generation() {
    let mut r = RedisServer::start_with(Persistence::Off);
    let s = r.store().await;
    let p = project("bot");
    let a = p.budget(AccountKind::Project, "bot", Period::Day, NOW);
    s.reserve(&p, "h1", "gw-a", 60, &[hold(&a, Some(100), 60)])
        .await
        .expect("reserve");
    assert_eq!(r.hgetall(&a).get("held").map(String::as_str), Some("60"));

    r.restart();
    assert!(r.hgetall(&a).is_empty(), "the data is gone");
    let gen = until_ok!("generation after restart", s.generation());
    assert_eq!(gen, None, "data loss shows as a missing generation");
    let x = until_ok!(
        "reserve after restart",
        s.reserve(&p, "h2", "gw-a", 60, &[hold(&a, Some(100), 1)])
    );
    assert_eq!(
        x.value,
        Reservation::NoGeneration,
        "no admission on lost counters"
    );
}

/// The proxy itself, in front of a tiny echo server.
mod proxy {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::fault_proxy::FaultProxy;

    /// Echoes every byte back; counts what it received.
    struct Echo {
        addr: SocketAddr,
        received: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    }

    impl Echo {
        fn start() -> Echo {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
            let addr = l.local_addr().expect("addr");
            let received = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (rx, st) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for c in l.incoming() {
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut c) = c else { continue };
                    let rx = rx.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 {
                                return;
                            }
                            rx.fetch_add(n as u64, Ordering::SeqCst);
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Echo {
                addr,
                received,
                stop,
            }
        }

        fn received(&self) -> u64 {
            self.received.load(Ordering::SeqCst)
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
        }
    }

    fn connect(p: &FaultProxy) -> TcpStream {
        let c = TcpStream::connect(p.addr()).expect("connect to the proxy");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c
    }

    /// Send `msg`, read it back.
    fn echo(c: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        c.write_all(msg).expect("send");
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).expect("echo");
        got
    }

    /// The connection is dead: a read ends (reset, or EOF where no RST can be sent).
    fn broken(c: &mut TcpStream) -> Option<ErrorKind> {
        let mut b = [0u8; 16];
        match c.read(&mut b) {
            Ok(0) => None,
            Ok(n) => panic!("{n} bytes on a connection that should be dead"),
            Err(e) => Some(e.kind()),
        }
    }

    fn was_reset(c: &mut TcpStream) {
        let e = broken(c);
        if cfg!(target_os = "linux") {
            assert_eq!(e, Some(ErrorKind::ConnectionReset), "a TCP reset");
        }
    }

    #[test]
    fn it_passes_bytes_both_ways_and_counts_them() {
        let e = Echo::start();
        let p = FaultProxy::start(e.addr);
        let mut c = connect(&p);
        assert_eq!(echo(&mut c, b"hello"), b"hello");
        assert_eq!(echo(&mut c, b"again"), b"again");
        let mut d = connect(&p);
        assert_eq!(echo(&mut d, b"x"), b"x");
        assert_eq!(p.connections(), 2);
        assert_eq!((p.bytes_up(), p.bytes_down()), (11, 11));
        assert_eq!(e.received(), 11);
    }

    #[test]
    fn latency_holds_each_chunk_back() {
        let e = Echo::start();
        let p = FaultProxy::start(e.addr);
        let mut c = connect(&p);
        p.latency(Duration::ZERO, Duration::from_secs(2));
        c.write_all(b"slow").expect("send");
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut b = [0u8; 4];
        let early = c.read(&mut b);
        assert!(
            matches!(early, Err(ref x) if matches!(x.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "nothing before the latency: {early:?}"
        );
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.read_exact(&mut b).expect("late, but intact");
        assert_eq!(&b, b"slow");
        p.heal();
        assert_eq!(echo(&mut c, b"fast"), b"fast");
    }

    #[test]
    fn a_dropped_reply_is_delivered_upstream_and_resets_the_client() {
        let e = Echo::start();
        let p = FaultProxy::start(e.addr);
        let mut c = connect(&p);
        assert_eq!(echo(&mut c, b"warm"), b"warm");
        p.drop_next_reply();
        c.write_all(b"command").expect("send");
        was_reset(&mut c);
        assert_eq!(e.received(), 4 + 7, "the command reached the target");
        assert_eq!(p.replies_dropped(), 1);
        assert_eq!(p.bytes_down(), 4, "its reply was not forwarded");
        let mut d = connect(&p);
        assert_eq!(echo(&mut d, b"next"), b"next", "only one reply is dropped");
    }

    #[test]
    fn a_blackhole_forwards_nothing_and_heal_resets_what_it_swallowed() {
        let e = Echo::start();
        let p = FaultProxy::start(e.addr);
        let mut c = connect(&p);
        assert_eq!(echo(&mut c, b"warm"), b"warm");
        p.blackhole();
        c.write_all(b"lost").expect("send");
        let mut fresh = connect(&p);
        fresh.write_all(b"also lost").expect("send");
        fresh
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        // Both reads and the proxy's counters show that nothing went anywhere.
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut b = [0u8; 4];
        assert!(c.read(&mut b).is_err(), "no answer from a blackhole");
        assert_eq!(e.received(), 4, "nothing reached the target");
        assert_eq!(p.bytes_up(), 4);
        p.heal();
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        was_reset(&mut c);
        fresh
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        was_reset(&mut fresh);
        let mut d = connect(&p);
        assert_eq!(echo(&mut d, b"back"), b"back");
    }

    #[test]
    fn refuse_resets_open_and_new_connections_until_healed() {
        let e = Echo::start();
        let p = FaultProxy::start(e.addr);
        let mut c = connect(&p);
        assert_eq!(echo(&mut c, b"warm"), b"warm");
        p.refuse();
        was_reset(&mut c);
        let mut d = connect(&p);
        let _ = d.write_all(b"x"); // may already fail: the reset can come first
        broken(&mut d);
        assert_eq!(e.received(), 4, "nothing new reached the target");
        p.heal();
        let mut f = connect(&p);
        assert_eq!(echo(&mut f, b"ok"), b"ok");
        assert_eq!(p.connections(), 3);
        assert!(p.resets() >= 2);
    }
}
