//! Model name → route: the longest matching prefix wins; the route names the model the
//! provider sees (with `strip_prefix`) and the ordered providers to try (weighted targets first,
//! then fallbacks).
//!
//! Core module: no pingora, no tokio, no I/O. Randomness comes in as a value (`pick`), so
//! choices are reproducible in tests.

use std::time::Duration;

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

    /// The attempts for one request: the candidates in order, each target `1 + retries` times
    /// in a row, each fallback once (fallbacks are the last resort, not a place to retry), at
    /// most [`MAX_ATTEMPTS`] in all.
    pub fn attempt_plan(&self, pick: u64) -> Vec<ProviderIdx> {
        let mut out = Vec::new();
        for p in self.candidates(pick) {
            let tries = if self.targets.iter().any(|t| t.provider == p) {
                1 + self.retries as usize
            } else {
                1
            };
            out.extend(std::iter::repeat_n(p, tries));
        }
        out.truncate(MAX_ATTEMPTS);
        out
    }
}

/// Pingora re-enters `upstream_peer` at most 16 times (`ServerConf.max_retries`); a plan never
/// asks for more, so its last attempt is always answered to the client.
pub const MAX_ATTEMPTS: usize = 16;

/// An attempt plan being worked through: which provider now, and where to go after a failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    attempts: Vec<ProviderIdx>,
    at: usize,
}

impl Plan {
    pub fn new(attempts: Vec<ProviderIdx>) -> Plan {
        Plan { attempts, at: 0 }
    }

    /// The provider of the current attempt.
    pub fn current(&self) -> Option<ProviderIdx> {
        self.attempts.get(self.at).copied()
    }

    /// 0-based index of the current attempt.
    pub fn index(&self) -> usize {
        self.at
    }

    /// Is there an attempt after the current one?
    pub fn has_next(&self) -> bool {
        self.at + 1 < self.attempts.len()
    }

    /// The provider the next attempt would use (`skip_provider`: past this provider's tries).
    pub fn peek_next(&self, skip_provider: bool) -> Option<ProviderIdx> {
        self.next_index(skip_provider)
            .and_then(|i| self.attempts.get(i).copied())
    }

    fn next_index(&self, skip_provider: bool) -> Option<usize> {
        let cur = self.current()?;
        (self.at + 1..self.attempts.len()).find(|&i| !skip_provider || self.attempts[i] != cur)
    }

    /// Move to the next attempt, or past every remaining try of the current provider with
    /// `skip_provider`. False (and no move) when there is none.
    pub fn advance(&mut self, skip_provider: bool) -> bool {
        match self.next_index(skip_provider) {
            Some(i) => {
                self.at = i;
                true
            }
            None => false,
        }
    }

    /// Providers of the attempts after the current one.
    pub fn remaining(&self) -> &[ProviderIdx] {
        self.attempts.get(self.at + 1..).unwrap_or(&[])
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

/// The first wait before trying a provider again after a 429 that named no `Retry-After`.
pub const THROTTLE_BACKOFF_BASE: Duration = Duration::from_millis(100);

/// The wait before trying a throttling provider again (a 429 without `Retry-After`): 100 ms,
/// doubled for each earlier throttled try at it in this request (at most 1.6 s), with the
/// actual wait drawn from half to one and a half times that, so clients throttled together do
/// not all come back at the same instant. `pick` is any number that varies per try.
pub fn throttle_backoff(earlier_tries: u32, pick: u64) -> Duration {
    let base = THROTTLE_BACKOFF_BASE.as_millis() as u64 * (1 << earlier_tries.min(4));
    Duration::from_millis(base / 2 + pick % (base + 1))
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
        assert_eq!(
            r.attempt_plan(3),
            vec![1, 1, 0, 0, 2],
            "each target 1 + retries times in a row, each fallback once"
        );
        assert_eq!(r.attempt_plan(0), vec![0, 0, 1, 1, 2]);
    }

    #[test]
    fn a_plan_never_exceeds_the_proxy_frameworks_retry_bound() {
        let r = Route {
            retries: 10,
            targets: (0..3)
                .map(|provider| Target {
                    provider,
                    weight: 1,
                })
                .collect(),
            ..route("x/", true, 0)
        };
        assert_eq!(r.attempt_plan(0).len(), MAX_ATTEMPTS);
        assert_eq!(route("y", false, 4).attempt_plan(7), vec![4]);
    }

    #[test]
    fn a_plan_advances_by_attempt_or_past_a_provider() {
        let mut p = Plan::new(vec![1, 1, 0, 0, 2]);
        assert_eq!(p.current(), Some(1));
        assert_eq!(p.peek_next(false), Some(1));
        assert_eq!(p.peek_next(true), Some(0));
        assert!(p.advance(false));
        assert_eq!((p.index(), p.current()), (1, Some(1)));
        assert!(p.advance(true));
        assert_eq!((p.index(), p.current()), (2, Some(0)));
        assert!(p.advance(true));
        assert_eq!(p.current(), Some(2));
        assert!(!p.has_next());
        assert!(!p.advance(false));
        assert_eq!(p.current(), Some(2), "no move past the end");
        assert!(Plan::default().current().is_none());
    }

    #[test]
    fn throttle_backoff_grows_per_try_stays_within_its_jitter_band_and_varies() {
        for (tries, base) in [(0u32, 100u64), (1, 200), (2, 400), (4, 1600), (9, 1600)] {
            let waits: Vec<u64> = (0..500u64)
                .map(|pick| throttle_backoff(tries, pick * 7919).as_millis() as u64)
                .collect();
            assert!(
                waits
                    .iter()
                    .all(|w| (base / 2..=base + base / 2).contains(w)),
                "try {tries}: {waits:?}"
            );
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(
                distinct.len() > 20,
                "jitter spreads the waits: {distinct:?}"
            );
        }
    }
}
