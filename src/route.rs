//! Model name → route: the longest matching prefix wins; the route names the model the
//! provider sees (with `strip_prefix`) and the ordered providers to try (weighted targets first,
//! then fallbacks).
//!
//! Core module: no pingora, no tokio, no I/O. Randomness comes in as a value (`pick`), so
//! choices are reproducible in tests.

/// Index into `Config::providers`.
pub type ProviderIdx = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub provider: ProviderIdx,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub strip_prefix: bool,
    /// Never empty (validated at load); a route with `provider = "x"` has one target.
    pub targets: Vec<Target>,
    pub fallbacks: Vec<ProviderIdx>,
    pub retries: u32,
}

impl Route {
    /// The model name the provider sees.
    pub fn upstream_model<'a>(&self, model: &'a str) -> &'a str {
        if self.strip_prefix {
            model.get(self.prefix.len()..).unwrap_or(model)
        } else {
            model
        }
    }

    /// Providers in the order to try them: one target chosen by weight (`pick` is any random
    /// number), the remaining targets in config order, then the fallbacks.
    pub fn candidates(&self, pick: u64) -> Vec<ProviderIdx> {
        let mut out = Vec::with_capacity(self.targets.len() + self.fallbacks.len());
        let total: u64 = self.targets.iter().map(|t| t.weight as u64).sum();
        let first = if total == 0 {
            0
        } else {
            let mut x = pick % total;
            let mut chosen = 0;
            for (i, t) in self.targets.iter().enumerate() {
                if x < t.weight as u64 {
                    chosen = i;
                    break;
                }
                x -= t.weight as u64;
            }
            chosen
        };
        if let Some(t) = self.targets.get(first) {
            out.push(t.provider);
        }
        for (i, t) in self.targets.iter().enumerate() {
            if i != first && !out.contains(&t.provider) {
                out.push(t.provider);
            }
        }
        for f in &self.fallbacks {
            if !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    pub fn lookup(&self, model: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| model.starts_with(r.prefix.as_str()))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool, provider: usize) -> Route {
        Route {
            prefix: prefix.into(),
            strip_prefix: strip,
            targets: vec![Target {
                provider,
                weight: 1,
            }],
            fallbacks: vec![],
            retries: 0,
        }
    }

    #[test]
    fn longest_prefix_wins_regardless_of_config_order() {
        let t = RouteTable::new(vec![route("gpt-", false, 0), route("gpt-4o-", false, 1)]);
        assert_eq!(t.lookup("gpt-4o-mini").unwrap().targets[0].provider, 1);
        assert_eq!(t.lookup("gpt-3.5-turbo").unwrap().targets[0].provider, 0);
        assert!(t.lookup("claude-3").is_none());
    }

    #[test]
    fn strip_prefix_rewrites_only_when_asked() {
        assert_eq!(
            route("openai/", true, 0).upstream_model("openai/gpt-4o"),
            "gpt-4o"
        );
        assert_eq!(route("gpt-", false, 0).upstream_model("gpt-4o"), "gpt-4o");
    }

    #[test]
    fn weights_pick_the_first_candidate_in_proportion() {
        let r = Route {
            prefix: "x/".into(),
            strip_prefix: true,
            targets: vec![
                Target {
                    provider: 0,
                    weight: 3,
                },
                Target {
                    provider: 1,
                    weight: 1,
                },
            ],
            fallbacks: vec![2],
            retries: 1,
        };
        let firsts: Vec<usize> = (0..4).map(|p| r.candidates(p)[0]).collect();
        assert_eq!(firsts, vec![0, 0, 0, 1]);
        assert_eq!(
            r.candidates(3),
            vec![1, 0, 2],
            "chosen, other targets, fallbacks"
        );
    }
}
