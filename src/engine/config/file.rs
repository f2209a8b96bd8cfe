//! The TOML file schema, exactly as users write it. Strict: an unknown field is an error (a
//! typo must never be silently ignored in a file that guards money). `Spanned` fields let the
//! validator name the line and column of a bad value.

use std::collections::BTreeMap;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub store: FileStore,
    /// Fleet mode: several instances on one Redis (SPEC "Fleet").
    pub fleet: Option<Spanned<FileFleet>>,
    /// The response cache's memory (SPEC "Response cache").
    pub cache: Option<FileCache>,
    #[serde(default)]
    pub providers: Vec<Spanned<FileProvider>>,
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
    /// Price files (like `conf/prices.toml`) merged under this file's own `[prices]`, which
    /// win on a name both give. Paths are relative to this file.
    #[serde(default)]
    pub price_files: Vec<Spanned<String>>,
    #[serde(default)]
    pub prices: BTreeMap<Spanned<String>, Spanned<FilePrice>>,
    /// Budgets shared by several projects (SPEC "Budgets everywhere the money is").
    #[serde(default)]
    pub teams: Vec<Spanned<FileTeam>>,
    #[serde(default)]
    pub projects: Vec<Spanned<FileProject>>,
}

/// A file named in `price_files`: prices only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrices {
    #[serde(default)]
    pub prices: BTreeMap<Spanned<String>, Spanned<FilePrice>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub admin_token_env: Option<Spanned<String>>,
    /// The console's read-only token (SPEC "Console and reports").
    pub viewer_token_env: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub threads: Option<Spanned<i64>>,
    pub grace_period_s: Option<Spanned<i64>>,
    /// Pingora's graceful-upgrade socket and pid file (see README "Operating Tollgate").
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    /// Consecutive failed attempts that open a provider's circuit (README "Resilient routing").
    pub circuit_failures: Option<Spanned<i64>>,
    /// How long an open circuit skips its provider (milliseconds).
    pub circuit_cooldown_ms: Option<Spanned<i64>>,
    /// TLS on the gateway listener: the certificate chain and its private key (PEM files).
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub path: Option<Spanned<String>>,
    /// How often the ledger batcher writes to SQLite (milliseconds).
    pub flush_interval_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFleet {
    pub redis_url_env: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
    pub hold_ttl_s: Option<Spanned<i64>>,
    /// Deadline of one Redis call (milliseconds).
    pub timeout_ms: Option<Spanned<i64>>,
    /// How long admission stays closed after Redis lost its data, while the instances report
    /// their ledgers (milliseconds).
    pub rebuild_grace_ms: Option<Spanned<i64>>,
    /// Leases (budget slices admitted locally); `false`: a Redis hold per request.
    pub leases: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub base_url: Spanned<String>,
    pub api_key_env: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<i64>>,
    pub read_timeout_ms: Option<Spanned<i64>>,
    /// Anthropic only: the `anthropic-version` header added when the client sent none.
    pub anthropic_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTarget {
    pub provider: Spanned<String>,
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub prefix: Spanned<String>,
    pub provider: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<FileTarget>>>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrice {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub max_output_tokens: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBudget {
    pub limit_usd: f64,
    pub period: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

/// `[[teams]]`: one budget (any number of windows) shared by the projects naming the team.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTeam {
    pub id: Spanned<String>,
    pub budget: Option<Spanned<FileBudget>>,
    #[serde(default)]
    pub budgets: Vec<Spanned<FileBudget>>,
}

/// One `keys` entry: the key as a string (plaintext or `sha256:<hex>`), or a table that also
/// names the key, gives it a budget and an expiry.
#[derive(Debug)]
pub enum FileKey {
    Plain(String),
    Table(FileKeyTable),
}

/// `{ key = "…", name = "ci", budget = {…}, expires = "2027-03-31T00:00:00Z" }`. `key` is
/// optional here only so that its absence is reported by the validator, with its place and
/// beside every other problem, instead of stopping the parse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyTable {
    pub key: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub budget: Option<Spanned<FileBudget>>,
    /// A string, or a TOML date-time written unquoted; the validator wants RFC 3339 of either.
    pub expires: Option<Spanned<toml::Value>>,
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input and so loses
/// the spans of the table's fields, which the validator needs to name a bad value's place.
impl<'de> Deserialize<'de> for FileKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FileKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a key string, or a table like { key = \"…\", name = \"ci\", budget = {…}, expires = \"…\" }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FileKey, E> {
                Ok(FileKey::Plain(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FileKey, A::Error> {
                FileKeyTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FileKey::Table)
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProject {
    pub id: Spanned<String>,
    /// The team whose budget this project's spend also counts against.
    pub team: Option<Spanned<String>>,
    #[serde(default)]
    pub keys: Vec<Spanned<FileKey>>,
    /// One window; `budgets` gives more (both may be set: `budget` is the first window).
    pub budget: Option<Spanned<FileBudget>>,
    #[serde(default)]
    pub budgets: Vec<Spanned<FileBudget>>,
    /// Applies to each end user of the project separately.
    pub user_budget: Option<Spanned<FileBudget>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    pub allow_models: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub deny_models: Vec<Spanned<String>>,
    pub max_tokens: Option<Spanned<i64>>,
    #[serde(default)]
    pub block_secrets: bool,
    #[serde(default)]
    pub block_patterns: Vec<Spanned<String>>,
    pub unpriced: Option<Spanned<String>>,
    /// Opt in to the response cache.
    pub cache: Option<Spanned<FileProjectCache>>,
    /// Tell the client what each call cost (`usage.cost`, `usage.duration_ms`).
    #[serde(default)]
    pub report_cost: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    pub max_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProjectCache {
    pub ttl_s: Spanned<i64>,
}
