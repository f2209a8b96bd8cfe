//! Tollgate: an LLM egress gateway on Pingora.
//!
//! # Layout
//!
//! Core (no pingora, no tokio, no I/O; unit-tested without a socket):
//! - [`config`]: TOML schema → validated runtime [`config::Config`] with derived indexes.
//! - [`error`]: [`error::GatewayError`], the one enum of everything Tollgate answers itself.
//! - [`auth`]: which header carries a project key; SHA-256 digests compared in constant time.
//! - [`request`]: the few request fields Tollgate needs, and byte-level body rewrites.
//! - [`provider`]: providers, base URLs, endpoints and their wire formats.
//! - [`route`]: model → route by longest prefix; candidate providers in order; attempt plans.
//! - [`policy`]: model globs and the other controls.
//! - [`pricing`]: prices normalised to integers; usage → cost.
//! - [`budget`]: periods and budgets.
//! - [`usage`]: the incremental response scanner that finds token usage.
//! - [`prompt`]: the text a user sent, for every request format; prompt token upper bounds.
//! - [`secrets`]: the built-in credential detectors behind `block_secrets`.
//! - [`health`]: the per-provider circuit breaker (pure state machine, plus its small registry).
//!
//! Shell (Pingora glue, shared state and process):
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/admin/*`.
//! - [`metrics`]: the Prometheus families, with bounded labels.
//! - [`notify`]: systemd readiness (`sd_notify`): ready, reloading, stopping.
//! - [`proxy`]: the `ProxyHttp` implementation and the per-request context.
//! - [`ledger`]: live per-project spend, reservations, freezes; the SQLite store and its batcher.
//! - [`ratelimit`]: per-project rpm and tpm.
//! - [`resolver`]: provider DNS, off the request path.
//! - [`server`]: the Pingora server, listeners and background services.

pub mod admin;
pub mod auth;
pub mod budget;
pub mod config;
pub mod error;
pub mod health;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod pricing;
pub mod prompt;
pub mod provider;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod resolver;
pub mod route;
pub mod secrets;
pub mod server;
pub mod usage;
