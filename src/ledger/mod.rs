//! Live spend and the durable ledger.
//!
//! Memory is the source of truth while the process runs: one [`Account`] per project behind
//! its own mutex (held for a few arithmetic operations, never across an await or I/O), found
//! through an `ArcSwap` map, so there is no global lock on the request path. Every change is
//! also sent, without waiting, to the SQLite [`store`] whose background thread batches it to
//! disk. At start (and on reload, for new projects) the accounts are loaded from the store,
//! so a restart resumes where the last flush left off.
//!
//! A [`Reservation`] releases itself when dropped unsettled, so no code path — an error, a
//! cancelled request, a panic — can leak reserved money.
//!
//! Time is a value: the ledger reads the wall clock through the `fn` it was built with
//! ([`crate::clock::unix_secs`] outside tests) and hands it to each reservation; the `*_at`
//! variants take `now` directly, so unit tests cross period boundaries without sleeping.

/// Fleet mode: the Redis store and the instance's side of it (admission, settle queue,
/// generation, freezes, heartbeats).
pub mod fleet;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::engine::budget::{refusal_message, Account, Period};
use crate::engine::config::{Config, Project};
use crate::engine::error::GatewayError;
use crate::engine::pricing::Nanos;
pub use store::{DecisionRecord, Reader, StoreHandle, Write};

/// A project's account and its id, shared so that reservations and spend writes copy a
/// pointer rather than the id string.
struct Slot {
    project: Arc<str>,
    account: Mutex<Account>,
}

type Cell = Arc<Slot>;

/// Reads the wall clock: Unix seconds.
type Clock = fn() -> i64;

pub struct Ledger {
    accounts: ArcSwap<HashMap<String, Cell>>,
    frozen: ArcSwap<HashSet<String>>,
    store: Option<StoreHandle>,
    reader: Option<Arc<Reader>>,
    clock: Clock,
}

/// A poisoned account lock only means another request panicked mid-update of plain integers;
/// the numbers are still the best we have.
fn lock(cell: &Slot) -> MutexGuard<'_, Account> {
    cell.account.lock().unwrap_or_else(|p| p.into_inner())
}

fn slot(project: &str, account: Account) -> Cell {
    Arc::new(Slot {
        project: Arc::from(project),
        account: Mutex::new(account),
    })
}

/// Money held for one admitted request until it settles.
pub struct Reservation {
    cell: Cell,
    amount: Nanos,
    /// The project's budget left after this reservation (None: no budget).
    remaining: Option<Nanos>,
    store: Option<StoreHandle>,
    /// The ledger's clock: `settle` charges the period current when the request ends.
    clock: Clock,
    /// The period the project accounts in (`Month` for a project without a budget).
    period: Period,
    settled: bool,
}

impl Reservation {
    /// The worst case held for this request.
    pub fn amount(&self) -> Nanos {
        self.amount
    }

    /// The budget left once this reservation was made, read under the same lock (None when
    /// the project has no budget).
    pub fn remaining(&self) -> Option<Nanos> {
        self.remaining
    }

    /// Release the reservation and charge `actual`, in the period current now. Returns the
    /// overrun: how far `actual` exceeds the worst case reserved (`Nanos::ZERO` when it does
    /// not). The truth is charged either way, so an overrun can take spend past the limit;
    /// the caller counts and logs it.
    #[cfg(test)]
    pub fn settle(self, actual: Nanos) -> Nanos {
        let now = (self.clock)();
        self.settle_at(actual, now)
    }

    /// [`Reservation::settle`] at `now_unix` (Unix seconds).
    #[cfg(test)]
    pub fn settle_at(self, actual: Nanos, now_unix: i64) -> Nanos {
        self.settle_seen_at(actual, now_unix).0
    }

    /// [`Reservation::settle`], also returning the account's snapshot count as the settle
    /// found it (fleet mode: was this spend in the last report to the fleet?).
    pub fn settle_seen(self, actual: Nanos) -> (Nanos, u64) {
        let now = (self.clock)();
        self.settle_seen_at(actual, now)
    }

    fn settle_seen_at(mut self, actual: Nanos, now_unix: i64) -> (Nanos, u64) {
        self.settled = true;
        let (period_key, seen) = {
            let mut a = lock(&self.cell);
            a.roll_at(self.period, now_unix);
            a.settle(self.amount, actual);
            (a.period_key.clone(), a.snapshots)
        };
        if actual > Nanos::ZERO {
            if let Some(s) = &self.store {
                s.send(Write::Spend {
                    project: self.cell.project.clone(),
                    period: period_key,
                    add_nanos: actual.0,
                });
            }
        }
        (actual.saturating_sub(self.amount()), seen)
    }
}

