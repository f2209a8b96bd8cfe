//! The validated runtime configuration: what the gateway reads on every request. Built only by
//! the validator (`validate/`) from the file schema (`file.rs`), never deserialized directly,
//! so every value here has been checked. The defaults of every optional setting live here,
//! beside the types they fill, as `impl Default` and named constants; the validator takes them
//! from here and holds no literals of its own.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use foldhash::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::engine::auth::KeyDigest;
use crate::engine::budget::Budget;
use crate::engine::circuit::CircuitParams;
use crate::engine::policy::Glob;
use crate::engine::pricing::PriceTable;
use crate::engine::provider::{Provider, Secret};
use crate::engine::route::RouteTable;

/// `server.max_body_bytes` when unset: 4 MiB, the SPEC example's value.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// `providers[].connect_timeout_ms` when unset: no connection in time is a 502.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// `providers[].read_timeout_ms` when unset: a provider silent this long is a 504. Long,
/// because a model may think for a minute before its first token.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(120_000);
/// `providers[].anthropic_version` when unset: the header added when the client sent none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The admin token's value; `None` (variable unset) disables `/admin/*`.
    pub admin_token: Option<Secret>,
    pub admin_token_env: Option<String>,
    /// The read-only token (`viewer_token_env`): every GET of `/admin/*`, no action.
    pub viewer_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub threads: usize,
    pub grace_period_s: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Provider circuit breaker: `circuit_failures` and `circuit_cooldown_ms`.
    pub circuit: CircuitParams,
    /// `tls_cert` and `tls_key`: the gateway listener serves HTTPS only. `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// The gateway listener's certificate chain and private key, PEM files, as configured
/// (relative paths are relative to the working directory, like `store.path`). The validator
/// has had the shell read and check them ([`super::TlsCheck`]); the shell loads them again at
/// start and on every reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which file of the TLS pair a problem is about, so it is reported at that key's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPart {
    Cert,
    Key,
}

/// A problem the shell found reading or checking the TLS files. The message names a file
/// by its path, never by any of its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    pub part: TlsPart,
    pub message: String,
}

impl ServerConfig {
    /// `server.listen` when unset: loopback, so an unconfigured gateway is not reachable from
    /// the network.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
    pub const DEFAULT_THREADS: usize = 2;
    /// Seconds requests in flight get to finish on SIGTERM (SPEC "Stopping").
    pub const DEFAULT_GRACE_PERIOD_S: u64 = 30;
    /// Pingora's graceful-upgrade socket; under systemd, its RuntimeDirectory instead.
    pub const DEFAULT_UPGRADE_SOCK: &'static str = "/tmp/tollgate_upgrade.sock";
    /// Only read by Pingora's daemon mode, which Tollgate does not use.
    pub const DEFAULT_PID_FILE: &'static str = "/tmp/tollgate.pid";
}

/// Every optional `[server]` setting at its default; no admin listener, no admin token.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Self::DEFAULT_LISTEN,
            admin_listen: None,
            admin_token: None,
            admin_token_env: None,
            viewer_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            threads: Self::DEFAULT_THREADS,
            grace_period_s: Self::DEFAULT_GRACE_PERIOD_S,
            upgrade_sock: Self::DEFAULT_UPGRADE_SOCK.to_string(),
            pid_file: Self::DEFAULT_PID_FILE.to_string(),
            circuit: CircuitParams::default(),
            tls: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub flush_interval: Duration,
}

impl StoreConfig {
    /// Relative to the working directory, as README's first command expects.
    pub const DEFAULT_PATH: &'static str = "data/tollgate.db";
    /// How often the ledger batcher commits: at most this much is lost to a `kill -9`.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from(Self::DEFAULT_PATH),
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// `[fleet]`: several instances sharing budgets, limits and freezes on one Redis.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `redis://…` or `rediss://…`; may hold a password, so it is a [`Secret`].
    pub redis_url: Secret,
    pub redis_url_env: String,
    /// This instance's id in the fleet; `None`: the shell uses host name and gateway port.
    pub instance: Option<String>,
    pub hold_ttl_s: u32,
    pub timeout: Duration,
    pub rebuild_grace: Duration,
    /// Budget slices admitted locally (`true`), or a Redis hold per request (`false`).
    pub leases: bool,
}

impl FleetConfig {
    pub const DEFAULT_REDIS_URL_ENV: &'static str = "TOLLGATE_REDIS_URL";
    /// A hold whose instance vanished counts as spent after this long (SPEC).
    pub const DEFAULT_HOLD_TTL_S: u32 = 900;
    /// Redis on the same network answers in well under a millisecond; a call that takes this
    /// long is given up (its outcome is unknown, and handled as such: the request gets 503
    /// and its hold, if one was made, is released).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
    /// Instances poll the generation every second, so five seconds lets every live one report.
    pub const DEFAULT_REBUILD_GRACE: Duration = Duration::from_millis(5_000);
    pub const DEFAULT_LEASES: bool = false;
    /// The library's own bound on a hold's TTL.
    pub const MAX_HOLD_TTL_S: i64 = 7 * 86_400;
}

