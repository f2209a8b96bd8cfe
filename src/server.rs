//! The process: a Pingora server with the gateway listener, the admin listener and the
//! background services (config reload on SIGHUP, DNS refresh, store and budget gauges, systemd
//! notifications). Pingora owns the signals it knows (SIGTERM graceful stop, SIGQUIT graceful
//! upgrade, SIGINT fast stop); SIGHUP is ours.
//!
//! The ledger's store is opened before any service starts and flushed after Pingora has let
//! the requests in flight finish, so a graceful stop loses nothing. There is no daemon mode:
//! Pingora forks inside `run`, which would lose the store's writer thread; systemd runs
//! Tollgate in the foreground anyway.
//!
//! Tollgate binds its listening sockets itself (or, with `--upgrade`, takes them over from the
//! old process) and hands them to Pingora through Pingora's table of listening fds, the way a
//! graceful upgrade hands them over; so `listen = "127.0.0.1:0"` works and the address the
//! kernel chose is known. Once a socket is bound (it queues connections from then on) one line
//! goes to stdout: `LISTENING <addr>` for the gateway, `ADMIN_LISTENING <addr>` for the admin
//! listener.
//!
//! With `tls_cert` and `tls_key` the gateway listener serves HTTPS only (rustls, HTTP/1.1;
//! `tls.rs`), on the same socket and with the same report line; the admin listener is always
//! plain HTTP.
//!
//! SIGTERM, SIGQUIT and SIGINT are registered before anything binds ([`EarlySignals`]): a
//! signal sent the moment a listener is reported is neither fatal nor lost.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ExecutionPhase, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::Service as PingoraService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::Admin;
use crate::ledger::store::{Store, StoreHandle};
use crate::ledger::Ledger;
use crate::proxy::Gateway;
use crate::ratelimit::RateLimiter;
use crate::reload::{Loaded, Reloader};
use crate::resolver::{Resolver, REFRESH};
use crate::tls::GatewayCert;

/// How to start: `upgrade` takes the listening sockets over from a running instance.
pub struct RunOptions {
    pub config_path: PathBuf,
    pub upgrade: bool,
}

