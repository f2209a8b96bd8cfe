//! The one place the shell reads the wall clock (Unix time). The engine never reads a clock:
//! the shell passes these values in. The monotonic clock of the circuit breakers is
//! `health::now_ms`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    unix_ms().div_euclid(1000)
}
