//! Tollgate: an LLM egress gateway on Pingora.
//!
//! # Layout
//!
//! The tree shows the one idea: a pure engine that decides, and a thin shell that does I/O.
//!
//! `engine` — the pure core. No pingora, tokio, rusqlite, file system, network, environment
//! or clock (callers pass `now`); `tests/engine_is_pure.rs` fails if a file there names one.
//! - `engine::config`: TOML schema → validated runtime `Config`, one validator per section.
//! - `engine::admission`: facts + config + balances → the route, the worst case and the
//!   upstream body, or the block — every rule of `request_filter`, unit-tested.
//! - `engine::{auth, request, provider, route, policy, pricing, budget, circuit, time}`: keys,
//!   request fields and rewrites, wire formats, routes and attempt plans, model rules, prices,
//!   budget arithmetic, the circuit breaker's state machine, the civil calendar.
//! - `engine::{usage, prompt, secrets}`: the response usage scanner (and the cost members a
//!   project's `report_cost` adds to the usage), the prompt walk and its token bound, the
//!   credential detectors.
//! - `engine::error`: `GatewayError`, everything Tollgate answers itself, in both SDK shapes.
//!
//! The shell — Pingora glue, shared state, the process:
//! - `proxy`: the `ProxyHttp` phase table (`mod.rs`), the per-request state (`ctx.rs`), the
//!   retry/fallback state machine (`attempts.rs`), finishing a request (`finish.rs`: usage →
//!   cost → settle → record → metrics), error responses (`respond.rs`), body replay.
//! - `ledger`: live spend, reservations and freezes, with the SQLite store and its batcher.
//! - `reload`: file → config → `ArcSwap::store`, or keep the old one and say why.
//! - `server`: the Pingora server, listeners and background services; `tls`: the gateway
//!   listener's certificate (reading and checking the PEM files, the resolver a reload swaps).
//! - `admin`: the admin listener; `metrics`: the Prometheus families; `health`: the registry
//!   of circuit breakers; `ratelimit`: rpm and tpm; `resolver`: provider DNS off the request
//!   path; `notify`: systemd readiness; `clock`: the one reader of the wall clock.
//!
//! Modules are private: the binaries, tests and benches use only what is re-exported below,
//! so rustc reports dead code anywhere else.

mod access_log;
mod admin;
mod cache;
mod clock;
mod engine;
mod handover;
mod health;
mod ledger;
mod metrics;
mod notify;
mod proxy;
mod ratelimit;
mod reload;
mod resolver;
mod server;
mod tls;

pub use engine::auth::{hex, key_digest};
pub use engine::error::push_json_string;
pub use notify::monotonic_usec;

/// What `load-tests/scan_bench.rs` measures: the prompt walk and the secret detectors.
pub mod scan {
    pub use crate::engine::prompt::{for_each_text, prompt_tokens_upper_bound, Format};
    pub use crate::engine::secrets::find_secret;
}

/// What `load-tests/cache_bench.rs` measures: the response cache's key and its memory.
pub mod cache_parts {
    pub use crate::cache::{Entry, ResponseCache};
    pub use crate::engine::cache::key;
    pub use crate::engine::pricing::Nanos;
    pub use crate::engine::provider::Endpoint;
}

/// `tollgate check`: the summary line of a valid config, or every error with its place.
pub fn check(path: &std::path::Path) -> Result<String, String> {
    let c = reload::load_file(path).map_err(|e| e.to_string())?.config;
    let mut out = format!(
        "{}: OK ({} providers, {} routes, {} prices, {} projects, {} keys)",
        path.display(),
        c.providers.len(),
        c.routes.routes().len(),
        c.prices.keys().count(),
        c.projects.len(),
        c.key_count()
    );
    if let Some(f) = &c.fleet {
        // Redis is not contacted: `check` validates the file; `serve` says if Redis is down.
        out.push_str(&format!(
            "\nfleet: instance {}, Redis URL from ${}, {}, holds expire after {} s",
            f.instance.as_deref().unwrap_or("<host name and port>"),
            f.redis_url_env,
            if f.leases {
                "leases"
            } else {
                "a Redis hold per request"
            },
            f.hold_ttl_s
        ));
    }
    Ok(out)
}

/// `tollgate serve`: load the config and run until stopped; the process exit code.
pub fn serve(path: std::path::PathBuf, upgrade: bool) -> Result<i32, String> {
    let loaded = reload::load_file(&path).map_err(|e| e.to_string())?;
    Ok(server::run(
        loaded,
        server::RunOptions {
            config_path: path,
            upgrade,
        },
    ))
}

/// `tollgate key new`: a fresh key from 20 random bytes, and its `sha256:` config form.
pub fn new_key() -> Result<(String, String), String> {
    let mut r = [0u8; 20];
    getrandom::getrandom(&mut r).map_err(|e| format!("no randomness available: {e}"))?;
    let key = engine::auth::new_key(&r);
    let digest = hex(&key_digest(key.as_bytes()));
    Ok((key, format!("sha256:{digest}")))
}
