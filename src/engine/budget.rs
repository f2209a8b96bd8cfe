//! Budgets and their periods. Periods are UTC calendar periods (day, ISO week starting Monday,
//! month) or `total`; a period is identified by a key string so that spend rows of an old
//! period simply stop counting when the next one starts — nothing has to be "reset".
//!
//! Core module: no pingora, no tokio, no I/O, no clock: callers pass `now` as Unix seconds.

use std::sync::Arc;

use crate::engine::pricing::Nanos;
use crate::engine::time::civil_from_days;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            "total" => Some(Period::Total),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// The key of the period containing `now` (Unix seconds, UTC): `2026-11-22`, `2026-W47`
    /// (the Monday-based week, keyed by the date of its Monday: `2026-11-16`), `2026-11`, `total`.
    pub fn key(self, now_unix: i64) -> String {
        let days = now_unix.div_euclid(86_400);
        match self {
            Period::Day => {
                let (y, m, d) = civil_from_days(days);
                format!("{y:04}-{m:02}-{d:02}")
            }
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday-based weekday index is (days + 3) mod 7.
                let monday = days - (days + 3).rem_euclid(7);
                let (y, m, d) = civil_from_days(monday);
                format!("week-of-{y:04}-{m:02}-{d:02}")
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                format!("{y:04}-{m:02}")
            }
            Period::Total => "total".to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub limit: Nanos,
    pub period: Period,
}

/// Live spend of one project in its current period. Admission and settlement are plain
/// arithmetic here; the shell holds each `Account` behind its own per-project lock so that
/// check-and-reserve is one atomic step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// The period `spent` belongs to (`Period::key`). Shared, so the writes that name it
    /// copy a pointer, not the string.
    pub period_key: Arc<str>,
    /// Settled spend in that period.
    pub spent: Nanos,
    /// Worst cases of requests admitted and not yet settled.
    pub reserved: Nanos,
    /// The UTC day (days since the epoch) on which `period_key` was last found current:
    /// every period starts at a UTC midnight, so within a day there is nothing to check.
    pub checked_day: Option<i64>,
    /// Fleet mode: how many times `spent` was reported to a new fleet generation. A settle
    /// notes the count it saw, so the fleet knows whether that report already included it.
    pub snapshots: u64,
}

/// Why a request was refused: the numbers the 402 message shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub spent: Nanos,
    pub reserved: Nanos,
    pub limit: Nanos,
    pub needed: Nanos,
}

impl Account {
    /// Move to the period `key` if time has moved on: the new period starts at `stored` spend
    /// (what the ledger has for it, normally 0). Reservations in flight carry over; they are
    /// charged to the period in which they settle.
    pub fn roll(&mut self, key: &str, stored: Nanos) {
        if &*self.period_key != key {
            self.period_key = Arc::from(key);
            self.spent = stored;
        }
    }

    /// [`Account::roll`] to `period`'s key at `now_unix`, building the key only when the UTC
    /// day has changed since the last call (the request path calls this on every request).
    pub fn roll_at(&mut self, period: Period, now_unix: i64) {
        let day = now_unix.div_euclid(86_400);
        if self.checked_day != Some(day) {
            self.roll(&period.key(now_unix), Nanos::ZERO);
            self.checked_day = Some(day);
        }
    }

    /// Whether `amount` fits: `spent + reserved + amount <= limit` (nothing is changed).
    pub fn fits(&self, limit: Nanos, amount: Nanos) -> Result<(), Refusal> {
        let committed = self.spent.0.checked_add(self.reserved.0);
        match committed.and_then(|c| c.checked_add(amount.0)) {
            Some(total) if total <= limit.0 => Ok(()),
            _ => Err(Refusal {
                spent: self.spent,
                reserved: self.reserved,
                limit,
                needed: amount,
            }),
        }
    }

    /// Reserve `amount` if `spent + reserved + amount <= limit`. This is the invariant that
    /// keeps recorded spend under the limit however many requests race: every admitted
    /// request's worst case is already counted when the next one is checked.
    #[cfg(test)]
    pub fn admit(&mut self, limit: Nanos, amount: Nanos) -> Result<(), Refusal> {
        self.fits(limit, amount)?;
        self.reserved = Nanos(self.reserved.0 + amount.0);
        Ok(())
    }

    /// Release a reservation and charge what the request really cost.
    pub fn settle(&mut self, reserved: Nanos, actual: Nanos) {
        self.reserved = self.reserved.saturating_sub(reserved);
        self.spent = self.spent.saturating_add(actual);
    }

    pub fn remaining(&self, limit: Nanos) -> Nanos {
        limit
            .saturating_sub(self.spent)
            .saturating_sub(self.reserved)
    }
}

