//! A real `redis-server` for tests: one child process on a loopback port, in a temp dir of its
//! own, killed on drop (also when the test panics).
//!
//! Used by the integration tests (`tests/common`) and by the fleet store's unit tests
//! (`src/ledger/fleet/tests.rs` includes this file with `#[path]`), so it needs nothing but
//! `std` and `tempfile`: no tokio, no redis crate, no `redis-cli`.
//!
//! * The binary is `redis-server` (Debian's package), or `$TOLLGATE_REDIS_SERVER`. A missing
//!   binary fails the test with a message saying how to install it: never a skip.
//! * Redis cannot bind port 0, so [`RedisServer::start`] tries ports from a per-process base
//!   (below the ephemeral range) until one is free.
//! * Persistence is AOF with `appendfsync always` by default, so every write Redis
//!   acknowledged survives [`RedisServer::kill9`] + [`RedisServer::restart`];
//!   [`Persistence::Off`] (`--appendonly no --save ""`) loses everything on a restart.
//! * [`RedisServer::cmd`] speaks RESP over a plain TCP connection, for assertions and for
//!   faults the client must not see coming (`FLUSHALL`, `FUNCTION FLUSH`, `HGETALL`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a start (or a restart, AOF loading included) may take on a loaded machine.
const READY_WITHIN: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `--appendonly yes --appendfsync always --save ""`: what Redis acknowledged is on disk.
    Aof,
    /// `--appendonly no --save ""`: a restart comes back empty.
    Off,
}

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    persistence: Persistence,
    /// More `redis-server` flags, given on every start (say `--requirepass PW`).
    extra_args: Vec<String>,
    bin: String,
    /// Starts so far (each one logs to a file of its own, so readiness is never read from an
    /// earlier run's log).
    starts: u32,
    dir: tempfile::TempDir,
}

/// Ports handed out in this process (a per-process base plus this).
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

enum Spawn {
    Ready(Child),
    PortTaken,
}

impl RedisServer {
    /// A server with AOF on.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Persistence::Aof)
    }

    pub fn start_with(persistence: Persistence) -> RedisServer {
        RedisServer::start_with_args(persistence, &[])
    }

    /// [`RedisServer::start_with`] plus `extra` flags for `redis-server`, kept for every
    /// restart (e.g. `["--requirepass", "pw"]`: then [`RedisServer::cmd`] cannot talk to it,
    /// it sends no AUTH).
    pub fn start_with_args(persistence: Persistence, extra: &[&str]) -> RedisServer {
        let bin = std::env::var("TOLLGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        // 10000..32000: below Linux's ephemeral range (32768+), so no outgoing connection
        // holds the port; the base spreads concurrent test processes apart.
        let base = 10_000 + (std::process::id() % 1_100) as u16 * 20;
        let mut server = RedisServer {
            child: None,
            port: 0,
            persistence,
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
            bin,
            starts: 0,
            dir,
        };
        for _ in 0..64 {
            let port = base + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 2_000;
            // Cheap pre-check; the server's own bind is the one that counts.
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            server.port = port;
            if let Spawn::Ready(child) = server.spawn() {
                server.child = Some(child);
                return server;
            }
        }
        panic!("no free loopback port for redis-server after 64 tries from {base}");
    }

    /// Start the binary on `self.port` in `self.dir` and wait until it accepts connections.
    fn spawn(&mut self) -> Spawn {
        self.starts += 1;
        let log = self.log_path(self.starts);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--save", ""])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.persistence {
            Persistence::Aof => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::Off => cmd.args(["--appendonly", "no"]),
        };
        cmd.args(&self.extra_args);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): the fleet tests need a real Redis. Install it \
                 (apt-get install redis-server) or point TOLLGATE_REDIS_SERVER at a redis-server binary",
                self.bin
            )
        });
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                if text.contains("Address already in use") {
                    return Spawn::PortTaken;
                }
                panic!(
                    "redis-server exited ({status}) on port {}:\n{text}",
                    self.port
                );
            }
            if text.contains("Ready to accept connections")
                && TcpStream::connect(self.addr()).is_ok()
            {
                return Spawn::Ready(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} not ready in {READY_WITHIN:?}:\n{text}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("redis.{start}.log"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// SIGKILL the server and wait for it: no shutdown, no last write. Its port refuses
    /// connections from here on, until [`RedisServer::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }

    /// Start again on the same port and in the same dir (killing the running server first,
    /// with SIGKILL, if there is one). With AOF the data comes back; with persistence off it
    /// is gone. Panics if the port was taken in between.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match self.spawn() {
                Spawn::Ready(child) => {
                    self.child = Some(child);
                    return;
                }
                Spawn::PortTaken if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Spawn::PortTaken => panic!(
                    "redis-server cannot restart: port {} was taken while it was down",
                    self.port
                ),
            }
        }
    }

    /// Send one command on a fresh connection; its reply, or why there is none (an error
    /// reply, or no connection).
    pub fn try_cmd(&self, args: &[&str]) -> Result<Reply, String> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2))
            .map_err(|e| format!("connect to redis on {}: {e}", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).map_err(|e| format!("send: {e}"))?;
        let reply = read_reply(&mut BufReader::new(s))?;
        match reply {
            Reply::Error(e) => Err(e),
            r => Ok(r),
        }
    }

    /// [`RedisServer::try_cmd`], rendered as `redis-cli` would (array items one per line,
    /// nil as `(nil)`); panics on an error reply or no connection.
    pub fn cmd(&self, args: &[&str]) -> String {
        match self.try_cmd(args) {
            Ok(r) => r.to_string(),
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// `HGETALL key` as a map (empty when the key does not exist).
    pub fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        let r = self
            .try_cmd(&["HGETALL", key])
            .unwrap_or_else(|e| panic!("HGETALL {key}: {e}"));
        let Reply::Array(Some(items)) = r else {
            panic!("HGETALL {key} answered {r:?}");
        };
        let texts: Vec<String> = items.iter().map(Reply::to_string).collect();
        texts
            .chunks_exact(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    /// An integer field of a hash; 0 when the key or the field does not exist.
    pub fn hget_i64(&self, key: &str, field: &str) -> i64 {
        match self.try_cmd(&["HGET", key, field]) {
            Ok(Reply::Bulk(None)) => 0,
            Ok(r) => r
                .to_string()
                .parse()
                .unwrap_or_else(|_| panic!("HGET {key} {field} is not an integer: {r:?}")),
            Err(e) => panic!("HGET {key} {field}: {e}"),
        }
    }

    /// How many times the server ran `command` (lowercase, e.g. `fcall`) since it started,
    /// from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|rest| {
                rest.split(',')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .expect("calls=N")
            })
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the nil bulk string.
    Bulk(Option<String>),
    /// `None`: the nil array.
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) | Reply::Bulk(Some(s)) => f.write_str(s),
            Reply::Error(e) => write!(f, "(error) {e}"),
            Reply::Int(n) => write!(f, "{n}"),
            Reply::Bulk(None) | Reply::Array(None) => f.write_str("(nil)"),
            Reply::Array(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if n == 0 || !line.ends_with("\r\n") {
        return Err(format!("connection closed mid-reply ({line:?})"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn read_reply(r: &mut impl BufRead) -> Result<Reply, String> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("bad RESP length or integer {line:?}"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(int(rest)?),
        "$" => match int(rest)? {
            n if n < 0 => Reply::Bulk(None),
            n => {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        "*" => match int(rest)? {
            n if n < 0 => Reply::Array(None),
            n => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(format!("not a RESP2 reply: {line:?}")),
    })
}
