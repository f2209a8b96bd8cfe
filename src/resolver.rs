//! Upstream name resolution, kept off the request path.
//!
//! `HttpPeer::new` with a host name runs a blocking `getaddrinfo` on the worker thread and
//! panics when it fails. Tollgate never gives it a name: provider hosts are resolved at start,
//! on every reload and every [`REFRESH`] by a background task into an `ArcSwap` map, and
//! `upstream_peer` only reads that map. A host missing from it (a provider added by a reload a
//! moment ago) is resolved once asynchronously (`tokio::net::lookup_host`, which runs the
//! lookup on the blocking pool, not the worker); a failure is a 502, never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::engine::config::Config;

pub const REFRESH: Duration = Duration::from_secs(30);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Resolver {
    /// `host:port` → addresses.
    cache: ArcSwap<HashMap<String, Arc<[SocketAddr]>>>,
    /// Spreads requests over a host's addresses.
    next: AtomicUsize,
}

fn cache_key(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

impl Resolver {
    pub fn new() -> Resolver {
        Resolver::default()
    }

    /// The address to connect to. IP literals need no lookup.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some(addrs) = self.cache.load().get(&cache_key(host, port)) {
            if !addrs.is_empty() {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
                return Ok(addrs[i]);
            }
        }
        let addrs = lookup(host, port).await?;
        let first = addrs[0];
        self.store(host, port, addrs);
        Ok(first)
    }

    fn store(&self, host: &str, port: u16, addrs: Arc<[SocketAddr]>) {
        let key = cache_key(host, port);
        self.cache.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.insert(key.clone(), addrs.clone());
            m
        });
    }

    /// Resolve every provider host of `cfg`; keeps the old addresses of a host whose lookup
    /// fails this time (a passing DNS fault must not take a provider away).
    pub async fn refresh(&self, cfg: &Config) {
        for p in &cfg.providers {
            if p.base.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            match lookup(&p.base.host, p.base.port).await {
                Ok(addrs) => self.store(&p.base.host, p.base.port, addrs),
                Err(e) => log::warn!("provider {}: {e}", p.name),
            }
        }
    }
}

async fn lookup(host: &str, port: u16) -> Result<Arc<[SocketAddr]>, String> {
    let fut = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(LOOKUP_TIMEOUT, fut).await {
        Ok(Ok(it)) => {
            let v: Vec<SocketAddr> = it.collect();
            if v.is_empty() {
                Err(format!("{host} resolved to no address"))
            } else {
                Ok(v.into())
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!("resolving {host} timed out")),
    }
}
