//! `[[routes]]`: model-name prefixes → a provider, or weighted targets with fallbacks and
//! retries. Providers are referred to by name and checked against the `[[providers]]` list.

use toml::Spanned;

use super::{not_empty, Names, Validator};
use crate::engine::config::file::FileRoute;
use crate::engine::route::{Route, Target};

/// `retries` above this would multiply a plan past Pingora's retry bound for little gain.
const MAX_RETRIES: i64 = 10;
const MAX_WEIGHT: i64 = 1_000_000;

impl Validator<'_> {
    /// The valid routes; `names` are the providers' names in file order.
    pub(super) fn routes(&mut self, list: &[Spanned<FileRoute>], names: &[&str]) -> Vec<Route> {
        let mut out = Vec::new();
        let mut prefixes = Names::new("routes", "prefix", "prefix", not_empty);
        for (i, r) in list.iter().enumerate() {
            let route_span = r.span();
            let r = r.get_ref();
            let at = format!("routes[{i}]");
            self.name(&mut prefixes, i, &r.prefix);
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
                        if !(1..=MAX_WEIGHT).contains(&t.weight) {
                            self.err(
                                Some(t.provider.span()),
                                format!("{at}.targets[{j}].weight"),
                                format!("must be between 1 and {MAX_WEIGHT}, got {}", t.weight),
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
                Some(v) => match self.positive(v, &format!("{at}.retries"), MAX_RETRIES) {
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
                    prefix: r.prefix.get_ref().clone(),
                    strip_prefix: r.strip_prefix,
                    targets,
                    fallbacks,
                    retries,
                });
            }
        }
        out
    }
}
