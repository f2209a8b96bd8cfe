//! The pure engine: everything that decides. Parsing a request, matching a route, pricing,
//! budget arithmetic, policy, the circuit breaker's state machine and scanning a response for
//! usage are plain functions over values here.
//!
//! Nothing in this folder imports pingora, tokio, rusqlite or redis, touches the file system,
//! the network or the environment, reads a clock (callers pass `now`), or names a shell
//! module; `tests/engine_is_pure.rs` fails the build if one does. So every rule here is
//! unit-tested in microseconds without a socket, and the shell (`proxy`, `ledger`, `server`,
//! …) is glue that reads facts, calls in, and acts on what comes out.

pub mod accounts;
pub mod admission;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod circuit;
pub mod config;
pub(crate) mod cursor;
pub mod error;
pub mod policy;
pub mod pricing;
pub mod prompt;
pub mod provider;
pub mod request;
pub mod route;
pub mod secrets;
pub mod time;
pub mod usage;