/// Run until stopped; returns the process exit code.
pub fn run(loaded: Loaded, opts: RunOptions) -> i32 {
    let Loaded { config: cfg, tls } = loaded;
    // The certificate validation loaded, behind the resolver a reload swaps it in.
    let gateway_tls = match tls.map(GatewayCert::new) {
        Some(cert) => match cert.settings() {
            Ok(settings) => Some((cert, settings)),
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        },
        None => None,
    };
    let (store, reader) = match Store::open(&cfg.store.path, cfg.store.flush_interval) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open the store {}: {e}", cfg.store.path.display());
            return 1;
        }
    };
    let ledger = match Ledger::open(store.clone(), reader, &cfg) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("cannot read the store {}: {e}", cfg.store.path.display());
            return 1;
        }
    };

    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(2),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        pid_file: cfg.server.pid_file.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    // Before any socket is bound: from the first LISTENING line on, a signal must reach us.
    let (signals, _signal_runtime) = match EarlySignals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot register the signal handlers: {e}");
            return 1;
        }
    };
    let listen = cfg.server.listen;
    let admin_listen = cfg.server.admin_listen;
    let single_node = cfg.fleet.is_none();
    let handover_path = crate::handover::socket_path(&cfg.server.upgrade_sock);
    let self_upgrade = SelfUpgrade {
        config_path: opts.config_path.clone(),
        upgrade_sock: PathBuf::from(&cfg.server.upgrade_sock),
        ledger_sock: single_node.then(|| handover_path.clone()),
        now: signals.upgrade_now.clone(),
    };
    let config = Arc::new(ArcSwap::from_pointee(cfg));
    let limits = Arc::new(RateLimiter::new());
    if single_node {
        if opts.upgrade {
            // Before the sockets are asked for: the predecessor hands its ledger over first.
            if let Err(e) = crate::handover::listen(
                &handover_path,
                ledger.clone(),
                config.clone(),
                limits.clone(),
            ) {
                log::warn!(
                    "hand-over socket {}: {e}; the predecessor keeps its own numbers during the overlap",
                    handover_path.display()
                );
            }
        }
        let (l, c, r, p) = (
            ledger.clone(),
            config.clone(),
            limits.clone(),
            handover_path.clone(),
        );
        signals.on_upgrade(Box::new(move || {
            let (l, c, r, p) = (l.clone(), c.clone(), r.clone(), p.clone());
            Box::pin(crate::handover::hand_over(p, l, c, r))
        }));
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let bound = Arc::new(BoundAddrs {
        admin_expected: admin_listen.is_some(),
        ..BoundAddrs::default()
    });
    let resolver = Arc::new(Resolver::new());

    // Fleet mode: its own runtime (kept alive until the server returns) and background loop.
    let mut _fleet_runtime = None;
    let fleet = match config.load().fleet.clone() {
        Some(f) => {
            let instance = f
                .instance
                .clone()
                .unwrap_or_else(|| default_instance(listen));
            match crate::ledger::fleet::Fleet::start(
                f,
                instance.clone(),
                ledger.clone(),
                config.clone(),
                crate::proxy::in_flight,
            ) {
                Ok((fleet, rt)) => {
                    log::info!("fleet mode: instance {instance}; connecting to Redis");
                    _fleet_runtime = Some(rt);
                    Some(fleet)
                }
                Err(e) => {
                    eprintln!("cannot start the fleet runtime: {e}");
                    return 1;
                }
            }
        }
        None => None,
    };
    let cache = Arc::new(crate::cache::ResponseCache::new(
        config.load().cache.max_bytes,
    ));
    let gateway = Gateway::new(
        config.clone(),
        resolver.clone(),
        ledger.clone(),
        limits,
        fleet.clone(),
        cache,
    );
    let mut proxy = http_proxy_service(&server.configuration, gateway);
    let key = fd_key(Role::Gateway, listen);
    let gateway_cert = match gateway_tls {
        Some((cert, settings)) => {
            proxy.add_tls_with_settings(&key, None, settings);
            if let Some(files) = &config.load().server.tls {
                log::info!(
                    "the gateway listener serves HTTPS only, certificate {}",
                    files.cert.display()
                );
            }
            Some(cert)
        }
        None => {
            proxy.add_tcp(&key);
            None
        }
    };
    server.add_service(Prebound {
        inner: proxy,
        role: Role::Gateway,
        configured: listen,
        key,
        bound: bound.clone(),
    });

    let reloader = Arc::new(Reloader {
        config: config.clone(),
        resolver,
        ledger: ledger.clone(),
        path: opts.config_path,
        tls: gateway_cert,
    });
    server.add_service(background_service(
        "tollgate-control",
        Control {
            reloader: reloader.clone(),
            store: store.clone(),
            phases: Mutex::new(Some(server.watch_execution_phase())),
            bound: bound.clone(),
            self_upgrade,
        },
    ));
    if let Some(addr) = admin_listen {
        let mut admin = Service::new(
            "tollgate admin".to_string(),
            Admin {
                config,
                ledger: ledger.clone(),
                reloader,
                fleet,
            },
        );
        let key = fd_key(Role::Admin, addr);
        admin.add_tcp(&key);
        server.add_service(Prebound {
            inner: admin,
            role: Role::Admin,
            configured: addr,
            key,
            bound,
        });
    }

    log::info!("tollgate {} starting", env!("CARGO_PKG_VERSION"));
    crate::access_log::start();
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    crate::access_log::flush(Duration::from_secs(2));
    // Requests in flight have finished (or the grace period ran out): commit what they charged.
    let code = match store.shutdown() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("final ledger flush failed: {e}");
            1
        }
    };
    log::info!("tollgate stopped");
    code
}

/// `[fleet] instance` when unset: the host name and the gateway port (with port 0, the pid,
/// so two instances started on one machine for a test still differ).
fn default_instance(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate".to_string());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match listen.port() {
        0 => format!("{host}-pid{}", std::process::id()),
        port => format!("{host}-{port}"),
    }
}

/// Which listener a socket is: the two have separate report lines and fd-table keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Gateway,
    Admin,
}

impl Role {
    /// The stdout line's tag: `LISTENING <addr>` / `ADMIN_LISTENING <addr>`.
    fn tag(self) -> &'static str {
        match self {
            Role::Gateway => "LISTENING",
            Role::Admin => "ADMIN_LISTENING",
        }
    }
}

/// The key of a listener in Pingora's fd table (also the address string Pingora is given, and
/// the name the socket carries to a successor in a graceful upgrade). A fixed address is its
/// own key, as before, so an upgrade between versions still matches sockets. Port 0 names no
/// socket (the gateway and the admin listener may both say `127.0.0.1:0`), so such a key also
/// says which listener it is; Pingora never parses it, because [`Prebound`] puts the socket in
/// the table before Pingora looks.
fn fd_key(role: Role, configured: SocketAddr) -> String {
    if configured.port() != 0 {
        return configured.to_string();
    }
    match role {
        Role::Gateway => format!("tollgate-gateway@{configured}"),
        Role::Admin => format!("tollgate-admin@{configured}"),
    }
}

