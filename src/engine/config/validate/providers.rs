//! `[[providers]]`: wire format, base URL, the credential from the environment, timeouts.

use std::time::Duration;

use toml::Spanned;

use super::{not_empty, Env, Names, Validator};
use crate::engine::config::file::FileProvider;
use crate::engine::config::{
    DEFAULT_ANTHROPIC_VERSION, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT,
};
use crate::engine::provider::{BaseUrl, Provider, ProviderKind, Secret, WireHeaders};

impl Validator<'_> {
    /// The valid providers; a bad one is left out (its errors say why).
    pub(super) fn providers(&mut self, list: &[Spanned<FileProvider>], env: Env) -> Vec<Provider> {
        let mut out = Vec::new();
        let mut names = Names::new("providers", "name", "provider name", not_empty);
        for (i, p) in list.iter().enumerate() {
            let span = p.span();
            let p = p.get_ref();
            let at = format!("providers[{i}]");
            let name = p.name.get_ref();
            self.name(&mut names, i, &p.name);
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
                Some(v) => self
                    .positive(v, &format!("{at}.connect_timeout_ms"), 600_000)
                    .map(Duration::from_millis),
                None => Some(DEFAULT_CONNECT_TIMEOUT),
            };
            let read = match &p.read_timeout_ms {
                Some(v) => self
                    .positive(v, &format!("{at}.read_timeout_ms"), 3_600_000)
                    .map(Duration::from_millis),
                None => Some(DEFAULT_READ_TIMEOUT),
            };
            let (Some(kind), Some(base), Some(connect_timeout), Some(read_timeout)) =
                (kind, base, connect, read)
            else {
                continue;
            };
            match WireHeaders::new(
                kind,
                name,
                &base.host_header(),
                credential.as_ref(),
                p.anthropic_version
                    .as_deref()
                    .unwrap_or(DEFAULT_ANTHROPIC_VERSION),
            ) {
                Ok(wire) => out.push(Provider {
                    name: name.clone(),
                    kind,
                    base,
                    credential,
                    connect_timeout,
                    read_timeout,
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
        out
    }

    /// A reference to a provider by name: its index, or an error listing the known names.
    pub(super) fn provider_ref(
        &mut self,
        names: &[&str],
        v: &Spanned<String>,
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
}
