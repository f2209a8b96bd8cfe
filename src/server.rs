//! The process: a Pingora server with the gateway listener and the background services (config
//! reload on SIGHUP, DNS refresh). Pingora owns the signals it knows (SIGTERM graceful stop,
//! SIGQUIT graceful upgrade, SIGINT fast stop); SIGHUP is ours.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::{self, Config};
use crate::proxy::Gateway;
use crate::resolver::{Resolver, REFRESH};

/// How to start: `upgrade` takes the listening sockets over from a running instance.
pub struct RunOptions {
    pub config_path: PathBuf,
    pub upgrade: bool,
    pub daemon: bool,
}

pub fn run(cfg: Config, opts: RunOptions) -> ! {
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(2),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        pid_file: cfg.server.pid_file.clone(),
        daemon: opts.daemon,
        ..ServerConf::default()
    };
    conf.daemon_wait_for_ready = opts.daemon;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listen = cfg.server.listen.to_string();
    let config = Arc::new(ArcSwap::from_pointee(cfg));
    let resolver = Arc::new(Resolver::new());

    let mut proxy = http_proxy_service(
        &server.configuration,
        Gateway::new(config.clone(), resolver.clone()),
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);

    server.add_service(background_service(
        "tollgate-control",
        Control {
            config,
            resolver,
            path: opts.config_path,
        },
    ));
    log::info!(
        "tollgate {} listening on {listen}",
        env!("CARGO_PKG_VERSION")
    );
    server.run_forever()
}

/// Config reloads and DNS refreshes, on one background task.
struct Control {
    config: Arc<ArcSwap<Config>>,
    resolver: Arc<Resolver>,
    path: PathBuf,
}

impl Control {
    async fn reload(&self) {
        match config::load_file(&self.path) {
            Ok(new) => {
                // Resolve the new hosts before requests can need them.
                self.resolver.refresh(&new).await;
                self.config.store(Arc::new(new));
                log::info!("configuration reloaded from {}", self.path.display());
            }
            Err(e) => log::error!("reload rejected, the old configuration keeps serving:\n{e}"),
        }
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.resolver.refresh(&self.config.load()).await;
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
                    self.reload().await
                }
                _ = tick.tick() => self.resolver.refresh(&self.config.load()).await,
            }
        }
    }
}
