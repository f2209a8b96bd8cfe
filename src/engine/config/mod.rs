//! Configuration: the TOML file (`file.rs`, strict serde schema) → a validated runtime
//! [`Config`] with its derived indexes (key digest → project, route table, price table,
//! compiled patterns). Validation collects *every* problem, each with its place in the file
//! (`path:line:col: field: message`), so one `tollgate check` run shows them all.
//!
//! Engine module: no pingora, no tokio, no I/O. The shell's `reload::load_file` reads the file,
//! its included price files and the process environment and hands them to [`parse_with_files`].

mod file;

use core::net::SocketAddr;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::RegexSet;

use crate::engine::auth::{key_digest, KeyDigest};
use crate::engine::budget::{Budget, Period};
use crate::engine::policy::Glob;
use crate::engine::pricing::{per_mtok_to_pico, Nanos, Price, PriceTable};
use crate::engine::provider::{BaseUrl, Provider, ProviderKind, Secret, WireHeaders};
use crate::engine::route::{Route, RouteTable, Target};
use file::FileConfig;

pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The admin token's value; `None` (variable unset) disables `/admin/*`.
    pub admin_token: Option<Secret>,
    pub admin_token_env: Option<String>,
    pub max_body_bytes: usize,
    pub threads: usize,
    pub grace_period_s: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Provider circuit breaker: `circuit_failures` and `circuit_cooldown_ms`.
    pub circuit: crate::engine::circuit::CircuitParams,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub flush_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpriced {
    Block,
    Allow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Project {
    pub id: String,
    pub budget: Option<Budget>,
    pub rate_limit: Option<RateLimit>,
    /// `None`: every routable model is allowed.
    pub allow_models: Option<Vec<Glob>>,
    pub deny_models: Vec<Glob>,
    pub max_tokens: Option<u64>,
    pub block_secrets: bool,
    pub block_patterns: Option<RegexSet>,
    pub unpriced: Unpriced,
}

/// Index into `Config::projects`.
pub type ProjectIdx = usize;

/// One validated configuration. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: String,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub providers: Vec<Provider>,
    pub routes: RouteTable,
    pub prices: PriceTable,
    pub projects: Vec<Project>,
    keys: HashMap<KeyDigest, ProjectIdx>,
}

impl Config {
    /// The project whose key has this SHA-256 digest. The digest is compared again in constant
    /// time, so a lookup reveals nothing about how close a wrong key came.
    pub fn project_for_digest(&self, digest: &KeyDigest) -> Option<ProjectIdx> {
        use subtle::ConstantTimeEq;
        let (stored, idx) = self.keys.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(*idx)
    }

    pub fn project_index(&self, id: &str) -> Option<ProjectIdx> {
        self.projects.iter().position(|p| p.id == id)
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Set when the problem is in an included price file rather than the main file.
    pub file: Option<String>,
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// Where in the schema, e.g. `routes[1].provider`.
    pub field: String,
    pub message: String,
}

/// Every problem of one file, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in the configuration",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            let file = e.file.as_deref().unwrap_or(&self.file);
            match (e.line, e.col) {
                (Some(l), Some(c)) => write!(f, "  {file}:{l}:{c}: ")?,
                _ => write!(f, "  {file}: ")?,
            }
            if e.field.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.field, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A reader of included files: relative path → (name to show in errors, text).
pub type FileReader<'a> = &'a dyn Fn(&str) -> Result<(String, String), String>;

/// Validate a config text. `env` answers environment lookups (injected so tests need no
/// process-global state).
pub fn parse(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    parse_with_files(text, file_name, env, &|p| {
        Err(format!("cannot read {p}: no file access here"))
    })
}

/// [`parse`], with `read` supplying the files named in `price_files`.
pub fn parse_with_files(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: FileReader,
) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        text,
        errors: Vec::new(),
    };
    let raw: FileConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, col) = match e.span() {
                Some(s) => v.line_col(s.start),
                None => (None, None),
            };
            return Err(ConfigErrors {
                file: file_name.to_string(),
                errors: vec![ConfigError {
                    file: None,
                    line,
                    col,
                    field: String::new(),
                    message: e.message().trim().to_string(),
                }],
            });
        }
    };
    let included = v.price_files(&raw, read);
    let cfg = v.build(raw, file_name, env, included);
    if v.errors.is_empty() {
        if let Some(cfg) = cfg {
            return Ok(cfg);
        }
    }
    Err(ConfigErrors {
        file: file_name.to_string(),
        errors: v.errors,
    })
}