/// The addresses the listeners got, for the readiness probe.
#[derive(Default)]
struct BoundAddrs {
    gateway: OnceLock<SocketAddr>,
    admin: OnceLock<SocketAddr>,
    admin_expected: bool,
}

impl BoundAddrs {
    fn set(&self, role: Role, addr: SocketAddr) {
        let _ = match role {
            Role::Gateway => self.gateway.set(addr),
            Role::Admin => self.admin.set(addr),
        };
    }

    /// Every expected address, once all are known.
    fn all(&self) -> Option<Vec<SocketAddr>> {
        let mut v = vec![*self.gateway.get()?];
        if self.admin_expected {
            v.push(*self.admin.get()?);
        }
        Some(v)
    }
}

/// How often, and how many times, a bind that finds the address in use is retried (Pingora's
/// own values: a restart may find the old process still holding the port for a moment).
const BIND_TRIES: u32 = 30;
const BIND_RETRY: Duration = Duration::from_secs(1);

/// A Pingora listening service whose one TCP socket Tollgate provides: taken over from the
/// old process (an upgrade put it in the fd table under `key`) or bound here. Pingora then
/// finds it in the table and serves on it instead of binding `key` itself.
struct Prebound<S> {
    inner: S,
    role: Role,
    configured: SocketAddr,
    key: String,
    bound: Arc<BoundAddrs>,
}

impl<S> Prebound<S> {
    /// The socket under `key` in `table`, binding it first if no predecessor handed it over.
    async fn claim(&self, table: &ListenFds) -> std::io::Result<SocketAddr> {
        let inherited = table.lock().get(&self.key).copied();
        if let Some(fd) = inherited {
            return local_addr(fd);
        }
        let listener = bind_retrying(self.configured).await?;
        let addr = listener.local_addr()?;
        table.lock().add(self.key.clone(), listener.into_raw_fd());
        Ok(addr)
    }
}

/// `getsockname` of a listening fd the table owns (it stays open).
fn local_addr(fd: RawFd) -> std::io::Result<SocketAddr> {
    // SAFETY: `fd` is an open socket owned by Pingora's fd table; ManuallyDrop never closes it.
    let l = std::mem::ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(fd) });
    l.local_addr()
}

