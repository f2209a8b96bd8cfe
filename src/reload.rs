//! Loading the configuration from disk and swapping it in: the shell side of `engine::config`.
//!
//! [`load_file`] does the I/O (the file, its included price files, the environment, the TLS
//! files) and hands it to the pure validator; [`Reloader`] re-reads the file on SIGHUP or
//! `POST /admin/reload`, and either swaps the new config (and the gateway's certificate) in
//! whole (arc-swap) or keeps the old one and says why.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::engine::config::{self, Config, TlsFiles};
use crate::ledger::Ledger;
use crate::resolver::Resolver;
use crate::tls::GatewayCert;

/// A validated configuration and the gateway's TLS certificate and key, when it names them
/// (loaded by the same validation that checked them, so the pair served is the pair checked).
pub struct Loaded {
    pub config: Config,
    pub tls: Option<Arc<CertifiedKey>>,
}

/// Read `path`, the process environment and the TLS files, then validate.
pub fn load_file(path: &std::path::Path) -> Result<Loaded, config::ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| config::ConfigErrors {
        file: name.clone(),
        errors: vec![config::ConfigError {
            file: None,
            line: None,
            col: None,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let read = |rel: &str| -> Result<(String, String), String> {
        let p = dir.join(rel);
        let shown = p.display().to_string();
        std::fs::read_to_string(&p)
            .map(|t| (shown, t))
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let loaded_tls = RefCell::new(None);
    let tls = |files: &TlsFiles| match crate::tls::load(files) {
        Ok(key) => {
            *loaded_tls.borrow_mut() = Some(key);
            Vec::new()
        }
        Err(problems) => problems,
    };
    let config = config::parse_with_files(&text, &name, &|k| std::env::var(k).ok(), &read, &tls)?;
    Ok(Loaded {
        config,
        tls: loaded_tls.into_inner(),
    })
}

/// Re-reads the config file: validates it fully, resolves its hosts, loads accounts for new
/// projects, then swaps it in whole, with the gateway's certificate. An invalid file changes
/// nothing.
pub struct Reloader {
    pub config: Arc<ArcSwap<Config>>,
    pub resolver: Arc<Resolver>,
    pub ledger: Arc<Ledger>,
    pub path: PathBuf,
    /// The gateway listener's certificate when it serves HTTPS (fixed at start).
    pub tls: Option<Arc<GatewayCert>>,
}

impl Reloader {
    pub async fn reload(&self) -> Result<(), String> {
        crate::notify::reloading();
        let result = match load_file(&self.path) {
            Ok(Loaded { config: new, tls }) => {
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
                self.swap_certificate(tls, &snapshot);
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
        if let Some(m) = crate::metrics::get() {
            m.reloads.with_label_values(&[label]).inc();
        }
        // Accepted or rejected, a configuration serves again.
        crate::notify::ready();
        result
    }

    /// The new file's certificate and key serve the next handshakes. Whether the listener
    /// speaks TLS is fixed at start: a file that turns TLS on or off says so in the log.
    fn swap_certificate(&self, key: Option<Arc<CertifiedKey>>, new: &Config) {
        match (&self.tls, key, &new.server.tls) {
            (Some(cert), Some(key), Some(files)) => {
                cert.replace(key);
                log::info!(
                    "gateway TLS certificate re-read from {} (key {})",
                    files.cert.display(),
                    files.key.display()
                );
            }
            (Some(_), _, _) => log::warn!(
                "tls_cert and tls_key are no longer set, but the gateway listener serves \
                 HTTPS with its certificate until the next start"
            ),
            (None, Some(_), _) => log::warn!(
                "tls_cert and tls_key are set, but the gateway listener stays plain HTTP \
                 until the next start"
            ),
            (None, None, _) => {}
        }
    }
}