struct Validator<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

type Span = std::ops::Range<usize>;

impl Validator<'_> {
    fn line_col(&self, offset: usize) -> (Option<usize>, Option<usize>) {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (Some(line), Some(col))
    }

    fn err(&mut self, span: Option<Span>, field: impl Into<String>, message: impl Into<String>) {
        let (line, col) = match span {
            Some(s) => self.line_col(s.start),
            None => (None, None),
        };
        self.errors.push(ConfigError {
            file: None,
            line,
            col,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A positive integer within `max`, or an error naming the field.
    fn positive(&mut self, v: &toml::Spanned<i64>, field: &str, max: i64) -> Option<u64> {
        let n = *v.get_ref();
        if n <= 0 || n > max {
            self.err(
                Some(v.span()),
                field,
                format!("must be between 1 and {max}, got {n}"),
            );
            None
        } else {
            Some(n as u64)
        }
    }

    fn addr(&mut self, v: &toml::Spanned<String>, field: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    Some(v.span()),
                    field,
                    format!(
                        "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Prices from every file in `price_files`, in order (a later file wins on a shared name);
    /// their problems are reported against their own file and line.
    fn price_files(&mut self, raw: &FileConfig, read: FileReader) -> Vec<(String, Price)> {
        let mut out: Vec<(String, Price)> = Vec::new();
        for (i, f) in raw.price_files.iter().enumerate() {
            let (shown, text) = match read(f.get_ref()) {
                Ok(x) => x,
                Err(m) => {
                    self.err(Some(f.span()), format!("price_files[{i}]"), m);
                    continue;
                }
            };
            let mut sub = Validator {
                text: &text,
                errors: Vec::new(),
            };
            match toml::from_str::<file::FilePrices>(&text) {
                Ok(p) => {
                    let fake = FileConfig {
                        server: Default::default(),
                        store: Default::default(),
                        providers: vec![],
                        routes: vec![],
                        price_files: vec![],
                        prices: p.prices,
                        projects: vec![],
                    };
                    for (k, v) in sub.prices(&fake) {
                        out.retain(|(o, _)| *o != k);
                        out.push((k, v));
                    }
                }
                Err(e) => {
                    let span = e.span();
                    sub.err(span, "", e.message().trim());
                }
            }
            for mut e in sub.errors {
                e.file = Some(shown.clone());
                self.errors.push(e);
            }
        }
        out
    }

    fn build(
        &mut self,
        raw: FileConfig,
        file_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
        included: Vec<(String, Price)>,
    ) -> Option<Config> {
        let server = self.server(&raw, env);
        let store = self.store(&raw);
        let providers = self.providers(&raw, env);
        let names: Vec<&str> = raw
            .providers
            .iter()
            .map(|p| p.get_ref().name.get_ref().as_str())
            .collect();
        let routes = self.routes(&raw, &names);
        let mut prices = included;
        for (k, v) in self.prices(&raw) {
            prices.retain(|(o, _)| *o != k);
            prices.push((k, v));
        }
        let (projects, keys) = self.projects(&raw);
        Some(Config {
            source: file_name.to_string(),
            server: server?,
            store: store?,
            providers,
            routes: RouteTable::new(routes),
            prices: PriceTable::new(prices),
            projects,
            keys,
        })
    }

    fn server(
        &mut self,
        raw: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ServerConfig> {
        let s = &raw.server;
        let listen = match &s.listen {
            Some(l) => self.addr(l, "server.listen"),
            None => "127.0.0.1:8080".parse().ok(),
        };
        let admin_listen = match &s.admin_listen {
            Some(l) => self.addr(l, "server.admin_listen").map(Some),
            None => Some(None),
        };
        let (admin_token, admin_token_env) = match &s.admin_token_env {
            Some(var) => {
                let name = var.get_ref().clone();
                if name.is_empty() {
                    self.err(
                        Some(var.span()),
                        "server.admin_token_env",
                        "must name an environment variable",
                    );
                }
                // Unset is allowed: the admin API is then disabled, as the SPEC says.
                let token = env(&name).filter(|t| !t.is_empty()).map(Secret::new);
                (token, Some(name))
            }
            None => (None, None),
        };
        let max_body_bytes = match &s.max_body_bytes {
            Some(v) => self
                .positive(v, "server.max_body_bytes", 1 << 30)
                .map(|n| n as usize),
            None => Some(DEFAULT_MAX_BODY_BYTES),
        };
        let threads = match &s.threads {
            Some(v) => self.positive(v, "server.threads", 1024).map(|n| n as usize),
            None => Some(2),
        };
        let grace_period_s = match &s.grace_period_s {
            Some(v) if *v.get_ref() == 0 => Some(0),
            Some(v) => self.positive(v, "server.grace_period_s", 86_400),
            None => Some(30),
        };
        let defaults = crate::engine::circuit::CircuitParams::default();
        let circuit_failures = match &s.circuit_failures {
            Some(v) => self
                .positive(v, "server.circuit_failures", 1000)
                .map(|n| n as u32),
            None => Some(defaults.failures),
        };
        let circuit_cooldown_ms = match &s.circuit_cooldown_ms {
            Some(v) => self.positive(v, "server.circuit_cooldown_ms", 3_600_000),
            None => Some(defaults.cooldown_ms),
        };
        Some(ServerConfig {
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token,
            admin_token_env,
            max_body_bytes: max_body_bytes?,
            threads: threads?,
            grace_period_s: grace_period_s?,
            upgrade_sock: s
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".into()),
            pid_file: s
                .pid_file
                .clone()
                .unwrap_or_else(|| "/tmp/tollgate.pid".into()),
            circuit: crate::engine::circuit::CircuitParams {
                failures: circuit_failures?,
                cooldown_ms: circuit_cooldown_ms?,
            },
        })
    }

    fn store(&mut self, raw: &FileConfig) -> Option<StoreConfig> {
        let path = match &raw.store.path {
            Some(p) if p.get_ref().is_empty() => {
                self.err(Some(p.span()), "store.path", "must not be empty");
                None
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => Some(PathBuf::from("data/tollgate.db")),
        };
        let flush = match &raw.store.flush_interval_ms {
            Some(v) => self.positive(v, "store.flush_interval_ms", 60_000),
            None => Some(200),
        };
        Some(StoreConfig {
            path: path?,
            flush_interval: Duration::from_millis(flush?),
        })
    }

    fn providers(
        &mut self,
        raw: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Provider> {
        let mut out = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, p) in raw.providers.iter().enumerate() {
            let span = p.span();
            let p = p.get_ref();
            let at = format!("providers[{i}]");
            let name = p.name.get_ref();
            if name.is_empty() {
                self.err(
                    Some(p.name.span()),
                    format!("{at}.name"),
                    "must not be empty",
                );
            }
            if let Some(first) = seen.insert(name.as_str(), i) {
                self.err(
                    Some(p.name.span()),
                    format!("{at}.name"),
                    format!("duplicate provider name {name:?} (first at providers[{first}])"),
                );
            }
            let kind = ProviderKind::parse(p.kind.get_ref());
            if kind.is_none() {
                self.err(
                    Some(p.kind.span()),
                    format!("{at}.kind"),
                    format!(
                        "unknown kind {:?} (expected \"openai\" or \"anthropic\")",
                        p.kind.get_ref()
                    ),
                );
            }
            let base = match BaseUrl::parse(p.base_url.get_ref()) {
                Ok(b) => Some(b),
                Err(m) => {
                    self.err(Some(p.base_url.span()), format!("{at}.base_url"), m);
                    None
                }
            };
            let credential = match &p.api_key_env {
                Some(var) => match env(var.get_ref()) {
                    Some(v) if !v.is_empty() => Some(Secret::new(v)),
                    _ => {
                        self.err(
                            Some(var.span()),
                            format!("{at}.api_key_env"),
                            format!(
                                "environment variable {} is not set (provider {name:?} needs its key there)",
                                var.get_ref()
                            ),
                        );
                        None
                    }
                },
                None => None,
            };
            let connect = match &p.connect_timeout_ms {
                Some(v) => self.positive(v, &format!("{at}.connect_timeout_ms"), 600_000),
                None => Some(5_000),
            };
            let read = match &p.read_timeout_ms {
                Some(v) => self.positive(v, &format!("{at}.read_timeout_ms"), 3_600_000),
                None => Some(120_000),
            };
            if let (Some(kind), Some(base), Some(connect), Some(read)) = (kind, base, connect, read)
            {
                match WireHeaders::new(
                    kind,
                    name,
                    &base.host_header(),
                    credential.as_ref(),
                    p.anthropic_version.as_deref().unwrap_or("2023-06-01"),
                ) {
                    Ok(wire) => out.push(Provider {
                        name: name.clone(),
                        kind,
                        base,
                        credential,
                        connect_timeout: Duration::from_millis(connect),
                        read_timeout: Duration::from_millis(read),
                        wire,
                    }),
                    Err((field, m)) => {
                        let place = match (&p.api_key_env, field) {
                            (Some(var), "api_key_env") => Some(var.span()),
                            _ => Some(span.clone()),
                        };
                        self.err(place, format!("{at}.{field}"), m);
                    }
                }
            }
        }
        out
    }

    fn provider_ref(
        &mut self,
        names: &[&str],
        v: &toml::Spanned<String>,
        field: String,
    ) -> Option<usize> {
        let idx = names.iter().position(|n| *n == v.get_ref().as_str());
        if idx.is_none() {
            let known = if names.is_empty() {
                "none defined".to_string()
            } else {
                names.join(", ")
            };
            self.err(
                Some(v.span()),
                field,
                format!("unknown provider {:?} (known: {known})", v.get_ref()),
            );
        }
        idx
    }

    fn routes(&mut self, raw: &FileConfig, names: &[&str]) -> Vec<Route> {
        let mut out = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let route_span = r.span();
            let r = r.get_ref();
            let at = format!("routes[{i}]");
            let prefix = r.prefix.get_ref();
            if prefix.is_empty() {
                self.err(
                    Some(r.prefix.span()),
                    format!("{at}.prefix"),
                    "must not be empty",
                );
            }
            if let Some(first) = seen.insert(prefix.as_str(), i) {
                self.err(
                    Some(r.prefix.span()),
                    format!("{at}.prefix"),
                    format!("duplicate prefix {prefix:?} (first at routes[{first}])"),
                );
            }
            let mut ok = true;
            let mut targets = Vec::new();
            match (&r.provider, &r.targets) {
                (Some(p), None) => match self.provider_ref(names, p, format!("{at}.provider")) {
                    Some(provider) => targets.push(Target {
                        provider,
                        weight: 1,
                    }),
                    None => ok = false,
                },
                (None, Some(ts)) => {
                    if ts.get_ref().is_empty() {
                        self.err(
                            Some(ts.span()),
                            format!("{at}.targets"),
                            "must name at least one provider",
                        );
                        ok = false;
                    }
                    for (j, t) in ts.get_ref().iter().enumerate() {
                        let provider = self.provider_ref(
                            names,
                            &t.provider,
                            format!("{at}.targets[{j}].provider"),
                        );
                        if !(1..=1_000_000).contains(&t.weight) {
                            self.err(
                                Some(t.provider.span()),
                                format!("{at}.targets[{j}].weight"),
                                format!("must be between 1 and 1000000, got {}", t.weight),
                            );
                            ok = false;
                        }
                        match provider {
                            Some(provider) => targets.push(Target {
                                provider,
                                weight: t.weight as u32,
                            }),
                            None => ok = false,
                        }
                    }
                }
                (Some(p), Some(_)) => {
                    self.err(
                        Some(p.span()),
                        at.to_string(),
                        "give either `provider` or `targets`, not both",
                    );
                    ok = false;
                }
                (None, None) => {
                    self.err(
                        Some(route_span),
                        at.to_string(),
                        "needs `provider` or `targets`",
                    );
                    ok = false;
                }
            }
            let mut fallbacks = Vec::new();
            for (j, f) in r.fallbacks.iter().enumerate() {
                match self.provider_ref(names, f, format!("{at}.fallbacks[{j}]")) {
                    Some(p) => fallbacks.push(p),
                    None => ok = false,
                }
            }
            let retries = match &r.retries {
                Some(v) if *v.get_ref() == 0 => 0,
                Some(v) => match self.positive(v, &format!("{at}.retries"), 10) {
                    Some(n) => n as u32,
                    None => {
                        ok = false;
                        0
                    }
                },
                None => 0,
            };
            if ok {
                out.push(Route {
                    prefix: prefix.clone(),
                    strip_prefix: r.strip_prefix,
                    targets,
                    fallbacks,
                    retries,
                });
            }
        }
        out
    }

    fn prices(&mut self, raw: &FileConfig) -> Vec<(String, Price)> {
        let mut out = Vec::new();
        for (model, p) in &raw.prices {
            let at = format!("prices.{:?}", model.get_ref());
            let span = p.span();
            let p = p.get_ref();
            let mut pico = |v: f64, what: &str| -> Option<u64> {
                let r = per_mtok_to_pico(v);
                if r.is_none() {
                    self.err(
                        Some(span.clone()),
                        format!("{at}.{what}"),
                        format!("must be a price in USD per million tokens between 0 and 1000000, got {v}"),
                    );
                }
                r
            };
            let input = pico(p.input, "input");
            let output = pico(p.output, "output");
            let cache_read = p.cache_read.map(|v| pico(v, "cache_read"));
            let cache_write = p.cache_write.map(|v| pico(v, "cache_write"));
            let max_out = match p.max_output_tokens {
                Some(n) if n <= 0 || n > 100_000_000 => {
                    self.err(
                        Some(span.clone()),
                        format!("{at}.max_output_tokens"),
                        format!("must be between 1 and 100000000, got {n}"),
                    );
                    None
                }
                Some(n) => Some(Some(n as u64)),
                None => Some(None),
            };
            if model.get_ref().is_empty() {
                self.err(Some(model.span()), "prices", "a price needs a model name");
            }
            if let (Some(input), Some(output), Some(max_output_tokens)) = (input, output, max_out) {
                let cache_read = cache_read.unwrap_or(Some(input));
                let cache_write = cache_write.unwrap_or(Some(input));
                if let (Some(cache_read), Some(cache_write)) = (cache_read, cache_write) {
                    out.push((
                        model.get_ref().clone(),
                        Price {
                            input,
                            output,
                            cache_read,
                            cache_write,
                            max_output_tokens,
                        },
                    ));
                }
            }
        }
        out
    }

    fn projects(&mut self, raw: &FileConfig) -> (Vec<Project>, HashMap<KeyDigest, ProjectIdx>) {
        let mut out = Vec::new();
        let mut keys: HashMap<KeyDigest, (ProjectIdx, String)> = HashMap::new();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, p) in raw.projects.iter().enumerate() {
            let p = p.get_ref();
            let at = format!("projects[{i}]");
            let id = p.id.get_ref();
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                self.err(
                    Some(p.id.span()),
                    format!("{at}.id"),
                    format!(
                        "{id:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
                    ),
                );
            }
            if let Some(first) = ids.insert(id.as_str(), i) {
                self.err(
                    Some(p.id.span()),
                    format!("{at}.id"),
                    format!("duplicate project id {id:?} (first at projects[{first}])"),
                );
            }
            let idx = out.len();
            for (j, k) in p.keys.iter().enumerate() {
                let field = format!("{at}.keys[{j}]");
                let digest = match parse_key_entry(k.get_ref()) {
                    Ok(d) => d,
                    Err(m) => {
                        self.err(Some(k.span()), field, m);
                        continue;
                    }
                };
                if let Some((_, first)) = keys.get(&digest) {
                    let m = format!("duplicate key: the same key is already listed at {first}");
                    self.err(Some(k.span()), field, m);
                    continue;
                }
                keys.insert(digest, (idx, field));
            }
            let budget = p.budget.as_ref().and_then(|b| {
                let span = b.span();
                let b = b.get_ref();
                let limit = Nanos::from_usd(b.limit_usd);
                if limit.is_none() {
                    self.err(
                        Some(span),
                        format!("{at}.budget.limit_usd"),
                        format!(
                            "must be between 0 and 1000000000 dollars, got {}",
                            b.limit_usd
                        ),
                    );
                }
                let period = Period::parse(b.period.get_ref());
                if period.is_none() {
                    self.err(
                        Some(b.period.span()),
                        format!("{at}.budget.period"),
                        format!(
                            "unknown period {:?} (expected day, week, month or total)",
                            b.period.get_ref()
                        ),
                    );
                }
                Some(Budget {
                    limit: limit?,
                    period: period?,
                })
            });
            let rate_limit = p.rate_limit.as_ref().and_then(|r| {
                let span = r.span();
                let r = r.get_ref();
                let mut check = |v: Option<i64>, what: &str| match v {
                    Some(n) if n <= 0 => {
                        self.err(
                            Some(span.clone()),
                            format!("{at}.rate_limit.{what}"),
                            format!("must be positive, got {n}"),
                        );
                        Err(())
                    }
                    other => Ok(other.map(|n| n as u64)),
                };
                let rpm = check(r.rpm, "rpm");
                let tpm = check(r.tpm, "tpm");
                Some(RateLimit {
                    rpm: rpm.ok()?,
                    tpm: tpm.ok()?,
                })
            });
            let mut globs = |list: &[toml::Spanned<String>], what: &str| -> Vec<Glob> {
                let mut g = Vec::new();
                for (j, s) in list.iter().enumerate() {
                    if s.get_ref().is_empty() {
                        self.err(
                            Some(s.span()),
                            format!("{at}.{what}[{j}]"),
                            "must not be empty",
                        );
                    } else {
                        g.push(Glob::new(s.get_ref()));
                    }
                }
                g
            };
            let allow_models = p.allow_models.as_deref().map(|l| globs(l, "allow_models"));
            let deny_models = globs(&p.deny_models, "deny_models");
            let max_tokens = p
                .max_tokens
                .as_ref()
                .map(|v| self.positive(v, &format!("{at}.max_tokens"), 100_000_000));
            let block_patterns = if p.block_patterns.is_empty() {
                Some(None)
            } else {
                let mut bad = false;
                for (j, pat) in p.block_patterns.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(pat.get_ref()) {
                        bad = true;
                        let msg = format!("bad regex: {}", e.to_string().replace('\n', " "));
                        self.err(Some(pat.span()), format!("{at}.block_patterns[{j}]"), msg);
                    }
                }
                if bad {
                    None
                } else {
                    RegexSet::new(p.block_patterns.iter().map(|p| p.get_ref().as_str()))
                        .ok()
                        .map(Some)
                }
            };
            let unpriced = match &p.unpriced {
                None => Some(Unpriced::Block),
                Some(u) => match u.get_ref().as_str() {
                    "block" => Some(Unpriced::Block),
                    "allow" => Some(Unpriced::Allow),
                    other => {
                        self.err(
                            Some(u.span()),
                            format!("{at}.unpriced"),
                            format!("unknown value {other:?} (expected \"block\" or \"allow\")"),
                        );
                        None
                    }
                },
            };
            out.push(Project {
                id: id.clone(),
                budget,
                rate_limit,
                allow_models,
                deny_models,
                max_tokens: max_tokens.flatten(),
                block_secrets: p.block_secrets,
                block_patterns: block_patterns.flatten(),
                unpriced: unpriced.unwrap_or(Unpriced::Block),
            });
        }
        (
            out,
            keys.into_iter().map(|(k, (idx, _))| (k, idx)).collect(),
        )
    }
}

/// A `keys` entry: `sha256:<64 hex>` is the digest of a key; anything else is the key itself.
fn parse_key_entry(s: &str) -> Result<KeyDigest, String> {
    if let Some(hex) = s.strip_prefix("sha256:") {
        return crate::engine::auth::parse_hex_digest(hex).ok_or_else(|| {
            "a sha256: entry needs exactly 64 hex digits (see `tollgate key new`)".to_string()
        });
    }
    if s.len() < 16 {
        return Err(format!(
            "a plaintext key must be at least 16 characters, this one has {}",
            s.len()
        ));
    }
    if s.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(
            "a key must be printable ASCII without spaces (it travels in an HTTP header)".into(),
        );
    }
    Ok(key_digest(s.as_bytes()))
}

#[cfg(test)]
mod tests;
