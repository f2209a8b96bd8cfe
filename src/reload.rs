//! Loading the configuration from disk and swapping it in: the shell side of `engine::config`.
//!
//! [`load_file`] does the I/O (the file, its included price files, the environment) and hands
//! it to the pure validator; [`Reloader`] re-reads the file on SIGHUP or `POST /admin/reload`,
//! and either swaps the new config in whole (arc-swap) or keeps the old one and says why.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::engine::config::{self, Config};
use crate::ledger::Ledger;
use crate::resolver::Resolver;

/// Read `path` and the process environment, then [`parse`].
pub fn load_file(path: &std::path::Path) -> Result<Config, config::ConfigErrors> {
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
    config::parse_with_files(&text, &name, &|k| std::env::var(k).ok(), &read)
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
        crate::notify::reloading();
        let result = match load_file(&self.path) {
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
        if let Some(m) = crate::metrics::get() {
            m.reloads.with_label_values(&[label]).inc();
        }
        // Accepted or rejected, a configuration serves again.
        crate::notify::ready();
        result
    }
}
