//! Per-project rpm and tpm on `pingora_limits::Rate`: lock-free count-min sketches over fixed
//! 60-second windows, read as a sliding window (the previous window weighted by how much of it
//! still overlaps the last 60 seconds), so a burst at a window edge cannot double the limit.
//!
//! Tokens are counted when a response settles (prompt + completion as charged), and checked at
//! admission: a project over its tpm is refused until the window has slid past its tokens.
//! Per-process state: limits are per instance, and survive config reloads (the limiter lives
//! outside the config). Sketches can only over-count, and only when keys collide; project ids
//! are few and come from the config, so with 4×2048 slots that does not happen in practice.

use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::engine::config::Project;
use crate::engine::error::GatewayError;

const WINDOW: Duration = Duration::from_secs(60);

pub struct RateLimiter {
    requests: Rate,
    tokens: Rate,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

/// Events in the last 60 s (sliding estimate) and the seconds until the current window ends.
fn window(c: RateComponents) -> (f64, u64) {
    let f = c.current_interval_fraction.clamp(0.0, 1.0);
    let count = c.prev_samples as f64 * (1.0 - f) + c.curr_samples as f64;
    let left = ((1.0 - f) * WINDOW.as_secs_f64()).ceil().max(1.0) as u64;
    (count, left)
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            requests: Rate::new_with_estimator_config(WINDOW, 4, 2048),
            tokens: Rate::new_with_estimator_config(WINDOW, 4, 2048),
        }
    }

    /// Count this request and refuse it if the project is over its rpm or tpm.
    pub fn admit(&self, project: &Project) -> Result<(), GatewayError> {
        let Some(limits) = &project.rate_limit else {
            return Ok(());
        };
        let key = project.id.as_str();
        if let Some(rpm) = limits.rpm {
            let (count, left) = self.requests.rate_with(&key, window);
            if count + 1.0 > rpm as f64 {
                return Err(GatewayError::RateLimited {
                    message: format!(
                        "Project {key} is over its limit of {rpm} requests per minute"
                    ),
                    retry_after_s: left,
                });
            }
            self.requests.observe(&key, 1);
        }
        if let Some(tpm) = limits.tpm {
            let (count, left) = self.tokens.rate_with(&key, window);
            if count >= tpm as f64 {
                return Err(GatewayError::RateLimited {
                    message: format!("Project {key} is over its limit of {tpm} tokens per minute"),
                    retry_after_s: left,
                });
            }
        }
        Ok(())
    }

    /// Binary upgrade: the project's requests and tokens in the last 60 s (sliding estimates),
    /// for the successor; `None` for a project without limits.
    pub fn window_counts(&self, project: &Project) -> Option<(u64, u64)> {
        project.rate_limit.as_ref()?;
        let key = project.id.as_str();
        let (requests, _) = self.requests.rate_with(&key, window);
        let (tokens, _) = self.tokens.rate_with(&key, window);
        Some((requests.ceil() as u64, tokens.ceil() as u64))
    }

    /// Binary upgrade: count the predecessor's window as this process's own.
    pub fn carry_over(&self, project: &Project, requests: u64, tokens: u64) {
        let key = project.id.as_str();
        let n = |v: u64| v.min(isize::MAX as u64) as isize;
        if requests > 0 {
            self.requests.observe(&key, n(requests));
        }
        if tokens > 0 {
            self.tokens.observe(&key, n(tokens));
        }
    }

    /// Add the tokens a finished request used.
    pub fn add_tokens(&self, project: &Project, tokens: u64) {
        if project.rate_limit.as_ref().is_some_and(|l| l.tpm.is_some()) && tokens > 0 {
            self.tokens
                .observe(&project.id.as_str(), tokens.min(isize::MAX as u64) as isize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::{RateLimit, Unpriced};

    fn project(rpm: Option<u64>, tpm: Option<u64>) -> Project {
        Project {
            id: "p".into(),
            budgets: vec![],
            team: None,
            keys: vec![],
            user_budget: None,
            rate_limit: Some(RateLimit { rpm, tpm }),
            allow_models: None,
            deny_models: vec![],
            max_tokens: None,
            block_secrets: false,
            block_patterns: None,
            unpriced: Unpriced::Block,
            cache_ttl: None,
            report_cost: false,
        }
    }

    #[test]
    fn the_request_after_the_rpm_limit_is_refused_with_retry_after() {
        let rl = RateLimiter::new();
        let p = project(Some(3), None);
        for _ in 0..3 {
            rl.admit(&p).unwrap();
        }
        let e = rl.admit(&p).unwrap_err();
        assert_eq!(e.status(), 429);
        let ra = e.retry_after_s().unwrap();
        assert!((1..=60).contains(&ra), "{ra}");
        assert!(e.message().contains("3 requests per minute"));
    }

    #[test]
    fn tokens_count_after_settlement() {
        let rl = RateLimiter::new();
        let p = project(None, Some(100));
        rl.admit(&p).unwrap();
        rl.add_tokens(&p, 60);
        rl.admit(&p).unwrap();
        rl.add_tokens(&p, 60);
        let e = rl.admit(&p).unwrap_err();
        assert!(e.message().contains("100 tokens per minute"));
    }

    #[test]
    fn projects_are_limited_separately_and_unlimited_ones_never() {
        let rl = RateLimiter::new();
        let a = project(Some(1), None);
        let mut b = project(Some(1), None);
        b.id = "q".into();
        rl.admit(&a).unwrap();
        rl.admit(&b).unwrap();
        assert!(rl.admit(&a).is_err());
        let mut free = project(None, None);
        free.rate_limit = None;
        for _ in 0..1000 {
            rl.admit(&free).unwrap();
        }
    }
}