impl Drop for Reservation {
    /// Unsettled: release the hold and charge nothing. Holds do not belong to a period (they
    /// carry over a roll), so there is no period to find and no clock to read.
    fn drop(&mut self) {
        if !self.settled {
            lock(&self.cell).settle(self.amount, Nanos::ZERO);
        }
    }
}

/// One project's numbers for `/admin/projects` and the budget gauge.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectStatus {
    pub id: String,
    pub period: &'static str,
    pub spent: Nanos,
    pub reserved: Nanos,
    pub limit: Option<Nanos>,
    pub remaining: Option<Nanos>,
    pub frozen: bool,
}

impl Ledger {
    /// A ledger on `store`, with accounts for `cfg`'s projects loaded from it.
    pub fn open(store: StoreHandle, reader: Reader, cfg: &Config) -> Result<Ledger, String> {
        let ledger = Ledger {
            accounts: ArcSwap::from_pointee(HashMap::new()),
            frozen: ArcSwap::from_pointee(HashSet::new()),
            store: Some(store),
            reader: Some(Arc::new(reader)),
            clock: crate::clock::unix_secs,
        };
        ledger.load(cfg)?;
        Ok(ledger)
    }

    /// A ledger that keeps nothing on disk, reading time from `clock` (unit tests; a test
    /// that passes every `now` to the `*_at` methods can give a clock that panics).
    #[cfg(test)]
    pub fn in_memory(clock: fn() -> i64) -> Ledger {
        Ledger {
            accounts: ArcSwap::from_pointee(HashMap::new()),
            frozen: ArcSwap::from_pointee(HashSet::new()),
            store: None,
            reader: None,
            clock,
        }
    }

    pub fn reader(&self) -> Option<Arc<Reader>> {
        self.reader.clone()
    }

    /// Create accounts for projects that have none yet, reading their current-period spend and
    /// the freezes from the store. Blocking: called at start and from the reload task, never
    /// from a request phase. Existing accounts are kept as they are (a reload never resets
    /// spend).
    pub fn load(&self, cfg: &Config) -> Result<(), String> {
        let now = (self.clock)();
        let current = self.accounts.load_full();
        let missing: Vec<&Project> = cfg
            .projects
            .iter()
            .filter(|p| !current.contains_key(&p.id))
            .collect();
        let mut stored: HashMap<(String, String), u64> = HashMap::new();
        if let (Some(r), false) = (&self.reader, missing.is_empty()) {
            let keys: Vec<(String, String)> = missing
                .iter()
                .map(|p| (p.id.clone(), period_of(p).key(now)))
                .collect();
            stored = r.all_spend_for(&keys)?.into_iter().collect();
        }
        if !missing.is_empty() {
            let mut map = HashMap::clone(&current);
            for p in missing {
                let key = period_of(p).key(now);
                let spent = stored
                    .get(&(p.id.clone(), key.clone()))
                    .copied()
                    .unwrap_or(0);
                map.insert(
                    p.id.clone(),
                    slot(
                        &p.id,
                        Account {
                            period_key: Arc::from(key),
                            spent: Nanos(spent),
                            ..Account::default()
                        },
                    ),
                );
            }
            self.accounts.store(Arc::new(map));
        }
        if let Some(r) = &self.reader {
            let frozen: HashSet<String> = r
                .freezes()?
                .into_iter()
                .filter(|(_, f)| *f)
                .map(|(p, _)| p)
                .collect();
            self.frozen.store(Arc::new(frozen));
        }
        Ok(())
    }

