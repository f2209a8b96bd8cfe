//! A TCP fault proxy: listens on `127.0.0.1:0`, forwards every connection to a target, and
//! breaks the traffic on command, at run time, from the test's own thread. `std::net` and
//! threads only (no tokio), so the integration tests and the fleet store's unit tests
//! (`src/ledger/fleet/tests.rs` includes this file with `#[path]`) share it.
//!
//! Faults (each switch takes effect on the next chunk read, on every connection):
//! * [`FaultProxy::latency`]: sleep before forwarding each chunk, per direction.
//! * [`FaultProxy::drop_next_reply`]: the next chunk a client sends is forwarded, and when the
//!   target's answer comes back the client's connection is reset instead: the command ran,
//!   the client cannot know. This is the fault that makes a non-idempotent retry double-apply.
//! * [`FaultProxy::blackhole`]: accept and read, forward nothing, either way. Bytes are lost,
//!   so a connection that lost any is no longer a coherent stream: [`FaultProxy::heal`]
//!   resets it and the client reconnects.
//! * [`FaultProxy::refuse`]: reset every open connection, and every new one as it arrives.
//! * [`FaultProxy::heal`]: pass-through again, no latency, nothing armed.
//!
//! A reset is a real TCP RST (`SO_LINGER` 0 on Linux), not an orderly close. Connections and
//! bytes are counted for assertions. Dropping the proxy resets everything it holds.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Blackhole,
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropReply {
    Off,
    /// The next client chunk, on whichever connection, is the command whose reply is dropped.
    Armed,
    /// That command went out on this connection; its reply resets it.
    Sent(u64),
}

struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Lost bytes in a blackhole: reset on heal.
    tainted: bool,
}

