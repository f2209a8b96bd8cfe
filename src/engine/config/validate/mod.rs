//! The validator: file schema → runtime config, one `impl Validator` block per section
//! (`server.rs`, `store.rs`, `fleet.rs`, `providers.rs`, `routes.rs`, `prices.rs`, `teams.rs`,
//! `projects.rs`). Each section reports its own problems and returns what it could build;
//! [`Validator::build`] assembles a [`Config`] only from sections that are whole. Defaults come
//! from `runtime.rs`.

mod fleet;
mod prices;
mod projects;
mod providers;
mod routes;
mod server;
mod store;
mod teams;

use core::net::SocketAddr;
use std::collections::HashMap;

use toml::Spanned;

use super::file::FileConfig;
use super::{Config, ConfigError, FileReader, TlsCheck};
use crate::engine::pricing::PriceTable;
use crate::engine::route::RouteTable;

/// Environment lookups, injected so validation needs no process-global state.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

type Span = std::ops::Range<usize>;

pub(super) struct Validator<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

/// The names of one list (`providers[].name`, `routes[].prefix`, `projects[].id`): each must
/// pass the list's `rule` and be unique, and a duplicate names the entry it repeats.
struct Names<'a> {
    list: &'static str,
    field: &'static str,
    /// What a name of this list is called in a message, e.g. "provider name".
    noun: &'static str,
    /// Why a name is not acceptable, or `None` when it is.
    rule: fn(&str) -> Option<String>,
    seen: HashMap<&'a str, usize>,
}

impl<'a> Names<'a> {
    fn new(
        list: &'static str,
        field: &'static str,
        noun: &'static str,
        rule: fn(&str) -> Option<String>,
    ) -> Self {
        Names {
            list,
            field,
            noun,
            rule,
            seen: HashMap::new(),
        }
    }
}

/// The rule of most names: anything but empty.
fn not_empty(name: &str) -> Option<String> {
    name.is_empty().then(|| "must not be empty".to_string())
}

impl<'t> Validator<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Validator {
            text,
            errors: Vec::new(),
        }
    }

    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub(super) fn line_col(&self, offset: usize) -> (Option<usize>, Option<usize>) {
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
    fn positive(&mut self, v: &Spanned<i64>, field: &str, max: i64) -> Option<u64> {
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

    fn addr(&mut self, v: &Spanned<String>, field: &str) -> Option<SocketAddr> {
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

    /// Entry `i` of `names`' list is called `name`: report it if it breaks the list's rule or
    /// repeats an earlier entry (both, when it does both).
    fn name<'a>(&mut self, names: &mut Names<'a>, i: usize, name: &'a Spanned<String>) {
        let field = format!("{}[{i}].{}", names.list, names.field);
        let n = name.get_ref();
        if let Some(m) = (names.rule)(n) {
            self.err(Some(name.span()), field.as_str(), m);
        }
        if let Some(first) = names.seen.insert(n.as_str(), i) {
            self.err(
                Some(name.span()),
                field,
                format!(
                    "duplicate {} {n:?} (first at {}[{first}])",
                    names.noun, names.list
                ),
            );
        }
    }

    /// Every section, in file order; `None` when a section that has no partial form (server,
    /// store) failed. The other sections leave out their bad entries, whose errors are
    /// already recorded, so the caller never returns a partial config as valid.
    pub(super) fn build(
        &mut self,
        raw: FileConfig,
        env: Env,
        read: FileReader,
        tls: TlsCheck,
    ) -> Option<Config> {
        let mut prices = self.price_files(&raw.price_files, read);
        let server = self.server(&raw.server, env, tls);
        let store = self.store(&raw.store);
        let fleet = raw.fleet.as_ref().map(|f| self.fleet(f, env));
        let cache = match raw.cache.as_ref().and_then(|c| c.max_bytes.as_ref()) {
            None => Some(crate::engine::config::CacheConfig::default()),
            Some(v) => self
                .positive(
                    v,
                    "cache.max_bytes",
                    crate::engine::config::CacheConfig::MAX_MAX_BYTES,
                )
                .map(|max_bytes| crate::engine::config::CacheConfig { max_bytes }),
        };
        let providers = self.providers(&raw.providers, env);
        let names: Vec<&str> = raw
            .providers
            .iter()
            .map(|p| p.get_ref().name.get_ref().as_str())
            .collect();
        let routes = self.routes(&raw.routes, &names);
        prices::merge(&mut prices, self.prices(&raw.prices));
        let teams = self.teams(&raw.teams);
        let team_ids: Vec<&str> = raw
            .teams
            .iter()
            .map(|t| t.get_ref().id.get_ref().as_str())
            .collect();
        let (projects, keys) = self.projects(&raw.projects, &team_ids);
        Some(
            Config {
                server: server?,
                store: store?,
                fleet: match fleet {
                    Some(f) => Some(f?),
                    None => None,
                },
                cache: cache?,
                providers,
                routes: RouteTable::new(routes),
                prices: PriceTable::new(prices),
                projects,
                teams,
                keys,
                charged: Vec::new(),
            }
            .with_charged(),
        )
    }
}
