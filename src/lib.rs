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
//! - [`route`]: model → route by longest prefix; candidate providers in order.
//! - [`policy`]: model globs and the other controls.
//! - [`pricing`]: prices normalised to integers; usage → cost.
//! - [`budget`]: periods and budgets.
//! - [`usage`]: the incremental response scanner that finds token usage.
//!
//! Shell (Pingora glue and process):
//! - `proxy`: the `ProxyHttp` implementation and the per-request context.
//! - `server`: the Pingora server, listeners and background services.

pub mod auth;
pub mod budget;
pub mod config;
pub mod error;
pub mod policy;
pub mod pricing;
pub mod provider;
pub mod proxy;
pub mod request;
pub mod resolver;
pub mod route;
pub mod server;
pub mod usage;