/// The 402 message: who refused (`Project checkout-bot`, `Team payments`, …: see
/// [`crate::engine::accounts::who`]), what was spent, the limit, the period.
pub fn refusal_message(who: &str, period: Period, r: &Refusal) -> String {
    let what = match period {
        Period::Total => "total budget".to_string(),
        p => format!("{} budget", p.as_str()),
    };
    if r.spent >= r.limit {
        format!(
            "{who} has spent its {what} of ${:.2} (spent ${:.4})",
            r.limit.as_usd(),
            r.spent.as_usd()
        )
    } else {
        format!(
            "{who} cannot cover this request within its {what} of ${:.2}: spent ${:.4}, reserved by requests in flight ${:.4}, this request may cost up to ${:.4}",
            r.limit.as_usd(),
            r.spent.as_usd(),
            r.reserved.as_usd(),
            r.needed.as_usd()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22T10:00:00Z, a Sunday.
    const NOW: i64 = 1_795_341_600;

    #[test]
    fn calendar_keys_follow_utc() {
        assert_eq!(Period::Day.key(NOW), "2026-11-22");
        assert_eq!(Period::Month.key(NOW), "2026-11");
        assert_eq!(
            Period::Week.key(NOW),
            "week-of-2026-11-16",
            "weeks start on Monday"
        );
        assert_eq!(Period::Total.key(NOW), "total");
    }

    #[test]
    fn period_boundaries_switch_at_midnight_utc() {
        let midnight = 1_795_392_000; // 2026-11-23T00:00:00Z, a Monday
        assert_eq!(Period::Day.key(midnight - 1), "2026-11-22");
        assert_eq!(Period::Day.key(midnight), "2026-11-23");
        assert_eq!(Period::Week.key(midnight - 1), "week-of-2026-11-16");
        assert_eq!(Period::Week.key(midnight), "week-of-2026-11-23");
        let dec = 1_796_083_200; // 2026-12-01T00:00:00Z
        assert_eq!(Period::Month.key(dec - 1), "2026-11");
        assert_eq!(Period::Month.key(dec), "2026-12");
    }

    #[test]
    fn a_week_before_the_epoch_starts_on_its_monday() {
        assert_eq!(Period::Week.key(0), "week-of-1969-12-29");
    }

    #[test]
    fn admission_never_lets_spent_plus_reserved_pass_the_limit() {
        let limit = Nanos(100);
        let mut a = Account::default();
        assert!(a.admit(limit, Nanos(60)).is_ok());
        assert!(
            a.admit(limit, Nanos(40)).is_ok(),
            "exactly the limit is allowed"
        );
        let r = a.admit(limit, Nanos(1)).unwrap_err();
        assert_eq!(
            (r.spent, r.reserved, r.needed),
            (Nanos(0), Nanos(100), Nanos(1))
        );
        a.settle(Nanos(60), Nanos(10));
        assert_eq!((a.spent, a.reserved), (Nanos(10), Nanos(40)));
        assert_eq!(a.remaining(limit), Nanos(50));
        assert!(
            a.admit(limit, Nanos(50)).is_ok(),
            "settling below the worst case frees room"
        );
    }

    #[test]
    fn overflowing_amounts_are_refused_not_wrapped() {
        let mut a = Account {
            spent: Nanos(u64::MAX - 1),
            ..Account::default()
        };
        assert!(a.admit(Nanos(u64::MAX), Nanos(5)).is_err());
    }

    #[test]
    fn a_new_period_starts_from_its_stored_spend_and_keeps_reservations() {
        let mut a = Account {
            period_key: "2026-11".into(),
            spent: Nanos(90),
            reserved: Nanos(5),
            checked_day: None,
            snapshots: 0,
        };
        a.roll("2026-11", Nanos(0));
        assert_eq!(a.spent, Nanos(90), "same period: unchanged");
        a.roll("2026-12", Nanos(0));
        assert_eq!((a.spent, a.reserved), (Nanos(0), Nanos(5)));
    }

    #[test]
    fn roll_at_moves_to_the_next_period_at_its_first_second_and_not_before() {
        let dec = 1_796_083_200; // 2026-12-01T00:00:00Z
        let mut a = Account {
            period_key: "2026-11".into(),
            spent: Nanos(90),
            ..Account::default()
        };
        a.roll_at(Period::Month, dec - 86_400);
        a.roll_at(Period::Month, dec - 1);
        assert_eq!((&*a.period_key, a.spent), ("2026-11", Nanos(90)));
        a.roll_at(Period::Month, dec);
        assert_eq!((&*a.period_key, a.spent), ("2026-12", Nanos(0)));
        a.spent = Nanos(7);
        a.roll_at(Period::Month, dec + 3_600);
        assert_eq!(a.spent, Nanos(7), "same day, same period");

        let mut d = Account::default();
        d.roll_at(Period::Day, dec - 1);
        d.spent = Nanos(3);
        d.roll_at(Period::Day, dec);
        assert_eq!((&*d.period_key, d.spent), ("2026-12-01", Nanos(0)));
    }

    #[test]
    fn the_402_message_names_spend_limit_and_period() {
        let r = Refusal {
            spent: Nanos(50_000_000_000),
            reserved: Nanos(0),
            limit: Nanos(50_000_000_000),
            needed: Nanos(1),
        };
        assert_eq!(
            refusal_message("Project checkout-bot", Period::Month, &r),
            "Project checkout-bot has spent its month budget of $50.00 (spent $50.0000)"
        );
        let r = Refusal {
            spent: Nanos(1_000_000_000),
            reserved: Nanos(0),
            limit: Nanos(2_000_000_000),
            needed: Nanos(1_500_000_000),
        };
        let m = refusal_message("Project p", Period::Day, &r);
        assert!(
            m.contains("day budget of $2.00") && m.contains("up to $1.5000"),
            "{m}"
        );
    }
}
