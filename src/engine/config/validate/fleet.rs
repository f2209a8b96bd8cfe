//! `[fleet]`: where the shared Redis is (its URL from the environment: it may hold a
//! password), this instance's id, and the hold TTL.

use std::time::Duration;

use toml::Spanned;

use super::{Env, Validator};
use crate::engine::config::file::FileFleet;
use crate::engine::config::FleetConfig;
use crate::engine::provider::Secret;

impl Validator<'_> {
    pub(super) fn fleet(&mut self, f: &Spanned<FileFleet>, env: Env) -> Option<FleetConfig> {
        let span = f.span();
        let f = f.get_ref();
        let var = f
            .redis_url_env
            .as_ref()
            .map_or(FleetConfig::DEFAULT_REDIS_URL_ENV.to_string(), |v| {
                v.get_ref().clone()
            });
        let place = f.redis_url_env.as_ref().map_or(span.clone(), |v| v.span());
        let url = match env(&var) {
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                Some(Secret::new(u))
            }
            Some(u) if u.is_empty() => {
                self.err(
                    Some(place),
                    "fleet.redis_url_env",
                    format!("environment variable {var} is empty (it must hold redis://… or rediss://…)"),
                );
                None
            }
            Some(_) => {
                // The value may hold a password: never echo it.
                self.err(
                    Some(place),
                    "fleet.redis_url_env",
                    format!("environment variable {var} must hold a redis://… or rediss://… URL"),
                );
                None
            }
            None => {
                self.err(
                    Some(place),
                    "fleet.redis_url_env",
                    format!("environment variable {var} is not set (fleet mode reads the Redis URL from it)"),
                );
                None
            }
        };
        let instance = match &f.instance {
            Some(v) => {
                let id = v.get_ref();
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if ok {
                    Some(Some(id.clone()))
                } else {
                    self.err(
                        Some(v.span()),
                        "fleet.instance",
                        format!("{id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
                    );
                    None
                }
            }
            None => Some(None),
        };
        let hold_ttl_s = match &f.hold_ttl_s {
            Some(v) => self
                .positive(v, "fleet.hold_ttl_s", FleetConfig::MAX_HOLD_TTL_S)
                .map(|n| n as u32),
            None => Some(FleetConfig::DEFAULT_HOLD_TTL_S),
        };
        let timeout = match &f.timeout_ms {
            Some(v) => self
                .positive(v, "fleet.timeout_ms", 10_000)
                .map(Duration::from_millis),
            None => Some(FleetConfig::DEFAULT_TIMEOUT),
        };
        let rebuild_grace = match &f.rebuild_grace_ms {
            Some(v) => self
                .positive(v, "fleet.rebuild_grace_ms", 600_000)
                .map(Duration::from_millis),
            None => Some(FleetConfig::DEFAULT_REBUILD_GRACE),
        };
        let leases = f
            .leases
            .as_ref()
            .map_or(FleetConfig::DEFAULT_LEASES, |v| *v.get_ref());
        Some(FleetConfig {
            redis_url: url?,
            redis_url_env: var,
            instance: instance?,
            hold_ttl_s: hold_ttl_s?,
            timeout: timeout?,
            rebuild_grace: rebuild_grace?,
            leases,
        })
    }
}