struct State {
    mode: Mode,
    up_latency: Duration,
    down_latency: Duration,
    drop_reply: DropReply,
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    stop: AtomicBool,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    replies_dropped: AtomicU64,
    resets: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A pump thread that panicked must not take the test down with a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget connection `id` and reset its client side (RST) and its upstream.
    fn reset(&self, state: &mut State, id: u64) {
        if let Some(c) = state.conns.remove(&id) {
            self.resets.fetch_add(1, Ordering::Relaxed);
            reset_stream(&c.client);
            if let Some(u) = &c.upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    }

    /// An orderly close of both sides (one side ended).
    fn close(&self, id: u64) {
        if let Some(c) = self.lock().conns.remove(&id) {
            let _ = c.client.shutdown(Shutdown::Both);
            if let Some(u) = &c.upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Make the last close of `s` send RST, and wake every thread reading it without sending
/// anything (a read shutdown sends no FIN). The pumps then drop their handles and the kernel
/// resets the connection.
fn reset_stream(s: &TcpStream) {
    set_linger_zero(s);
    let _ = s.shutdown(Shutdown::Read);
}

#[cfg(target_os = "linux")]
fn set_linger_zero(s: &TcpStream) {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
    }
    // <asm-generic/socket.h>, the values on every Linux ABI Rust's tier-1 targets use.
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open fd, and a pointer to a `struct linger` that outlives the call.
    let _ = unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l as *const Linger as *const c_void,
            std::mem::size_of::<Linger>() as u32,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn set_linger_zero(s: &TcpStream) {
    // No RST elsewhere: the client sees an orderly close, which breaks a pending reply too.
    let _ = s.shutdown(Shutdown::Write);
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A pass-through proxy to `target` on a fresh loopback port.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                mode: Mode::Pass,
                up_latency: Duration::ZERO,
                down_latency: Duration::ZERO,
                drop_reply: DropReply::Off,
                conns: HashMap::new(),
                next_id: 0,
            }),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            replies_dropped: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("spawn the proxy's accept thread");
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/` through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Sleep this long before forwarding each chunk: `up` client → target, `down` target →
    /// client. Zero is no delay.
    pub fn latency(&self, up: Duration, down: Duration) {
        let mut st = self.shared.lock();
        st.up_latency = up;
        st.down_latency = down;
    }

    /// Forward the next thing a client sends, then reset that client's connection instead of
    /// forwarding the answer. [`FaultProxy::replies_dropped`] counts it once done.
    pub fn drop_next_reply(&self) {
        self.shared.lock().drop_reply = DropReply::Armed;
    }

    /// Read from every connection, old and new, and forward nothing.
    pub fn blackhole(&self) {
        self.shared.lock().mode = Mode::Blackhole;
    }

    /// Reset every open connection now, and every new one on arrival.
    pub fn refuse(&self) {
        let mut st = self.shared.lock();
        st.mode = Mode::Refuse;
        let ids: Vec<u64> = st.conns.keys().copied().collect();
        for id in ids {
            self.shared.reset(&mut st, id);
        }
    }

    /// Pass-through again: no latency, nothing armed; connections that lost bytes in a
    /// blackhole are reset (their stream is no longer coherent).
    pub fn heal(&self) {
        let mut st = self.shared.lock();
        st.mode = Mode::Pass;
        st.up_latency = Duration::ZERO;
        st.down_latency = Duration::ZERO;
        st.drop_reply = DropReply::Off;
        let tainted: Vec<u64> = st
            .conns
            .iter()
            .filter(|(_, c)| c.tainted)
            .map(|(id, _)| *id)
            .collect();
        for id in tainted {
            self.shared.reset(&mut st, id);
        }
    }

    /// Client connections accepted so far (reset ones included).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Bytes forwarded (or being forwarded) client → target.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded (or being forwarded) target → client.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::Relaxed)
    }

    /// Replies dropped by [`FaultProxy::drop_next_reply`].
    pub fn replies_dropped(&self) -> u64 {
        self.shared.replies_dropped.load(Ordering::Relaxed)
    }

    /// Connections reset by the proxy (refused, dropped replies, healed blackholes).
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut st = self.shared.lock();
        let ids: Vec<u64> = st.conns.keys().copied().collect();
        for id in ids {
            self.shared.reset(&mut st, id);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let mode = shared.lock().mode;
        let upstream = match mode {
            Mode::Refuse => {
                shared.resets.fetch_add(1, Ordering::Relaxed);
                reset_stream(&client);
                continue;
            }
            Mode::Blackhole => None,
            Mode::Pass => {
                match TcpStream::connect_timeout(&shared.target, Duration::from_secs(2)) {
                    Ok(u) => {
                        let _ = u.set_nodelay(true);
                        Some(u)
                    }
                    Err(_) => {
                        // The target is down: the client sees its connection reset.
                        shared.resets.fetch_add(1, Ordering::Relaxed);
                        reset_stream(&client);
                        continue;
                    }
                }
            }
        };
        let (Ok(client_r), Ok(client_w)) = (client.try_clone(), client.try_clone()) else {
            continue;
        };
        let upstream_pair = match &upstream {
            Some(u) => match (u.try_clone(), u.try_clone()) {
                (Ok(r), Ok(w)) => Some((r, w)),
                _ => continue,
            },
            None => None,
        };
        let id = {
            let mut st = shared.lock();
            // The mode may have changed while connecting: the pumps check it per chunk, and a
            // refuse() in between must not miss this connection.
            let id = st.next_id;
            st.next_id += 1;
            st.conns.insert(
                id,
                Conn {
                    client,
                    tainted: upstream.is_none(),
                    upstream,
                },
            );
            if st.mode == Mode::Refuse {
                shared.reset(&mut st, id);
            }
            id
        };
        let (up_r, up_w) = match upstream_pair {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name(format!("fault-proxy-up-{id}"))
            .spawn(move || pump_up(s, id, client_r, up_w));
        if let Some(up_r) = up_r {
            let s = shared.clone();
            let _ = std::thread::Builder::new()
                .name(format!("fault-proxy-down-{id}"))
                .spawn(move || pump_down(s, id, up_r, client_w));
        }
    }
}

/// Client → target.
fn pump_up(shared: Arc<Shared>, id: u64, mut client: TcpStream, mut upstream: Option<TcpStream>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                shared.close(id);
                return;
            }
            Ok(n) => n,
        };
        let delay = {
            let mut st = shared.lock();
            let mode = st.mode;
            let Some(conn) = st.conns.get_mut(&id) else {
                return; // reset meanwhile
            };
            if mode == Mode::Blackhole || conn.tainted || upstream.is_none() {
                conn.tainted = true;
                continue;
            }
            if st.drop_reply == DropReply::Armed {
                st.drop_reply = DropReply::Sent(id);
            }
            st.up_latency
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let Some(u) = upstream.as_mut() else { continue };
        // Counted before the write, so a test that saw the answer also sees the count.
        shared.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        if u.write_all(&buf[..n]).is_err() {
            shared.close(id);
            return;
        }
    }
}

/// Target → client.
fn pump_down(shared: Arc<Shared>, id: u64, mut upstream: TcpStream, mut client: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match upstream.read(&mut buf) {
            Ok(0) | Err(_) => {
                shared.close(id);
                return;
            }
            Ok(n) => n,
        };
        let delay = {
            let mut st = shared.lock();
            let mode = st.mode;
            let drop_reply = st.drop_reply;
            let Some(conn) = st.conns.get_mut(&id) else {
                return;
            };
            if mode == Mode::Blackhole || conn.tainted {
                conn.tainted = true;
                continue;
            }
            if drop_reply == DropReply::Sent(id) {
                st.drop_reply = DropReply::Off;
                shared.replies_dropped.fetch_add(1, Ordering::Relaxed);
                shared.reset(&mut st, id);
                return;
            }
            st.down_latency
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        shared.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        if client.write_all(&buf[..n]).is_err() {
            shared.close(id);
            return;
        }
    }
}