    fn cell(&self, project: &str) -> Cell {
        if let Some(c) = self.accounts.load().get(project) {
            return c.clone();
        }
        // A project the last load did not see (only possible between a reload's swap and its
        // load): start it empty rather than block on disk here.
        let cell: Cell = slot(project, Account::default());
        let mut out = cell.clone();
        self.accounts.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m
                .entry(project.to_string())
                .or_insert_with(|| cell.clone())
                .clone();
            m
        });
        out
    }

    pub fn is_frozen(&self, project: &str) -> bool {
        self.frozen.load().contains(project)
    }

    /// The kill switch: effective for the next request, persisted through the store.
    pub fn set_frozen(&self, project: &str, frozen: bool) {
        self.frozen.rcu(|s| {
            let mut s = HashSet::clone(s);
            if frozen {
                s.insert(project.to_string());
            } else {
                s.remove(project);
            }
            s
        });
        if let Some(st) = &self.store {
            st.send(Write::Freeze {
                project: project.to_string(),
                frozen,
                time_ms: crate::clock::unix_ms(),
            });
        }
    }

    /// Admit a request whose worst case is `amount`, atomically against the project's budget.
    /// Projects without a budget get a reservation too, so their spend is still recorded.
    pub fn reserve(&self, project: &Project, amount: Nanos) -> Result<Reservation, GatewayError> {
        self.reserve_at(project, amount, (self.clock)())
    }

    /// [`Ledger::reserve`] at `now_unix` (Unix seconds).
    pub fn reserve_at(
        &self,
        project: &Project,
        amount: Nanos,
        now_unix: i64,
    ) -> Result<Reservation, GatewayError> {
        self.reserve_checked(project, amount, now_unix, true)
    }

    /// Fleet mode: the fleet checked the budget; this instance only keeps its own share of
    /// the spend (its SQLite record, and what it reports to a new fleet generation).
    /// (Never refused; a `Result` only because it shares the checked path.)
    pub fn reserve_unchecked(
        &self,
        project: &Project,
        amount: Nanos,
    ) -> Result<Reservation, GatewayError> {
        self.reserve_checked(project, amount, (self.clock)(), false)
    }

    fn reserve_checked(
        &self,
        project: &Project,
        amount: Nanos,
        now_unix: i64,
        check: bool,
    ) -> Result<Reservation, GatewayError> {
        let cell = self.cell(&project.id);
        let period = period_of(project);
        let remaining = {
            let mut a = lock(&cell);
            a.roll_at(period, now_unix);
            match project.budget.filter(|_| check) {
                Some(b) => {
                    a.admit(b.limit, amount).map_err(|r| {
                        GatewayError::BudgetExceeded(refusal_message(&project.id, b.period, &r))
                    })?;
                    Some(a.remaining(b.limit))
                }
                None => {
                    a.reserved = a.reserved.saturating_add(amount);
                    None
                }
            }
        };
        Ok(Reservation {
            cell,
            amount,
            remaining,
            store: self.store.clone(),
            clock: self.clock,
            period,
            settled: false,
        })
    }

    /// Fleet mode: this instance's spend in the project's current period, to report to a new
    /// fleet generation; bumps the account's snapshot count under the same lock, so every
    /// settle knows whether it was in the report (returns period key, spend, the new count).
    pub fn snapshot(&self, project: &Project) -> (String, Nanos, u64) {
        let cell = self.cell(&project.id);
        let mut a = lock(&cell);
        a.roll_at(period_of(project), (self.clock)());
        a.snapshots += 1;
        (a.period_key.to_string(), a.spent, a.snapshots)
    }

    /// Fleet mode: how many snapshots of the project's spend were taken.
    pub fn snapshots(&self, project: &Project) -> u64 {
        lock(&self.cell(&project.id)).snapshots
    }

    /// Fleet mode: the fleet's freeze flag, as heard from Redis: applied and recorded only
    /// when it differs from what this instance believes.
    pub fn set_frozen_from_fleet(&self, project: &str, frozen: bool) {
        if self.is_frozen(project) != frozen {
            self.set_frozen(project, frozen);
        }
    }

    pub fn store(&self) -> Option<&StoreHandle> {
        self.store.as_ref()
    }

    pub fn status(&self, project: &Project) -> ProjectStatus {
        self.status_at(project, (self.clock)())
    }

    /// [`Ledger::status`] at `now_unix` (Unix seconds): spend of the period current then.
    pub fn status_at(&self, project: &Project, now_unix: i64) -> ProjectStatus {
        let cell = self.cell(&project.id);
        let period = period_of(project);
        let a = {
            let mut a = lock(&cell);
            a.roll_at(period, now_unix);
            a.clone()
        };
        let limit = project.budget.map(|b| b.limit);
        ProjectStatus {
            id: project.id.clone(),
            period: period.as_str(),
            spent: a.spent,
            reserved: a.reserved,
            limit,
            remaining: limit.map(|l| a.remaining(l)),
            frozen: self.is_frozen(&project.id),
        }
    }

    pub fn record(&self, d: DecisionRecord) {
        if let Some(s) = &self.store {
            s.send(Write::Decision(Box::new(d)));
        }
    }
}

