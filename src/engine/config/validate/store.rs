//! `[store]`: where the SQLite ledger lives and how often its batcher commits.

use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use crate::engine::config::file::FileStore;
use crate::engine::config::StoreConfig;

impl Validator<'_> {
    pub(super) fn store(&mut self, s: &FileStore) -> Option<StoreConfig> {
        let d = StoreConfig::default();
        let path = match &s.path {
            Some(p) if p.get_ref().is_empty() => {
                self.err(Some(p.span()), "store.path", "must not be empty");
                None
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => Some(d.path),
        };
        let flush_interval = match &s.flush_interval_ms {
            Some(v) => self
                .positive(v, "store.flush_interval_ms", 60_000)
                .map(Duration::from_millis),
            None => Some(d.flush_interval),
        };
        Some(StoreConfig {
            path: path?,
            flush_interval: flush_interval?,
        })
    }
}
