//! The per-provider circuit breaker as a pure state machine.
//!
//! Time comes in as milliseconds on any monotonic clock; nothing here reads a clock. After
//! `failures` consecutive failed attempts a provider is *open* for `cooldown_ms`: attempt plans
//! skip it while another candidate is available. When the cool-down has passed it is
//! *half-open*: exactly one request (the probe) may try it; success closes it, failure opens it
//! again for another cool-down. A probe that never reports (its client went away) stops
//! blocking after one more cool-down.
//!
//! Engine module: must not import pingora, tokio or any shell module, read a clock or keep
//! global state. The shared registry of breakers and its clock are the shell's `health`.

/// Circuit parameters (from `[server] circuit_failures` / `circuit_cooldown_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitParams {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long an open circuit stays open.
    pub cooldown_ms: u64,
}

impl Default for CircuitParams {
    fn default() -> Self {
        CircuitParams {
            failures: 5,
            cooldown_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Requests skip the provider until `until`.
    Open {
        until: u64,
    },
    /// The cool-down is over; one probe may go (`probe_since` is when the last one went).
    HalfOpen {
        probe_since: Option<u64>,
    },
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// One provider's breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            consecutive_failures: 0,
        }
    }
}

impl Breaker {
    /// The state as of `now` (an open circuit whose cool-down passed reads as half-open).
    pub fn state(&self, now: u64) -> State {
        match self.state {
            State::Open { until } if now >= until => State::HalfOpen { probe_since: None },
            s => s,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Would a request be let through now (without claiming the probe)?
    pub fn available(&self, now: u64, p: CircuitParams) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { probe_since } => {
                probe_since.is_none_or(|t| now.saturating_sub(t) >= p.cooldown_ms)
            }
        }
    }

    /// Let a request through now? In half-open this claims the one probe.
    pub fn try_acquire(&mut self, now: u64, p: CircuitParams) -> bool {
        if !self.available(now, p) {
            return false;
        }
        if let State::HalfOpen { .. } = self.state(now) {
            self.state = State::HalfOpen {
                probe_since: Some(now),
            };
        }
        true
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
    }

    /// A failed attempt; true when this failure opened the circuit.
    pub fn on_failure(&mut self, now: u64, p: CircuitParams) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = match self.state(now) {
            State::HalfOpen { .. } => true,
            State::Closed => self.consecutive_failures >= p.failures.max(1),
            // Already open (a request that started before it opened): extend nothing.
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now.saturating_add(p.cooldown_ms),
            };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: CircuitParams = CircuitParams {
        failures: 3,
        cooldown_ms: 1000,
    };

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let mut b = Breaker::default();
        assert!(!b.on_failure(0, P));
        assert!(!b.on_failure(1, P));
        b.on_success();
        assert_eq!(b.consecutive_failures(), 0);
        assert!(!b.on_failure(2, P));
        assert!(!b.on_failure(3, P));
        assert!(b.available(3, P));
        assert!(b.on_failure(4, P), "third in a row opens");
        assert_eq!(b.state(4), State::Open { until: 1004 });
        assert!(!b.available(500, P));
        assert!(!b.try_acquire(1003, P));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let mut b = Breaker::default();
        for t in 0..3 {
            b.on_failure(t, P);
        }
        assert_eq!(b.state(1002), State::HalfOpen { probe_since: None });
        assert!(b.try_acquire(1002, P), "the probe");
        assert!(!b.try_acquire(1003, P), "only one");
        assert!(!b.available(1500, P));
        b.on_success();
        assert_eq!(b.state(1500), State::Closed);
        assert!(b.try_acquire(1500, P));
        assert!(b.try_acquire(1500, P));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let mut b = Breaker::default();
        for t in 0..3 {
            b.on_failure(t, P);
        }
        assert!(b.try_acquire(2000, P));
        assert!(b.on_failure(2100, P), "a failed probe opens at once");
        assert_eq!(b.state(2100), State::Open { until: 3100 });
        assert!(!b.available(3099, P));
        assert!(b.available(3100, P));
    }

    #[test]
    fn a_probe_that_never_reports_stops_blocking_after_a_cooldown() {
        let mut b = Breaker::default();
        for t in 0..3 {
            b.on_failure(t, P);
        }
        assert!(b.try_acquire(1002, P));
        assert!(!b.try_acquire(2001, P));
        assert!(b.try_acquire(2002, P));
    }

    #[test]
    fn late_failures_do_not_extend_an_open_circuit() {
        let mut b = Breaker::default();
        for t in 0..3 {
            b.on_failure(t, P);
        }
        assert!(!b.on_failure(500, P));
        assert_eq!(b.state(500), State::Open { until: 1002 });
    }
}