/// Projects without a budget still account per month, so the admin view shows a useful number.
pub fn period_of(p: &Project) -> Period {
    p.budget.map_or(Period::Month, |b| b.period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::budget::Budget;
    use crate::engine::config::Unpriced;

    /// 2026-12-01T00:00:00Z, a Tuesday: the first second of December.
    const DEC: i64 = 1_796_083_200;
    /// 2026-11-30T00:00:00Z, a Monday: the first second of a week.
    const MONDAY: i64 = DEC - 86_400;
    /// 2026-11-22T10:00:00Z.
    const NOV: i64 = 1_795_341_600;

    /// The clock of a ledger whose test passes every `now` itself: reading it is a bug.
    fn no_clock() -> i64 {
        panic!("this test passes time explicitly; the ledger must not read its clock")
    }

    fn project(id: &str, budget: Option<(u64, Period)>) -> Project {
        Project {
            id: id.into(),
            budget: budget.map(|(limit, period)| Budget {
                limit: Nanos(limit),
                period,
            }),
            rate_limit: None,
            allow_models: None,
            deny_models: Vec::new(),
            max_tokens: None,
            block_secrets: false,
            block_patterns: None,
            unpriced: Unpriced::Block,
        }
    }

    fn monthly(id: &str, limit: u64) -> Project {
        project(id, Some((limit, Period::Month)))
    }

    /// (spent, reserved) of `p` at `now`.
    fn numbers(l: &Ledger, p: &Project, now: i64) -> (Nanos, Nanos) {
        let s = l.status_at(p, now);
        (s.spent, s.reserved)
    }

    #[test]
    fn a_reservation_within_the_limit_holds_its_worst_case() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 100);
        let r = l.reserve_at(&p, Nanos(60), NOV).unwrap();
        assert_eq!(r.amount(), Nanos(60));
        assert_eq!(r.remaining(), Some(Nanos(40)), "limit minus what is held");
        assert_eq!(numbers(&l, &p, NOV), (Nanos(0), Nanos(60)));
        let exact = l.reserve_at(&p, Nanos(40), NOV).unwrap();
        assert_eq!(
            exact.remaining(),
            Some(Nanos::ZERO),
            "a worst case that exactly fills the budget is admitted"
        );
        let s = l.status_at(&p, NOV);
        assert_eq!(
            (s.period, s.limit, s.remaining),
            ("month", Some(Nanos(100)), Some(Nanos::ZERO))
        );
    }

    #[test]
    fn a_reservation_over_the_limit_is_refused_and_holds_nothing() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("checkout-bot", 100);
        let _held = l.reserve_at(&p, Nanos(70), NOV).unwrap();
        let e = match l.reserve_at(&p, Nanos(31), NOV) {
            Err(e) => e,
            Ok(_) => panic!("70 held + 31 asked is over a limit of 100"),
        };
        assert_eq!(e.code(), "budget_exceeded");
        assert!(
            e.message().contains("checkout-bot") && e.message().contains("month budget"),
            "the 402 names the project and the period: {}",
            e.message()
        );
        assert_eq!(
            numbers(&l, &p, NOV),
            (Nanos(0), Nanos(70)),
            "a refusal reserves nothing"
        );
        assert!(
            l.reserve_at(&p, Nanos(30), NOV).is_ok(),
            "what is left is still usable"
        );
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        const THREADS: usize = 8;
        const TRIES: usize = 100;
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 1_000);
        let barrier = std::sync::Barrier::new(THREADS);

        // Held, never settled: exactly limit / amount reservations fit, whatever the race.
        let held: Vec<Reservation> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let mut mine = Vec::new();
                        for _ in 0..TRIES {
                            match l.reserve_at(&p, Nanos(10), NOV) {
                                Ok(r) => mine.push(r),
                                Err(e) => assert_eq!(e.code(), "budget_exceeded"),
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 100, "1,000 / 10: no more, no fewer");
        assert_eq!(numbers(&l, &p, NOV), (Nanos(0), Nanos(1_000)));
        drop(held);
        assert_eq!(numbers(&l, &p, NOV), (Nanos(0), Nanos(0)));

        // Reserve and settle the full worst case while others race: spend ends exactly at
        // the limit and spent + reserved never passes it in between.
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..TRIES {
                        if let Ok(r) = l.reserve_at(&p, Nanos(10), NOV) {
                            assert_eq!(r.settle_at(Nanos(10), NOV), Nanos::ZERO);
                        }
                        let (spent, reserved) = numbers(&l, &p, NOV);
                        assert!(spent.0 + reserved.0 <= 1_000, "{spent:?} + {reserved:?}");
                    }
                });
            }
        });
        assert_eq!(numbers(&l, &p, NOV), (Nanos(1_000), Nanos(0)));
    }

    #[test]
    fn settle_releases_the_hold_and_charges_the_actual_cost() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 100);
        let r = l.reserve_at(&p, Nanos(80), NOV).unwrap();
        assert_eq!(
            r.settle_at(Nanos(25), NOV),
            Nanos::ZERO,
            "cheaper than the worst case: no overrun"
        );
        assert_eq!(numbers(&l, &p, NOV), (Nanos(25), Nanos(0)));
        assert_eq!(l.status_at(&p, NOV).remaining, Some(Nanos(75)));
        assert!(
            l.reserve_at(&p, Nanos(75), NOV).is_ok(),
            "settling below the worst case frees the difference"
        );
    }

    #[test]
    fn settling_above_the_worst_case_charges_the_truth_and_returns_the_overrun() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 120);
        let r = l.reserve_at(&p, Nanos(100), NOV).unwrap();
        assert_eq!(
            r.settle_at(Nanos(150), NOV),
            Nanos(50),
            "150 charged - 100 held"
        );
        let s = l.status_at(&p, NOV);
        assert_eq!(
            (s.spent, s.reserved, s.remaining),
            (Nanos(150), Nanos(0), Some(Nanos::ZERO)),
            "the truth is charged even past the limit; remaining saturates at 0"
        );
        assert!(
            l.reserve_at(&p, Nanos(1), NOV).is_err(),
            "the budget is spent"
        );
        let r = l.reserve_at(&monthly("q", 100), Nanos(10), NOV).unwrap();
        assert_eq!(
            r.settle_at(Nanos(10), NOV),
            Nanos::ZERO,
            "exactly the worst case"
        );
    }

    #[test]
    fn a_reservation_dropped_unsettled_releases_its_hold_and_charges_nothing() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 100);
        let r = l.reserve_at(&p, Nanos(100), NOV).unwrap();
        assert!(
            l.reserve_at(&p, Nanos(1), NOV).is_err(),
            "all of it is held"
        );
        drop(r); // an error path, a cancelled request, a panic
        assert_eq!(numbers(&l, &p, NOV), (Nanos(0), Nanos(0)));
        assert!(l.reserve_at(&p, Nanos(100), NOV).is_ok());
    }

    /// A reservation made in the last second of a period and settled in the first second of
    /// the next charges the new period; `carried` says whether earlier spend still counts.
    fn roll_over(period: Period, boundary: i64, carried: bool) {
        let l = Ledger::in_memory(no_clock);
        let p = project("p", Some((1_000, period)));
        let before = l.reserve_at(&p, Nanos(10), boundary - 60).unwrap();
        before.settle_at(Nanos(7), boundary - 60);
        let r = l.reserve_at(&p, Nanos(10), boundary - 1).unwrap();
        assert_eq!(numbers(&l, &p, boundary - 1), (Nanos(7), Nanos(10)));
        assert_eq!(r.settle_at(Nanos(4), boundary), Nanos::ZERO);
        let want = if carried { 11 } else { 4 };
        assert_eq!(
            numbers(&l, &p, boundary),
            (Nanos(want), Nanos(0)),
            "{period:?}: the hold is released and the cost charged to the period it settled in"
        );
    }

    #[test]
    fn a_reservation_settled_in_the_next_period_charges_the_new_one() {
        roll_over(Period::Day, DEC, false);
        roll_over(Period::Week, MONDAY, false);
        roll_over(Period::Month, DEC, false);
        roll_over(Period::Total, DEC, true);
        // Not a boundary for weeks or totals: the same period continues.
        roll_over(Period::Week, DEC, true);
        roll_over(Period::Month, MONDAY, true);
    }

    #[test]
    fn a_hold_carried_into_a_new_period_still_counts_against_it() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 100);
        let _held = l.reserve_at(&p, Nanos(60), DEC - 1).unwrap();
        assert!(
            l.reserve_at(&p, Nanos(41), DEC).is_err(),
            "the November request in flight may still cost 60 in December"
        );
        assert!(l.reserve_at(&p, Nanos(40), DEC).is_ok());
    }

    #[test]
    fn settle_charges_the_period_of_the_ledgers_clock() {
        fn december() -> i64 {
            DEC
        }
        let l = Ledger::in_memory(december);
        let p = monthly("p", 100);
        let r = l.reserve_at(&p, Nanos(10), DEC - 1).unwrap();
        r.settle(Nanos(9));
        assert_eq!(
            numbers(&l, &p, DEC),
            (Nanos(9), Nanos(0)),
            "settle reads the clock the reservation was given"
        );
        let r = l.reserve(&p, Nanos(91)).unwrap();
        assert_eq!(r.remaining(), Some(Nanos::ZERO));
        assert_eq!(l.status(&p).reserved, Nanos(91));
    }

    #[test]
    fn a_project_without_a_budget_still_accumulates_spend() {
        let l = Ledger::in_memory(no_clock);
        let p = project("free", None);
        let big = l.reserve_at(&p, Nanos(u64::MAX / 2), NOV).unwrap();
        assert_eq!(
            big.remaining(),
            None,
            "no budget, nothing remaining to report"
        );
        let r = l.reserve_at(&p, Nanos(u64::MAX / 2), NOV).unwrap();
        assert_eq!(
            l.status_at(&p, NOV).reserved,
            Nanos(u64::MAX - 1),
            "holds are still counted, for the admin view"
        );
        drop(big);
        assert_eq!(r.settle_at(Nanos(30), NOV), Nanos::ZERO);
        l.reserve_at(&p, Nanos(5), NOV)
            .unwrap()
            .settle_at(Nanos(12), NOV);
        let s = l.status_at(&p, NOV);
        assert_eq!(
            (s.period, s.spent, s.reserved, s.limit, s.remaining),
            ("month", Nanos(42), Nanos(0), None, None),
            "spend adds up; overruns of an unbudgeted project are reported like any other"
        );
        assert_eq!(
            l.status_at(&p, DEC).spent,
            Nanos::ZERO,
            "unbudgeted projects account per calendar month"
        );
    }

    #[test]
    fn freeze_blocks_the_project_until_unfrozen() {
        let l = Ledger::in_memory(no_clock);
        let p = monthly("p", 100);
        let other = monthly("other", 100);
        assert!(!l.is_frozen("p"));
        l.set_frozen("p", true);
        l.set_frozen("p", true);
        assert!(
            l.is_frozen("p"),
            "admission reads this and answers project_frozen"
        );
        assert!(l.status_at(&p, NOV).frozen);
        assert!(!l.is_frozen("other"), "a freeze is per project");
        assert!(!l.status_at(&other, NOV).frozen);
        l.set_frozen("p", false);
        assert!(!l.is_frozen("p"), "unfreeze lifts it at once");
        assert!(!l.status_at(&p, NOV).frozen);
    }

    #[test]
    fn settled_spend_reaches_the_store_under_the_period_it_was_charged_to() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, reader) = store::Store::open(
            &dir.path().join("l.db"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let l = Ledger {
            store: Some(handle.clone()),
            reader: Some(Arc::new(reader)),
            ..Ledger::in_memory(no_clock)
        };
        let p = monthly("p", 1_000);
        l.reserve_at(&p, Nanos(10), DEC - 60)
            .unwrap()
            .settle_at(Nanos(7), DEC - 60);
        l.reserve_at(&p, Nanos(10), DEC - 1)
            .unwrap()
            .settle_at(Nanos(4), DEC);
        drop(l.reserve_at(&p, Nanos(10), DEC).unwrap());
        l.set_frozen("p", true);
        handle.flush().unwrap();
        let r = l.reader().unwrap();
        assert_eq!(r.spend("p", "2026-11").unwrap(), 7);
        assert_eq!(
            r.spend("p", "2026-12").unwrap(),
            4,
            "charged where it settled"
        );
        assert_eq!(r.freezes().unwrap(), vec![("p".to_string(), true)]);
        assert_eq!(
            handle.stats().committed,
            3,
            "two spend writes and a freeze; a dropped hold writes nothing"
        );
        handle.shutdown().unwrap();
    }
}
