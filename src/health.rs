//! Provider health: the process-wide registry of circuit breakers, its clock, and the
//! `tollgate_provider_up` gauge.
//!
//! The breaker itself is the engine's [`crate::engine::circuit::Breaker`]; this module holds
//! one per provider name behind its own mutex (held for a few instructions, never across an
//! await). [`HEALTH`] is the registry the proxy and the admin listener share; its clock is
//! [`now_ms`].

use foldhash::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use once_cell::sync::Lazy;

use crate::engine::circuit::{Breaker, CircuitParams, State};

/// A provider's breaker as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub consecutive_failures: u32,
}

/// Breakers by provider name. Providers come and go with reloads; a name keeps its breaker.
#[derive(Default)]
pub struct Registry {
    breakers: RwLock<HashMap<String, Arc<Mutex<Breaker>>>>,
}

impl Registry {
    fn get(&self, name: &str) -> Arc<Mutex<Breaker>> {
        if let Some(b) = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return b.clone();
        }
        self.breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let b = self.get(name);
        let mut g = b.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    pub fn available(&self, name: &str, now: u64, p: CircuitParams) -> bool {
        self.with(name, |b| b.available(now, p))
    }

    pub fn try_acquire(&self, name: &str, now: u64, p: CircuitParams) -> bool {
        self.with(name, |b| b.try_acquire(now, p))
    }

    pub fn on_success(&self, name: &str) {
        self.with(name, |b| b.on_success())
    }

    pub fn on_failure(&self, name: &str, now: u64, p: CircuitParams) -> bool {
        self.with(name, |b| b.on_failure(now, p))
    }

    pub fn snapshot(&self, name: &str, now: u64) -> Snapshot {
        self.with(name, |b| Snapshot {
            state: b.state(now),
            consecutive_failures: b.consecutive_failures(),
        })
    }
}

pub static HEALTH: Lazy<Registry> = Lazy::new(Registry::default);

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Milliseconds on the process's monotonic clock (the time [`HEALTH`] runs on).
pub fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Set `tollgate_provider_up{provider}` for every configured provider (1 closed or half-open,
/// 0 open) and drop the series of providers a reload removed.
pub fn publish_up(cfg: &crate::engine::config::Config) {
    static PUBLISHED: Lazy<Mutex<Vec<String>>> = Lazy::new(|| Mutex::new(Vec::new()));
    let Some(m) = crate::metrics::get() else {
        return;
    };
    let gauge = &m.provider_up;
    let now = now_ms();
    let mut names = Vec::with_capacity(cfg.providers.len());
    for p in &cfg.providers {
        let up = !matches!(HEALTH.snapshot(&p.name, now).state, State::Open { .. });
        gauge
            .with_label_values(&[p.name.as_str()])
            .set(i64::from(up));
        names.push(p.name.clone());
    }
    let mut published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
    for gone in published.iter().filter(|n| !names.contains(n)) {
        let _ = gauge.remove_label_values(&[gone.as_str()]);
    }
    *published = names;
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: CircuitParams = CircuitParams {
        failures: 3,
        cooldown_ms: 1000,
    };

    #[test]
    fn the_registry_keeps_one_breaker_per_name() {
        let r = Registry::default();
        for t in 0..3 {
            r.on_failure("a", t, P);
        }
        assert!(!r.available("a", 10, P));
        assert!(r.available("b", 10, P));
        assert_eq!(r.snapshot("a", 10).consecutive_failures, 3);
        assert!(r.try_acquire("a", 2000, P));
        r.on_success("a");
        assert_eq!(r.snapshot("a", 2001).state, State::Closed);
    }
}
