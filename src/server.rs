//! The process: a Pingora server with the gateway listener, the admin listener and the
//! background services (config reload on SIGHUP, DNS refresh, store and budget gauges, systemd
//! notifications). Pingora owns the signals it knows (SIGTERM graceful stop, SIGQUIT graceful
//! upgrade, SIGINT fast stop); SIGHUP is ours.
//!
//! The ledger's store is opened before any service starts and flushed after Pingora has let
//! the requests in flight finish, so a graceful stop loses nothing. There is no daemon mode:
//! Pingora forks inside `run`, which would lose the store's writer thread; systemd runs
//! Tollgate in the foreground anyway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::engine::config::Config;
use crate::ledger::store::{Store, StoreHandle};
use crate::ledger::Ledger;
use crate::proxy::Gateway;
use crate::ratelimit::RateLimiter;
use crate::reload::Reloader;
use crate::resolver::{Resolver, REFRESH};

/// How to start: `upgrade` takes the listening sockets over from a running instance.
pub struct RunOptions {
    pub config_path: PathBuf,
    pub upgrade: bool,
}

/// Run until stopped; returns the process exit code.
pub fn run(cfg: Config, opts: RunOptions) -> i32 {
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
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listen = cfg.server.listen.to_string();
    let admin_listen = cfg.server.admin_listen;
    let config = Arc::new(ArcSwap::from_pointee(cfg));
    let resolver = Arc::new(Resolver::new());
    let limits = Arc::new(RateLimiter::new());

    let gateway = Gateway::new(config.clone(), resolver.clone(), ledger.clone(), limits);
    let mut proxy = http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&listen);
    server.add_service(proxy);

    let reloader = Arc::new(Reloader {
        config: config.clone(),
        resolver,
        ledger: ledger.clone(),
        path: opts.config_path,
    });
    server.add_service(background_service(
        "tollgate-control",
        Control {
            reloader: reloader.clone(),
            store: store.clone(),
            phases: Mutex::new(Some(server.watch_execution_phase())),
        },
    ));
    if let Some(addr) = admin_listen {
        let mut admin = Service::new(
            "tollgate admin".to_string(),
            Admin {
                config,
                ledger: ledger.clone(),
                reloader,
            },
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }

    log::info!(
        "tollgate {} listening on {listen}",
        env!("CARGO_PKG_VERSION")
    );
    server.run(RunArgs::default());
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

/// How often the store's backlog, its flush lag and the budgets left are published as metrics.
const STORE_SAMPLE: Duration = Duration::from_secs(2);
/// How long to wait for the listeners to accept before giving up on telling systemd READY=1.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// SIGHUP reloads, DNS refreshes, store metrics and systemd notifications, on one task.
struct Control {
    reloader: Arc<Reloader>,
    store: StoreHandle,
    /// Pingora's execution phases: a shutdown after a SIGQUIT hand-over is not a service stop.
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

/// Poll-connect to every listener until each accepts (bounded): only then is READY=1 true.
async fn listeners_accept(addrs: &[SocketAddr], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    for addr in addrs {
        let mut target = *addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        loop {
            let attempt =
                tokio::time::timeout(pause * 20, tokio::net::TcpStream::connect(target)).await;
            if matches!(attempt, Ok(Ok(_))) {
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
            if crate::metrics::METRICS.in_flight.get() == 0 {
                idle_checks += 1;
                if idle_checks >= 2 {
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
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only via the admin API: {e}");
                None
            }
        };
        let server = r.config.load().server.clone();
        let listeners: Vec<SocketAddr> = [Some(server.listen), server.admin_listen]
            .into_iter()
            .flatten()
            .collect();
        // Startup (the first DNS refresh, then READY=1 once every listener accepts) runs as one
        // branch of the loop below, never before it: a SIGTERM that arrives while it waits must
        // still stop the process promptly. (It did not: Pingora closes the listeners on SIGTERM,
        // so a readiness probe still polling then could only give up after READY_WITHIN, 10 s.)
        let startup = async {
            r.resolver.refresh(&r.config.load()).await;
            if listeners_accept(&listeners, READY_WITHIN).await {
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
