//! The process: a Pingora server with the gateway listener, the admin listener and the
//! background services (config reload on SIGHUP, DNS refresh). Pingora owns the signals it
//! knows (SIGTERM graceful stop, SIGQUIT graceful upgrade, SIGINT fast stop); SIGHUP is ours.
//!
//! The ledger's store is opened before any service starts and flushed after Pingora has let
//! the requests in flight finish, so a graceful stop loses nothing. There is no daemon mode:
//! Pingora forks inside `run`, which would lose the store's writer thread; systemd runs
//! Tollgate in the foreground anyway.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, Config};
use crate::ledger::store::Store;
use crate::ledger::Ledger;
use crate::proxy::Gateway;
use crate::ratelimit::RateLimiter;
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

/// Re-reads the config file: validates it fully, resolves its hosts, loads accounts for new
/// projects, then swaps it in whole. An invalid file changes nothing.
pub struct Reloader {
    pub config: Arc<ArcSwap<Config>>,
    pub resolver: Arc<Resolver>,
    pub ledger: Arc<Ledger>,
    pub path: PathBuf,
}

impl Reloader {
    pub async fn reload(&self) -> Result<(), String> {
        let result = match config::load_file(&self.path) {
            Ok(new) => {
                self.resolver.refresh(&new).await;
                let snapshot = Arc::new(new);
                let (ledger, for_load) = (self.ledger.clone(), snapshot.clone());
                // Reading the store blocks: keep it off the async workers.
                match tokio::task::spawn_blocking(move || ledger.load(&for_load)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        log::error!(
                            "reload: cannot read the store, new projects start at zero spend: {e}"
                        )
                    }
                    Err(e) => log::error!("reload: store load task failed: {e}"),
                }
                self.config.store(snapshot);
                log::info!("configuration reloaded from {}", self.path.display());
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                log::error!("reload rejected, the old configuration keeps serving:\n{msg}");
                Err(msg)
            }
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        crate::metrics::METRICS
            .reloads
            .with_label_values(&[label])
            .inc();
        result
    }
}

/// SIGHUP reloads and DNS refreshes, on one background task.
struct Control {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let r = &self.reloader;
        r.resolver.refresh(&r.config.load()).await;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only via the admin API: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = r.reload().await;
                }
                _ = tick.tick() => r.resolver.refresh(&r.config.load()).await,
            }
        }
    }
}