async fn bind_retrying(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let mut tries = 1;
    loop {
        // std sets SO_REUSEADDR, as Pingora does; Pingora raises the backlog when it takes the
        // socket. Non-blocking, as a tokio listener must be.
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < BIND_TRIES => {
                log::warn!("{addr} is in use, will try again");
                tries += 1;
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl<S: PingoraService> PingoraService for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(table) = &fds {
            match self.claim(table).await {
                Ok(addr) => {
                    log::info!("{} listening on {addr}", self.inner.name());
                    self.bound.set(self.role, addr);
                    // The documented report; a closed stdout is no reason to stop serving.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{} {addr}", self.role.tag()).and_then(|()| out.flush());
                }
                Err(e) => {
                    // Pingora would only panic this service's task and serve on half-started.
                    log::error!("cannot listen on {}: {e}", self.configured);
                    std::process::exit(1);
                }
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// Pingora's own signal watch registers SIGTERM, SIGQUIT and SIGINT only when its main loop
/// starts, after the services (and so the listeners) have started: a SIGTERM in between gets
/// the default action and kills the process without a final flush. These are registered
/// first, in `run`, and Pingora is given them instead; a signal that arrives before Pingora
/// asks is kept, not lost.
/// What SIGQUIT runs before the sockets go to the successor (the ledger hand-over).
type UpgradeHook =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

struct EarlySignals {
    signals: tokio::sync::Mutex<(Signal, Signal, Signal)>,
    on_upgrade: std::sync::OnceLock<UpgradeHook>,
    /// SIGUSR2's self-upgrade: the successor is waiting, hand over as on SIGQUIT.
    upgrade_now: Arc<tokio::sync::Notify>,
}

impl EarlySignals {
    /// Registering needs a tokio runtime; the returned one must outlive the server (drop it
    /// after `Server::run` returns, outside any runtime). Delivery does not depend on it: any
    /// runtime's signal driver (Pingora's have one) broadcasts a caught signal.
    fn register() -> std::io::Result<(EarlySignals, tokio::runtime::Runtime)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let signals = {
            let _in = rt.enter();
            (
                signal(SignalKind::quit())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            )
        };
        Ok((
            EarlySignals {
                signals: tokio::sync::Mutex::new(signals),
                on_upgrade: std::sync::OnceLock::new(),
                upgrade_now: Arc::new(tokio::sync::Notify::new()),
            },
            rt,
        ))
    }
}

impl EarlySignals {
    fn on_upgrade(&self, hook: UpgradeHook) {
        let _ = self.on_upgrade.set(hook);
    }
}

#[async_trait]
impl ShutdownSignalWatch for EarlySignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut guard = self.signals.lock().await;
        let (quit, term, int) = &mut *guard;
        // The same meaning as Pingora's `UnixShutdownSignalWatch`.
        let signal = tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            () = self.upgrade_now.notified() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        if matches!(signal, ShutdownSignal::GracefulUpgrade) {
            crate::handover::set_upgrading();
            // The ledger goes to the successor before the sockets do (crate::handover).
            if let Some(hook) = self.on_upgrade.get() {
                hook().await;
            }
        }
        signal
    }
}

/// How often the store's backlog, its flush lag and the budgets left are published as metrics.
const STORE_SAMPLE: Duration = Duration::from_secs(2);
/// How long to wait for the listeners to accept before giving up on telling systemd READY=1.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long one TLS handshake of the readiness probe may take (a loaded debug build is slow).
const TLS_PROBE: Duration = Duration::from_secs(2);

/// SIGHUP reloads, DNS refreshes, store metrics and systemd notifications, on one task.
struct Control {
    reloader: Arc<Reloader>,
    store: StoreHandle,
    /// Pingora's execution phases: a shutdown after a SIGQUIT hand-over is not a service stop.
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    /// The addresses the listeners got (the config may say port 0).
    bound: Arc<BoundAddrs>,
    /// SIGUSR2: start the successor and hand over to it.
    self_upgrade: SelfUpgrade,
}

/// How many times, 50 ms apart, SIGUSR2's upgrade looks for the successor to be waiting.
const SUCCESSOR_WAIT_TRIES: u32 = 300;

/// SIGUSR2: the binary upgrade in one signal, so it runs inside a service manager's unit (the
/// successor is this process's child, so it is in the unit's cgroup, and with
/// `NotifyAccess=all` its `READY=1` + `MAINPID=` make it the unit's main process). The
/// successor is the binary at the path this process was started as (a new file there is the
/// new version), with the same config file and environment, and `--upgrade`. Once it waits for
/// the sockets, this process hands over exactly as on SIGQUIT.
struct SelfUpgrade {
    config_path: PathBuf,
    upgrade_sock: PathBuf,
    /// Single-node mode: the successor's hand-over socket, bound before it waits.
    ledger_sock: Option<PathBuf>,
    now: Arc<tokio::sync::Notify>,
}

impl SelfUpgrade {
    /// The binary to start: the path this process was started as, when absolute (systemd's
    /// `ExecStart=` is); else the running executable's path.
    fn binary() -> Option<PathBuf> {
        let arg0 = std::env::args_os().next().map(PathBuf::from);
        match arg0 {
            Some(p) if p.is_absolute() => Some(p),
            _ => {
                let exe = std::env::current_exe().ok()?;
                // A binary replaced on disk reads back as "… (deleted)": its path is the new one.
                let s = exe.to_string_lossy().to_string();
                Some(PathBuf::from(s.trim_end_matches(" (deleted)")))
            }
        }
    }

    async fn run(&self) {
        let Some(bin) = SelfUpgrade::binary() else {
            log::error!("SIGUSR2: cannot tell which binary to start; no upgrade");
            return;
        };
        // Left from this process's own start as a successor: only the new ones say "ready".
        let _ = std::fs::remove_file(&self.upgrade_sock);
        if let Some(l) = &self.ledger_sock {
            let _ = std::fs::remove_file(l);
        }
        let mut child = match std::process::Command::new(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--upgrade")
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("SIGUSR2: cannot start {}: {e}; no upgrade", bin.display());
                return;
            }
        };
        log::info!(
            "SIGUSR2: started the successor {} (pid {}); handing over once it waits",
            bin.display(),
            child.id()
        );
        for _ in 0..SUCCESSOR_WAIT_TRIES {
            if let Ok(Some(status)) = child.try_wait() {
                log::error!("SIGUSR2: the successor exited ({status}) before taking over; this process serves on");
                return;
            }
            let waiting =
                self.upgrade_sock.exists() && self.ledger_sock.as_ref().is_none_or(|l| l.exists());
            if waiting {
                self.now.notify_one();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::error!("SIGUSR2: the successor did not get ready in time; stopping it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The bound addresses, once every listener has one (bounded, like the probe).
async fn bound_addrs(bound: &BoundAddrs, within: Duration) -> Option<Vec<SocketAddr>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = bound.all() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            log::error!("the listeners did not bind; not telling systemd READY=1");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll-connect to every listener until each accepts (bounded): only then is READY=1 true.
/// `addrs` is [`BoundAddrs::all`], the gateway first; with `gateway_tls` the gateway's probe
/// is a TLS handshake with the certificate it should serve (see [`crate::tls::handshakes`]).
async fn listeners_accept(
    addrs: &[SocketAddr],
    gateway_tls: Option<&Arc<GatewayCert>>,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    for (i, addr) in addrs.iter().enumerate() {
        let mut target = *addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let tls = gateway_tls.filter(|_| i == 0);
        loop {
            let accepted = match tls {
                Some(cert) => matches!(
                    tokio::time::timeout(TLS_PROBE, crate::tls::handshakes(cert, target)).await,
                    Ok(true)
                ),
                None => matches!(
                    tokio::time::timeout(pause * 20, tokio::net::TcpStream::connect(target)).await,
                    Ok(Ok(_))
                ),
            };
            if accepted {
                break;
            }
            if Instant::now() >= deadline {
                log::error!("{target} does not accept connections; not telling systemd READY=1");
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
    true
}

impl Control {
    /// Pingora sleeps the whole grace period after SIGTERM even with nothing in flight. Once no
    /// request has been in flight for two checks in a row, commit the ledger and exit 0; while
    /// requests run, Pingora's grace period still bounds the wait.
    async fn exit_when_idle(&self) {
        let grace = Duration::from_secs(self.reloader.config.load().server.grace_period_s);
        let deadline = Instant::now() + grace;
        let mut idle_checks = 0;
        while Instant::now() < deadline {
            if crate::proxy::in_flight() == 0 {
                idle_checks += 1;
                if idle_checks >= 2 {
                    crate::access_log::flush(Duration::from_secs(2));
                    let code = match self.store.shutdown() {
                        Ok(()) => 0,
                        Err(e) => {
                            log::error!("final ledger flush failed: {e}");
                            1
                        }
                    };
                    log::info!("tollgate stopped: nothing in flight");
                    std::process::exit(code);
                }
            } else {
                idle_checks = 0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let r = &self.reloader;
        let mut usr2 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!(
                        "cannot listen for SIGUSR2, upgrade only with --upgrade and SIGQUIT: {e}"
                    );
                    None
                }
            };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only via the admin API: {e}");
                None
            }
        };
        // Startup (the first DNS refresh, then READY=1 once every listener accepts) runs as one
        // branch of the loop below, never before it: a SIGTERM that arrives while it waits must
        // still stop the process promptly. (It did not: Pingora closes the listeners on SIGTERM,
        // so a readiness probe still polling then could only give up after READY_WITHIN, 10 s.)
        let startup = async {
            r.resolver.refresh(&r.config.load()).await;
            let Some(listeners) = bound_addrs(&self.bound, READY_WITHIN).await else {
                return;
            };
            if listeners_accept(&listeners, r.tls.as_ref(), READY_WITHIN).await {
                crate::notify::ready();
            }
        };
        tokio::pin!(startup);
        let mut started = false;
        let mut phases = self.phases.lock().ok().and_then(|mut p| p.take());
        let mut handing_over = false;
        let mut lag = crate::metrics::FlushLag::default();
        let mut budgets = std::collections::HashSet::new();
        let mut sample = tokio::time::interval(STORE_SAMPLE);
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // SIGTERM: the service stops. After a SIGQUIT the successor serves on: telling
                    // systemd STOPPING=1 then would make it stop the successor too.
                    if !handing_over {
                        crate::notify::stopping();
                        self.exit_when_idle().await;
                    }
                    return;
                }
                () = &mut startup, if !started => started = true,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = r.reload().await;
                }
                Some(()) = async { match usr2.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.self_upgrade.run().await;
                }
                phase = async { match phases.as_mut() { Some(p) => p.recv().await, None => std::future::pending().await } } => {
                    match phase {
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => handing_over = true,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => phases = None,
                    }
                }
                _ = sample.tick() => {
                    crate::metrics::observe_store(&self.store.stats(), &mut lag, crate::clock::unix_ms());
                    crate::metrics::publish_budgets(&r.config.load(), &r.ledger, &mut budgets);
                }
                _ = tick.tick() => r.resolver.refresh(&r.config.load()).await,
            }
        }
    }
}