/// `[cache]`: the response cache's memory on this instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_bytes: u64,
}

impl CacheConfig {
    /// 256 MiB, the SPEC example's value.
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
    pub const MAX_MAX_BYTES: i64 = 64 * 1024 * 1024 * 1024;
    /// A project's `cache.ttl_s` at most: 30 days.
    pub const MAX_TTL_S: i64 = 30 * 86_400;
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// What to do with a model that has no price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unpriced {
    /// The default: a cost Tollgate cannot compute is a cost it cannot cap.
    #[default]
    Block,
    Allow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// One key of a project (SPEC "Budgets everywhere the money is": keys as tables). The key
/// itself is only in `Config`'s digest index; this is what records and budgets need of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectKey {
    /// On records and reports: as configured, else the first 8 hex digits of the key's SHA-256.
    pub name: String,
    /// The key's own budget, besides its project's (`None`: only the project's apply).
    pub budget: Option<Budget>,
    /// Unix seconds: from then on the key gets 401 `key_expired`.
    pub expires: Option<i64>,
}

/// `[[teams]]`: a budget shared by the projects that name the team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    /// Its windows (`budget = {…}` and `budgets = […]` together); empty: spend is only recorded.
    pub budgets: Vec<Budget>,
}

/// Index into `Config::teams`.
pub type TeamIdx = usize;

#[derive(Clone, Debug)]
pub struct Project {
    pub id: String,
    /// Every window of the project's own budget: `budget = {…}` first, then `budgets = […]`;
    /// at most one per period. Empty: no limit (spend is still recorded).
    pub budgets: Vec<Budget>,
    pub team: Option<TeamIdx>,
    /// Its keys, in the order the file lists them (`Config` maps each digest to one of these).
    pub keys: Vec<ProjectKey>,
    /// Applies to each end user of the project separately.
    pub user_budget: Option<Budget>,
    pub rate_limit: Option<RateLimit>,
    /// `None`: every routable model is allowed.
    pub allow_models: Option<Vec<Glob>>,
    pub deny_models: Vec<Glob>,
    pub max_tokens: Option<u64>,
    pub block_secrets: bool,
    /// Every `block_patterns` entry as one alternation (see the projects validator).
    pub block_patterns: Option<Regex>,
    pub unpriced: Unpriced,
    /// The response cache: how long an answer is served again (`None`: no cache).
    pub cache_ttl: Option<Duration>,
    /// Responses carry what the call cost and how long it took, in their usage object
    /// (SPEC "Console and reports"). Off by default: the provider's bytes are forwarded as
    /// they came.
    pub report_cost: bool,
}

impl Project {
    /// The window the project's own account is kept in when one number must stand for it (the
    /// fleet's snapshot, the budget gauge's period): its first window, else a calendar month.
    pub fn primary_period(&self) -> crate::engine::budget::Period {
        self.budgets
            .first()
            .map_or(crate::engine::budget::Period::Month, |b| b.period)
    }
}

/// Index into `Config::projects`.
pub type ProjectIdx = usize;

/// One validated configuration. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// `None`: a single instance on its own ledger.
    pub fleet: Option<FleetConfig>,
    pub cache: CacheConfig,
    pub providers: Vec<Provider>,
    pub routes: RouteTable,
    pub prices: PriceTable,
    pub projects: Vec<Project>,
    pub teams: Vec<Team>,
    /// Each key's digest → its project and its place in the project's `keys`.
    pub(super) keys: HashMap<KeyDigest, (ProjectIdx, usize)>,
    /// Each project's accounts but the end user's, by project index (built with the config,
    /// so a request does not build account names).
    pub(super) charged: Vec<crate::engine::accounts::Charged>,
}

impl Config {
    /// The project whose key has this SHA-256 digest. The digest is compared again in constant
    /// time, so a lookup reveals nothing about how close a wrong key came.
    pub fn project_for_digest(&self, digest: &KeyDigest) -> Option<(ProjectIdx, usize)> {
        use subtle::ConstantTimeEq;
        let (stored, idx) = self.keys.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(*idx)
    }

    pub fn project_index(&self, id: &str) -> Option<ProjectIdx> {
        self.projects.iter().position(|p| p.id == id)
    }

    /// Tests name providers; the gateway only ever holds indexes from the route table.
    #[cfg(test)]
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    /// The accounts of `project` that [`crate::engine::accounts::accounts`] starts from.
    pub fn charged(&self, project: ProjectIdx) -> Option<&crate::engine::accounts::Charged> {
        self.charged.get(project)
    }

    /// Builds [`Config::charged`]: once, when the config is made.
    pub(super) fn with_charged(mut self) -> Config {
        self.charged = (0..self.projects.len())
            .map(|i| crate::engine::accounts::Charged::of(&self, i))
            .collect();
        self
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}
