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
pub mod rollups;
pub mod store;
pub mod tail;

use foldhash::{HashMap, HashMapExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::engine::accounts::{self, AccountKind, AccountRef};
use crate::engine::budget::{Account, Budget, Period};
use crate::engine::config::{Config, Project, Team};
use crate::engine::error::GatewayError;
use crate::engine::pricing::Nanos;
pub use store::{DecisionFilter, DecisionRecord, Periods, Reader, StoreHandle, Write};

/// One account in one window, and its name, shared so that reservations and spend writes
/// copy a pointer rather than the string.
struct Slot {
    name: Arc<str>,
    period: Period,
    account: Mutex<Account>,
    /// The store's send count after this account's last spend write ([`StoreHandle::sent`]):
    /// an end user's account may leave memory only once the store has that much.
    last_seq: AtomicU64,
    /// Unix ms of the last reservation on it: recently used accounts are never evicted.
    last_used_ms: AtomicI64,
    /// Binary upgrade: this account's numbers went to the successor (written under the
    /// account's lock), so whatever settles on it from now on is sent there too.
    handed: std::sync::atomic::AtomicBool,
}

type Cell = Arc<Slot>;

/// Reads the wall clock: Unix seconds.
type Clock = fn() -> i64;

/// Where an account is kept in memory: its ledger name and window period.
type SlotKey = (Arc<str>, Period);

/// End users' accounts, sharded so that the first request of a new user locks one shard,
/// never all of them.
const USER_SHARDS: usize = 16;

/// Idle end-user accounts kept in memory before the idle ones are evicted (they are rebuilt
/// from the store on their next request). Accounts with a request in flight, or used in the
/// last [`USER_KEEP_MS`], are never evicted, so memory is bounded by this plus the users
/// active right now.
pub const MAX_IDLE_USERS: usize = 100_000;
const USER_KEEP_MS: i64 = 30_000;

#[derive(Default)]
struct UserShard {
    map: HashMap<SlotKey, Cell>,
    /// Sweep for idle accounts when the shard reaches this size.
    sweep_at: usize,
}

pub struct Ledger {
    /// The accounts the configuration names: projects' windows, teams', keys'.
    accounts: ArcSwap<HashMap<SlotKey, Cell>>,
    users: Vec<Mutex<UserShard>>,
    frozen: ArcSwap<HashSet<String>>,
    store: Option<StoreHandle>,
    reader: Option<Arc<Reader>>,
    clock: Clock,
    /// What every reservation shares with the ledger: the period keys cache and, after a
    /// hand-over, where settles of handed accounts go.
    shared: Arc<Shared>,
    /// [`MAX_IDLE_USERS`] (tests lower it).
    max_idle_users: usize,
    /// Binary upgrade: the successor admits from now on (see `crate::handover`).
    handed: std::sync::atomic::AtomicBool,
    /// The live tail of decision records (`GET /admin/decisions/stream`).
    pub tail: tail::Tail,
}

/// A settle of a reservation made before the hand-over, on the accounts whose numbers went to
/// the successor: it releases `amount` and charges `actual` there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    pub cells: Vec<(String, Period)>,
    pub amount: Nanos,
    pub actual: Nanos,
}

type CarrySink = Box<dyn Fn(Carried) + Send + Sync>;

struct Shared {
    /// The period keys spend is recorded under (day, week, month, total), for the UTC day
    /// they were built on.
    periods: ArcSwap<(i64, Periods)>,
    carry: std::sync::OnceLock<CarrySink>,
}

/// One account's numbers, as handed to a successor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellState {
    pub name: String,
    pub period: Period,
    pub period_key: String,
    pub spent: Nanos,
    pub reserved: Nanos,
}

/// The refusal a reservation answers once the ledger was handed over: the shell retries it
/// on the successor.
pub const HANDED_OVER: &str = "The ledger was handed over to the successor";

/// A poisoned account lock only means another request panicked mid-update of plain integers;
/// the numbers are still the best we have.
fn lock(cell: &Slot) -> MutexGuard<'_, Account> {
    cell.account.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_shard(m: &Mutex<UserShard>) -> MutexGuard<'_, UserShard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn slot(name: &str, period: Period, account: Account) -> Cell {
    Arc::new(Slot {
        name: Arc::from(name),
        period,
        account: Mutex::new(account),
        last_seq: AtomicU64::new(0),
        last_used_ms: AtomicI64::new(0),
        handed: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Every period spend is recorded in, so a window added later starts from the truth.
const RECORDED: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

fn period_keys(now_unix: i64) -> Periods {
    RECORDED
        .iter()
        .map(|p| Arc::<str>::from(p.key(now_unix)))
        .collect::<Vec<_>>()
        .into()
}

/// One account a reservation holds, and what it needs to refuse.
struct Held {
    cell: Cell,
    /// The limit, when this account has one and admission checks it.
    limit: Option<Nanos>,
    /// Index into the request's accounts (for the 402).
    at: usize,
}

/// Money held for one admitted request until it settles.
pub struct Reservation {
    /// The accounts held, in lock order.
    held: Vec<Held>,
    /// Every account the spend is recorded under (held or not), by ledger name.
    owners: Vec<Arc<str>>,
    /// Index into `held` of the project's primary window (its snapshot count goes to the
    /// fleet).
    primary: Option<usize>,
    amount: Nanos,
    /// The tightest budget left after this reservation (None: no budget).
    remaining: Option<Nanos>,
    store: Option<StoreHandle>,
    /// The ledger's clock: `settle` charges the period current when the request ends.
    clock: Clock,
    shared: Arc<Shared>,
    settled: bool,
}

impl Reservation {
    /// The worst case held for this request.
    pub fn amount(&self) -> Nanos {
        self.amount
    }

    /// The tightest budget left once this reservation was made, read under the same locks
    /// (None when no account of the request has a budget).
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

    /// [`Reservation::settle`], also returning the project account's snapshot count as the
    /// settle found it (fleet mode: was this spend in the last report to the fleet?).
    pub fn settle_seen(self, actual: Nanos) -> (Nanos, u64) {
        let now = (self.clock)();
        self.settle_seen_at(actual, now)
    }

    fn settle_seen_at(mut self, actual: Nanos, now_unix: i64) -> (Nanos, u64) {
        self.settled = true;
        let mut seen = 0;
        let mut handed = Vec::new();
        {
            // Every account at once, in lock order: a fleet snapshot of the project's accounts
            // sees all of this settle or none of it.
            let mut guards: Vec<MutexGuard<'_, Account>> =
                self.held.iter().map(|h| lock(&h.cell)).collect();
            for (i, (h, a)) in self.held.iter().zip(guards.iter_mut()).enumerate() {
                a.roll_at(h.cell.period, now_unix);
                a.settle(self.amount, actual);
                if Some(i) == self.primary {
                    seen = a.snapshots;
                }
                if h.cell.handed.load(Ordering::Relaxed) {
                    handed.push((h.cell.name.to_string(), h.cell.period));
                }
            }
        }
        self.carry(handed, actual);
        if let (true, Some(s)) = (actual > Nanos::ZERO, &self.store) {
            let periods = self.period_keys(now_unix);
            for owner in &self.owners {
                s.send(Write::Spend {
                    project: owner.clone(),
                    periods: periods.clone(),
                    add_nanos: actual.0,
                });
            }
            let mark = s.sent();
            for h in &self.held {
                h.cell.last_seq.store(mark, Ordering::SeqCst);
            }
        }
        (actual.saturating_sub(self.amount()), seen)
    }

    fn period_keys(&self, now_unix: i64) -> Periods {
        let day = now_unix.div_euclid(86_400);
        let cache = &self.shared.periods;
        let cur = cache.load();
        if cur.0 == day {
            return cur.1.clone();
        }
        let fresh = period_keys(now_unix);
        cache.store(Arc::new((day, fresh.clone())));
        fresh
    }

    /// After a hand-over: tell the successor what settled on the accounts it took over.
    fn carry(&self, handed: Vec<(String, Period)>, actual: Nanos) {
        if handed.is_empty() {
            return;
        }
        if let Some(sink) = self.shared.carry.get() {
            sink(Carried {
                cells: handed,
                amount: self.amount,
                actual,
            });
        }
    }
}

impl Drop for Reservation {
    /// Unsettled: release the hold and charge nothing. Holds do not belong to a period (they
    /// carry over a roll), so there is no period to find and no clock to read.
    fn drop(&mut self) {
        if !self.settled {
            let mut handed = Vec::new();
            {
                let mut guards: Vec<MutexGuard<'_, Account>> =
                    self.held.iter().map(|h| lock(&h.cell)).collect();
                for (h, a) in self.held.iter().zip(guards.iter_mut()) {
                    a.settle(self.amount, Nanos::ZERO);
                    if h.cell.handed.load(Ordering::Relaxed) {
                        handed.push((h.cell.name.to_string(), h.cell.period));
                    }
                }
            }
            self.carry(handed, Nanos::ZERO);
        }
    }
}

/// One window of an account for `/admin/projects` and `/admin/teams`.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowStatus {
    pub period: &'static str,
    pub limit: Nanos,
    pub spent: Nanos,
    pub reserved: Nanos,
    pub remaining: Nanos,
}

/// One project's numbers for `/admin/projects` and the budget gauge. The flat fields
/// describe the tightest window (the least remaining), or the calendar month when the
/// project has none.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectStatus {
    pub id: String,
    pub period: &'static str,
    pub spent: Nanos,
    pub reserved: Nanos,
    pub limit: Option<Nanos>,
    pub remaining: Option<Nanos>,
    pub frozen: bool,
    /// Every window of the project's own budget, in configuration order.
    pub budgets: Vec<WindowStatus>,
}

impl Ledger {
    /// A ledger on `store`, with accounts for `cfg`'s projects loaded from it.
    pub fn open(store: StoreHandle, reader: Reader, cfg: &Config) -> Result<Ledger, String> {
        let ledger = Ledger {
            store: Some(store),
            reader: Some(Arc::new(reader)),
            ..Ledger::bare(crate::clock::unix_secs)
        };
        ledger.load(cfg)?;
        Ok(ledger)
    }

    fn bare(clock: Clock) -> Ledger {
        Ledger {
            accounts: ArcSwap::from_pointee(HashMap::new()),
            users: (0..USER_SHARDS)
                .map(|_| Mutex::new(UserShard::default()))
                .collect(),
            frozen: ArcSwap::from_pointee(HashSet::new()),
            store: None,
            reader: None,
            clock,
            shared: Arc::new(Shared {
                periods: ArcSwap::from_pointee((i64::MIN, Arc::from(Vec::new()))),
                carry: std::sync::OnceLock::new(),
            }),
            max_idle_users: MAX_IDLE_USERS,
            handed: std::sync::atomic::AtomicBool::new(false),
            tail: tail::Tail::default(),
        }
    }

    /// A ledger that keeps nothing on disk, reading time from `clock` (unit tests; a test
    /// that passes every `now` to the `*_at` methods can give a clock that panics).
    #[cfg(test)]
    pub fn in_memory(clock: fn() -> i64) -> Ledger {
        Ledger::bare(clock)
    }

    pub fn reader(&self) -> Option<Arc<Reader>> {
        self.reader.clone()
    }

    /// Every account the configuration names (without end users), deduplicated.
    fn configured(cfg: &Config) -> Vec<SlotKey> {
        let mut out: Vec<SlotKey> = Vec::new();
        let mut add = |a: &AccountRef| {
            let k = (a.name.clone(), a.period());
            if !out.contains(&k) {
                out.push(k);
            }
        };
        for (i, p) in cfg.projects.iter().enumerate() {
            accounts::accounts(cfg, i, None, None)
                .iter()
                .for_each(&mut add);
            for k in 0..p.keys.len() {
                if let Some(a) = accounts::accounts(cfg, i, Some(k), None)
                    .iter()
                    .find(|a| a.kind == AccountKind::Key)
                {
                    add(a);
                }
            }
        }
        for t in &cfg.teams {
            for a in team_accounts(t) {
                add(&a);
            }
        }
        out
    }

    /// Create accounts for the configuration's projects, teams and keys that have none yet,
    /// reading their current-period spend and the freezes from the store. Blocking: called
    /// at start and from the reload task, never from a request phase. Existing accounts are
    /// kept as they are (a reload never resets spend); accounts the configuration no longer
    /// names are dropped (their spend stays in the store).
    pub fn load(&self, cfg: &Config) -> Result<(), String> {
        let now = (self.clock)();
        let current = self.accounts.load_full();
        let wanted = Ledger::configured(cfg);
        let missing: Vec<&SlotKey> = wanted
            .iter()
            .filter(|k| !current.contains_key(*k))
            .collect();
        let mut stored: HashMap<(String, String), u64> = HashMap::new();
        if let (Some(r), false) = (&self.reader, missing.is_empty()) {
            let keys: Vec<(String, String)> = missing
                .iter()
                .map(|(name, period)| (name.to_string(), period.key(now)))
                .collect();
            stored = r.all_spend_for(&keys)?.into_iter().collect();
        }
        let stale = current.keys().any(|k| !wanted.contains(k));
        if !missing.is_empty() || stale {
            let mut map: HashMap<SlotKey, Cell> = current
                .iter()
                .filter(|(k, _)| wanted.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (name, period) in missing {
                let key = period.key(now);
                let spent = stored
                    .get(&(name.to_string(), key.clone()))
                    .copied()
                    .unwrap_or(0);
                map.insert(
                    (name.clone(), *period),
                    slot(
                        name,
                        *period,
                        Account {
                            period_key: Arc::from(key),
                            spent: Nanos(spent),
                            ..Account::default()
                        },
                    ),
                );
            }
            // Accounts reserved on between the read and the swap (a reload swaps the config
            // before it loads): `cell` started them empty and reservations hold them, so they
            // stay, and the stored spend is added to them below, once.
            let mut kept: Vec<SlotKey> = Vec::new();
            self.accounts.rcu(|m| {
                kept.clear();
                let mut next = map.clone();
                for (k, v) in m.iter() {
                    if wanted.contains(k) && !current.contains_key(k) {
                        next.insert(k.clone(), v.clone());
                        kept.push(k.clone());
                    }
                }
                next
            });
            let now_map = self.accounts.load();
            for k in kept {
                let (Some(c), Some(n)) = (
                    now_map.get(&k),
                    stored.get(&(k.0.to_string(), k.1.key(now))),
                ) else {
                    continue;
                };
                let mut a = lock(c);
                a.roll_at(k.1, now);
                if *a.period_key == *k.1.key(now) {
                    a.spent = a.spent.saturating_add(Nanos(*n));
                }
            }
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

    /// A configured account's cell. One the last load did not see (only possible between a
    /// reload's swap and its load) starts empty rather than block on disk here.
    fn cell(&self, name: &str, period: Period) -> Cell {
        self.cell_of(&Arc::from(name), period)
    }

    /// [`Ledger::cell`] for a name already shared (a request's accounts): no allocation.
    fn cell_of(&self, name: &Arc<str>, period: Period) -> Cell {
        let key = (name.clone(), period);
        if let Some(c) = self.accounts.load().get(&key) {
            return c.clone();
        }
        let cell: Cell = slot(name, period, Account::default());
        let mut out = cell.clone();
        self.accounts.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m.entry(key.clone()).or_insert_with(|| cell.clone()).clone();
            m
        });
        out
    }

    fn shard(&self, key: &SlotKey) -> &Mutex<UserShard> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.users[(h as usize) % USER_SHARDS]
    }

    fn user_cell(&self, key: &SlotKey) -> Option<Cell> {
        lock_shard(self.shard(key)).map.get(key).cloned()
    }

    /// The end-user accounts with a budget among `accounts` that are not in memory: the
    /// shell loads them ([`Ledger::load_users`], blocking, off the request thread) before
    /// it reserves.
    pub fn missing_users(&self, accounts: &[AccountRef]) -> Vec<SlotKey> {
        accounts
            .iter()
            .filter(|a| a.kind == AccountKind::User && a.window.is_some())
            .map(|a| (a.name.clone(), a.period()))
            .filter(|k| self.user_cell(k).is_none())
            .collect()
    }

    /// Bring end users' accounts into memory from the store (their spend in the current
    /// period). Blocking: call it on a blocking thread. An account another request brought in
    /// meanwhile is kept as it is.
    pub fn load_users(&self, keys: &[SlotKey]) -> Result<(), String> {
        let now = (self.clock)();
        let wanted: Vec<(String, String)> = keys
            .iter()
            .map(|(name, period)| (name.to_string(), period.key(now)))
            .collect();
        let stored: HashMap<(String, String), u64> = match &self.reader {
            Some(r) => r.all_spend_for(&wanted)?.into_iter().collect(),
            None => HashMap::new(),
        };
        let now_ms = now.saturating_mul(1000);
        for ((name, period), pk) in keys.iter().zip(wanted) {
            let spent = stored.get(&pk).copied().unwrap_or(0);
            let key = (name.clone(), *period);
            let mut shard = lock_shard(self.shard(&key));
            if shard.map.contains_key(&key) {
                continue;
            }
            if shard.map.len() >= shard.sweep_at {
                self.sweep(&mut shard, now_ms);
            }
            let cell = slot(
                name,
                *period,
                Account {
                    period_key: Arc::from(pk.1),
                    spent: Nanos(spent),
                    ..Account::default()
                },
            );
            cell.last_used_ms.store(now_ms, Ordering::Relaxed);
            shard.map.insert(key, cell);
        }
        Ok(())
    }

    /// Evict idle end-user accounts from a shard: no reservation holds them, none was made in
    /// the last [`USER_KEEP_MS`], and the store has every spend write they sent (so rebuilding
    /// from it gives the same number). Without a store nothing could rebuild them: kept.
    fn sweep(&self, shard: &mut UserShard, now_ms: i64) {
        let floor = self.max_idle_users / USER_SHARDS;
        if let Some(store) = &self.store {
            let processed = store.processed();
            shard.map.retain(|_, c| {
                Arc::strong_count(c) > 1
                    || c.last_seq.load(Ordering::SeqCst) > processed
                    || now_ms.saturating_sub(c.last_used_ms.load(Ordering::Relaxed)) < USER_KEEP_MS
            });
        }
        shard.sweep_at = floor.max(shard.map.len().saturating_mul(2));
    }

    /// End-user accounts in memory now (tests and the admin view).
    #[cfg(test)]
    pub fn users_in_memory(&self) -> usize {
        self.users.iter().map(|s| lock_shard(s).map.len()).sum()
    }

    /// Binary upgrade, the predecessor's side: from now on every checked reservation is
    /// refused with [`HANDED_OVER`] (the shell makes it on the successor), and each account's
    /// numbers are read and marked under its lock, so a reservation made before settles its
    /// marked accounts through the carry sink ([`Ledger::set_carry`]). Returns the numbers.
    pub fn hand_over(&self) -> Vec<CellState> {
        self.handed.store(true, Ordering::SeqCst);
        self.all_cells()
            .iter()
            .map(|c| {
                let a = lock(c);
                c.handed.store(true, Ordering::Relaxed);
                CellState {
                    name: c.name.to_string(),
                    period: c.period,
                    period_key: a.period_key.to_string(),
                    spent: a.spent,
                    reserved: a.reserved,
                }
            })
            .collect()
    }

    /// The hand-over failed before the successor took the numbers: admit here again.
    pub fn undo_hand_over(&self) {
        self.handed.store(false, Ordering::SeqCst);
        for c in self.all_cells() {
            let _a = lock(&c);
            c.handed.store(false, Ordering::Relaxed);
        }
    }

    /// Every account in memory: the configured ones and the end users'.
    fn all_cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self.accounts.load().values().cloned().collect();
        for shard in &self.users {
            cells.extend(lock_shard(shard).map.values().cloned());
        }
        cells
    }

    pub fn is_handed_over(&self) -> bool {
        self.handed.load(Ordering::Acquire)
    }

    /// Where settles on handed accounts go (set once, before [`Ledger::hand_over`]).
    pub fn set_carry(&self, sink: CarrySink) {
        let _ = self.shared.carry.set(sink);
    }

    /// Binary upgrade, the successor's side: the predecessor's numbers replace what this
    /// process read from the store at its start (the predecessor kept charging since), and
    /// its requests in flight stay held here until their settles arrive ([`Ledger::apply_carried`]).
    pub fn take_over(&self, cells: &[CellState]) {
        let now = (self.clock)();
        for s in cells {
            let cell = self.any_cell(&s.name, s.period);
            let mut a = lock(&cell);
            a.roll_at(s.period, now);
            if *a.period_key == *s.period_key {
                a.spent = s.spent;
            }
            a.reserved = a.reserved.saturating_add(s.reserved);
        }
    }

    /// A predecessor's request settled: release its hold on the accounts it names and
    /// charge what it cost (the predecessor records the spend in the store itself).
    pub fn apply_carried(&self, c: &Carried) {
        let now = (self.clock)();
        for (name, period) in &c.cells {
            let cell = self.any_cell(name, *period);
            let mut a = lock(&cell);
            a.roll_at(*period, now);
            a.settle(c.amount, c.actual);
        }
    }

    /// A configured account's cell, or an end user's (made if missing, empty: the successor's
    /// hand-over gives its numbers).
    fn any_cell(&self, name: &str, period: Period) -> Cell {
        let name: Arc<str> = Arc::from(name);
        if !name.starts_with("user:") {
            return self.cell_of(&name, period);
        }
        let key = (name.clone(), period);
        let mut shard = lock_shard(self.shard(&key));
        shard
            .map
            .entry(key)
            .or_insert_with(|| slot(&name, period, Account::default()))
            .clone()
    }

    /// Every frozen project.
    pub fn frozen_list(&self) -> Vec<String> {
        self.frozen.load().iter().cloned().collect()
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

    /// Admit a request of `project` whose worst case is `amount`, charged to its project
    /// account(s) only (no key, no user). Tests and callers that know no more.
    #[cfg(test)]
    pub fn reserve(&self, project: &Project, amount: Nanos) -> Result<Reservation, GatewayError> {
        self.reserve_at(project, amount, (self.clock)())
    }

    /// [`Ledger::reserve`] at `now_unix` (Unix seconds).
    #[cfg(test)]
    pub fn reserve_at(
        &self,
        project: &Project,
        amount: Nanos,
        now_unix: i64,
    ) -> Result<Reservation, GatewayError> {
        let accounts = project_accounts(project);
        self.reserve_on(&project.id, &accounts, amount, now_unix, true)
    }

    /// Admit a request whose worst case is `amount` on every one of `accounts` at once
    /// ([`accounts::accounts`]), all or nothing: each account's lock is taken in one fixed
    /// order (by name, then period), every limit is checked, and only then is the worst
    /// case added to all of them. The first account (in the request's order) that cannot
    /// cover it refuses with its 402. Accounts without a limit get the reservation too, so
    /// their spend is still recorded.
    pub fn reserve_accounts(
        &self,
        project: &str,
        accounts: &[AccountRef],
        amount: Nanos,
    ) -> Result<Reservation, GatewayError> {
        self.reserve_on(project, accounts, amount, (self.clock)(), true)
    }

    /// [`Ledger::reserve_accounts`] at `now_unix`.
    #[cfg(test)]
    pub fn reserve_accounts_at(
        &self,
        project: &str,
        accounts: &[AccountRef],
        amount: Nanos,
        now_unix: i64,
    ) -> Result<Reservation, GatewayError> {
        self.reserve_on(project, accounts, amount, now_unix, true)
    }

    /// Fleet mode: the fleet checked the budgets; this instance only keeps its own share of
    /// the spend (its SQLite record, and what it reports to a new fleet generation).
    pub fn reserve_unchecked(
        &self,
        project: &str,
        accounts: &[AccountRef],
        amount: Nanos,
    ) -> Result<Reservation, GatewayError> {
        self.reserve_on(project, accounts, amount, (self.clock)(), false)
    }

    fn reserve_on(
        &self,
        project: &str,
        accounts: &[AccountRef],
        amount: Nanos,
        now_unix: i64,
        check: bool,
    ) -> Result<Reservation, GatewayError> {
        let now_ms = now_unix.saturating_mul(1000);
        let mut held: Vec<Held> = Vec::with_capacity(accounts.len());
        let mut owners: Vec<Arc<str>> = Vec::with_capacity(accounts.len());
        let mut primary = None;
        for (at, a) in accounts.iter().enumerate() {
            let period = a.period();
            let cell = match a.kind {
                // Unchecked (the fleet decided): an end user not in memory only needs its
                // spend written.
                AccountKind::User if a.window.is_none() || !check => {
                    self.user_cell(&(a.name.clone(), period))
                }
                AccountKind::User => {
                    let key = (a.name.clone(), period);
                    match self.user_cell(&key) {
                        Some(c) => Some(c),
                        None if self.reader.is_none() => {
                            // Nothing to rebuild from: a new user starts at zero.
                            self.load_users(std::slice::from_ref(&key))
                                .map_err(GatewayError::Internal)?;
                            self.user_cell(&key)
                        }
                        None => {
                            return Err(GatewayError::LedgerUnavailable(format!(
                                "The spend of end user {} could not be read in time",
                                crate::engine::admission::truncate(&a.id, 64)
                            )))
                        }
                    }
                }
                _ => Some(self.cell_of(&a.name, period)),
            };
            match cell {
                Some(cell) => {
                    if !owners.iter().any(|o| **o == *cell.name) {
                        owners.push(cell.name.clone());
                    }
                    if a.kind == AccountKind::Project && primary.is_none() {
                        primary = Some(held.len());
                    }
                    cell.last_used_ms.store(now_ms, Ordering::Relaxed);
                    held.push(Held {
                        cell,
                        limit: a.window.filter(|_| check).map(|w| w.limit),
                        at,
                    });
                }
                None => {
                    if !owners.iter().any(|o| **o == *a.name) {
                        owners.push(a.name.clone());
                    }
                }
            }
        }
        // One fixed lock order for every request: no two can wait on each other. The held
        // accounts are kept in it, so settle and release take their locks the same way.
        let primary_cell = primary.map(|i| held[i].cell.clone());
        held.sort_by(|a, b| (&*a.cell.name, a.cell.period).cmp(&(&*b.cell.name, b.cell.period)));
        let primary = primary_cell.and_then(|c| held.iter().position(|h| Arc::ptr_eq(&h.cell, &c)));
        let mut guards: Vec<(usize, MutexGuard<'_, Account>)> =
            (0..held.len()).map(|i| (i, lock(&held[i].cell))).collect();
        if check && self.handed.load(Ordering::SeqCst) {
            // Handed over while this request looked for its accounts: the successor decides.
            return Err(GatewayError::LedgerUnavailable(HANDED_OVER.into()));
        }
        let mut refusal: Option<(usize, Period, crate::engine::budget::Refusal)> = None;
        for (i, g) in guards.iter_mut() {
            let h = &held[*i];
            g.roll_at(h.cell.period, now_unix);
            if let Some(limit) = h.limit {
                if let Err(r) = g.fits(limit, amount) {
                    if refusal.as_ref().is_none_or(|(at, ..)| h.at < *at) {
                        refusal = Some((h.at, h.cell.period, r));
                    }
                }
            }
        }
        if let Some((at, period, r)) = refusal {
            // Nothing was added anywhere: nothing to release.
            drop(guards);
            return Err(accounts::refused(&accounts[at], project, period, &r));
        }
        let mut remaining: Option<Nanos> = None;
        for (i, g) in guards.iter_mut() {
            g.reserved = g.reserved.saturating_add(amount);
            if let Some(limit) = held[*i].limit {
                let left = g.remaining(limit);
                remaining = Some(remaining.map_or(left, |r| r.min(left)));
            }
        }
        drop(guards);
        Ok(Reservation {
            held,
            owners,
            primary,
            amount,
            remaining,
            store: self.store.clone(),
            clock: self.clock,
            shared: self.shared.clone(),
            settled: false,
        })
    }

    /// Fleet mode: this instance's spend on each of `accounts` (configured accounts of
    /// `project`: its windows and its keys'; the first is its primary window), read under all
    /// their locks at once while the primary window's snapshot count is bumped, so each
    /// settle's count says whether all of its spend was in the report, or none of it.
    pub fn snapshot_accounts(&self, project: &Project, list: &[AccountRef]) -> (Vec<Nanos>, u64) {
        let now = (self.clock)();
        let cells: Vec<Cell> = list
            .iter()
            .map(|a| self.cell(&a.name, a.period()))
            .collect();
        let primary = self.cell(&project.id, project.primary_period());
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by(|&x, &y| {
            (&*cells[x].name, cells[x].period).cmp(&(&*cells[y].name, cells[y].period))
        });
        order.dedup_by(|x, y| Arc::ptr_eq(&cells[*x], &cells[*y]));
        let mut spent = vec![Nanos::ZERO; cells.len()];
        let mut count = 0;
        {
            let mut guards: Vec<(usize, MutexGuard<'_, Account>)> =
                order.iter().map(|&i| (i, lock(&cells[i]))).collect();
            for (i, a) in guards.iter_mut() {
                a.roll_at(cells[*i].period, now);
                if Arc::ptr_eq(&cells[*i], &primary) {
                    a.snapshots += 1;
                    count = a.snapshots;
                }
            }
            for (i, a) in &guards {
                spent[*i] = a.spent;
            }
        }
        for (i, c) in cells.iter().enumerate() {
            if let Some(j) = order.iter().find(|&&j| Arc::ptr_eq(&cells[j], c)) {
                spent[i] = spent[*j];
            }
        }
        (spent, count)
    }

    /// Fleet mode: how many snapshots of the project's spend were taken.
    pub fn snapshots(&self, project: &Project) -> u64 {
        lock(&self.cell(&project.id, project.primary_period())).snapshots
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

    /// One account's numbers in one window, as of `now_unix`.
    pub fn window_at(&self, name: &str, window: Budget, now_unix: i64) -> WindowStatus {
        let a = {
            let cell = self.cell(name, window.period);
            let mut a = lock(&cell);
            a.roll_at(window.period, now_unix);
            a.clone()
        };
        WindowStatus {
            period: window.period.as_str(),
            limit: window.limit,
            spent: a.spent,
            reserved: a.reserved,
            remaining: a.remaining(window.limit),
        }
    }

    /// A team's windows (`/admin/teams`).
    pub fn team_status(&self, team: &Team) -> Vec<WindowStatus> {
        let now = (self.clock)();
        let name = accounts::ledger_name(AccountKind::Team, "", &team.id);
        team.budgets
            .iter()
            .map(|w| self.window_at(&name, *w, now))
            .collect()
    }

    /// A team without a window: its spend and holds in the calendar month.
    pub fn team_month(&self, team: &Team) -> (Nanos, Nanos) {
        let name = accounts::ledger_name(AccountKind::Team, "", &team.id);
        let cell = self.cell(&name, Period::Month);
        let mut a = lock(&cell);
        a.roll_at(Period::Month, (self.clock)());
        (a.spent, a.reserved)
    }

    /// End users in memory whose ledger name starts with `prefix`, in `period`, after the id
    /// `after` (exclusive), in id order, at most `limit`: (id, spent, reserved).
    pub fn users_with_prefix(
        &self,
        prefix: &str,
        period: Period,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Nanos, Nanos)> {
        let now = (self.clock)();
        let mut cells: Vec<(String, Cell)> = Vec::new();
        for shard in &self.users {
            let sh = lock_shard(shard);
            for ((name, p), c) in sh.map.iter() {
                if *p != period {
                    continue;
                }
                if let Some(id) = name.strip_prefix(prefix) {
                    if after.is_none_or(|a| id > a) {
                        cells.push((id.to_string(), c.clone()));
                    }
                }
            }
        }
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        cells.truncate(limit);
        cells
            .into_iter()
            .map(|(id, c)| {
                let mut a = lock(&c);
                a.roll_at(period, now);
                (id, a.spent, a.reserved)
            })
            .collect()
    }

    /// An end user's numbers in the project's `user_budget` window, if the user is in memory
    /// (spent, reserved); `None`: not in memory (the store has the spend).
    #[cfg(test)]
    pub fn user_in_memory(&self, name: &str, period: Period) -> Option<(Nanos, Nanos)> {
        let cell = self.user_cell(&(Arc::from(name), period))?;
        let mut a = lock(&cell);
        a.roll_at(period, (self.clock)());
        Some((a.spent, a.reserved))
    }

    pub fn status(&self, project: &Project) -> ProjectStatus {
        self.status_at(project, (self.clock)())
    }

    /// [`Ledger::status`] at `now_unix` (Unix seconds): spend of the periods current then.
    pub fn status_at(&self, project: &Project, now_unix: i64) -> ProjectStatus {
        let budgets: Vec<WindowStatus> = project
            .budgets
            .iter()
            .map(|w| self.window_at(&project.id, *w, now_unix))
            .collect();
        let frozen = self.is_frozen(&project.id);
        match budgets.iter().min_by_key(|w| w.remaining) {
            Some(t) => ProjectStatus {
                id: project.id.clone(),
                period: t.period,
                spent: t.spent,
                reserved: t.reserved,
                limit: Some(t.limit),
                remaining: Some(t.remaining),
                frozen,
                budgets: budgets.clone(),
            },
            None => {
                let cell = self.cell(&project.id, Period::Month);
                let a = {
                    let mut a = lock(&cell);
                    a.roll_at(Period::Month, now_unix);
                    a.clone()
                };
                ProjectStatus {
                    id: project.id.clone(),
                    period: Period::Month.as_str(),
                    spent: a.spent,
                    reserved: a.reserved,
                    limit: None,
                    remaining: None,
                    frozen,
                    budgets,
                }
            }
        }
    }

    pub fn record(&self, d: DecisionRecord) {
        self.tail.publish(&d);
        if let Some(s) = &self.store {
            s.send(Write::Decision(Box::new(d)));
        }
    }
}

/// A project's own accounts: each window, or an unlimited monthly one when it has none.
pub fn project_accounts(p: &Project) -> Vec<AccountRef> {
    accounts::windows(AccountKind::Project, &p.id, &p.id, &p.budgets)
}

/// A team's accounts: each window, or an unlimited monthly one when it has none.
fn team_accounts(t: &Team) -> Vec<AccountRef> {
    accounts::windows(AccountKind::Team, "", &t.id, &t.budgets)
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
            budgets: budget
                .map(|(limit, period)| Budget {
                    limit: Nanos(limit),
                    period,
                })
                .into_iter()
                .collect(),
            team: None,
            keys: Vec::new(),
            user_budget: None,
            rate_limit: None,
            allow_models: None,
            deny_models: Vec::new(),
            max_tokens: None,
            block_secrets: false,
            block_patterns: None,
            unpriced: Unpriced::Block,
            cache_ttl: None,
            report_cost: false,
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

    fn window(kind: AccountKind, id: &str, limit: u64, period: Period) -> AccountRef {
        AccountRef {
            kind,
            id: id.into(),
            name: accounts::ledger_name(kind, "p", id).into(),
            window: Some(Budget {
                limit: Nanos(limit),
                period,
            }),
        }
    }

    fn nov() -> i64 {
        NOV
    }

    #[test]
    fn every_account_is_reserved_at_once_and_the_first_that_cannot_cover_refuses() {
        let l = Ledger::in_memory(nov);
        let accounts = vec![
            window(AccountKind::Project, "p", 1_000, Period::Month),
            window(AccountKind::Project, "p", 100, Period::Day),
            window(AccountKind::Team, "pay", 500, Period::Month),
            window(AccountKind::Key, "ci", 60, Period::Week),
            window(AccountKind::User, "alice", 1_000, Period::Day),
        ];
        let a = l
            .reserve_accounts_at("p", &accounts, Nanos(50), NOV)
            .unwrap();
        assert_eq!(
            a.remaining(),
            Some(Nanos(10)),
            "the tightest: the key's 60 − 50"
        );
        let e = match l.reserve_accounts_at("p", &accounts, Nanos(20), NOV) {
            Err(e) => e,
            Ok(_) => panic!("the key has 10 left"),
        };
        assert_eq!(e.code(), "key_budget_exceeded");
        assert!(
            e.message().starts_with("Key ci of project p")
                && e.message().contains("week budget of $0.00"),
            "{}",
            e.message()
        );
        // Nothing was held anywhere by the refusal: the day window still has 50 of 100.
        let day_only = vec![window(AccountKind::Project, "p", 100, Period::Day)];
        let b = l
            .reserve_accounts_at("p", &day_only, Nanos(50), NOV)
            .unwrap();
        assert!(l
            .reserve_accounts_at("p", &day_only, Nanos(1), NOV)
            .is_err());
        // The day refuses before the key when both would (request order).
        let e = match l.reserve_accounts_at("p", &accounts, Nanos(20), NOV) {
            Err(e) => e,
            Ok(_) => panic!("the day is full"),
        };
        assert_eq!(e.code(), "budget_exceeded");
        assert!(e.message().contains("day budget"), "{}", e.message());
        drop(b);
        assert_eq!(a.settle_at(Nanos(30), NOV), Nanos::ZERO);
        let team = &accounts[2];
        let s = l.window_at(&team.name, team.window.unwrap(), NOV);
        assert_eq!((s.spent, s.reserved), (Nanos(30), Nanos(0)));
        let u = l.user_in_memory("user:p/alice", Period::Day);
        assert_eq!(
            u,
            Some((Nanos(30), Nanos(0))),
            "without a store a new user starts at 0"
        );
    }

    #[test]
    fn a_team_shared_by_two_projects_is_never_passed_by_concurrent_requests() {
        const THREADS: usize = 8;
        let l = Ledger::in_memory(no_clock);
        let team = |_: &str| AccountRef {
            kind: AccountKind::Team,
            id: "pay".into(),
            name: "team:pay".into(),
            window: Some(Budget {
                limit: Nanos(50),
                period: Period::Month,
            }),
        };
        let own = |p: &str| AccountRef {
            kind: AccountKind::Project,
            id: p.into(),
            name: p.into(),
            window: Some(Budget {
                limit: Nanos(40),
                period: Period::Month,
            }),
        };
        let sets = [vec![own("a"), team("a")], vec![own("b"), team("b")]];
        let barrier = std::sync::Barrier::new(THREADS);
        let held: Vec<Reservation> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (l, sets, barrier) = (&l, &sets, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut mine = Vec::new();
                        for _ in 0..50 {
                            let set = &sets[t % 2];
                            match l.reserve_accounts_at(&set[0].id, set, Nanos(10), NOV) {
                                Ok(r) => mine.push(r),
                                Err(e) => assert!(
                                    ["budget_exceeded", "team_budget_exceeded"].contains(&e.code()),
                                    "{e}"
                                ),
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
        assert_eq!(
            held.len(),
            5,
            "the team fits five worst cases, whoever asks"
        );
        let t = l.window_at("team:pay", sets[0][1].window.unwrap(), NOV);
        assert_eq!(t.reserved, Nanos(50));
        for set in &sets {
            let p = l.window_at(&set[0].name, set[0].window.unwrap(), NOV);
            assert!(p.reserved <= Nanos(40), "{p:?}");
        }
        drop(held);
        assert_eq!(
            l.window_at("team:pay", sets[0][1].window.unwrap(), NOV)
                .reserved,
            Nanos(0)
        );
    }

    #[test]
    fn an_end_users_spend_survives_eviction_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let open = || {
            let (handle, reader) =
                store::Store::open(&path, std::time::Duration::from_secs(3600)).unwrap();
            let l = Ledger {
                store: Some(handle.clone()),
                reader: Some(Arc::new(reader)),
                max_idle_users: USER_SHARDS, // one idle user per shard
                ..Ledger::in_memory(nov)
            };
            (l, handle)
        };
        let (l, handle) = open();
        let users: Vec<AccountRef> = (0..40)
            .map(|i| window(AccountKind::User, &format!("u{i}"), 100, Period::Day))
            .collect();
        for u in &users {
            let set = std::slice::from_ref(u);
            assert_eq!(l.missing_users(set).len(), 1);
            l.load_users(&l.missing_users(set)).unwrap();
            l.reserve_accounts_at("p", set, Nanos(60), NOV)
                .unwrap()
                .settle_at(Nanos(60), NOV);
        }
        handle.flush().unwrap();
        // Recently used users stay; past the keep time, idle ones go once the store has them.
        assert_eq!(l.users_in_memory(), 40);
        for shard in &l.users {
            let mut sh = lock_shard(shard);
            l.sweep(&mut sh, NOV * 1000 + USER_KEEP_MS + 1);
        }
        assert_eq!(l.users_in_memory(), 0, "idle and stored: evicted");
        let u0 = std::slice::from_ref(&users[0]);
        l.load_users(&l.missing_users(u0)).unwrap();
        let e = match l.reserve_accounts_at("p", u0, Nanos(60), NOV) {
            Err(e) => e,
            Ok(_) => panic!("u0 spent 60 of 100 before it was evicted"),
        };
        assert_eq!(e.code(), "user_budget_exceeded");
        assert!(
            e.message().starts_with("User u0 of project p"),
            "{}",
            e.message()
        );
        let held = l.reserve_accounts_at("p", u0, Nanos(40), NOV).unwrap();
        for shard in &l.users {
            let mut sh = lock_shard(shard);
            l.sweep(&mut sh, NOV * 1000 + 10 * USER_KEEP_MS);
        }
        assert_eq!(
            l.users_in_memory(),
            1,
            "a user with a request in flight stays"
        );
        drop(held);
        handle.shutdown().unwrap();
        drop(l);
        let (l, handle) = open();
        let u1 = std::slice::from_ref(&users[1]);
        l.load_users(&l.missing_users(u1)).unwrap();
        assert!(
            l.reserve_accounts_at("p", u1, Nanos(41), NOV).is_err(),
            "the restart read u1's 60"
        );
        assert!(l.reserve_accounts_at("p", u1, Nanos(40), NOV).is_ok());
        assert_eq!(
            l.reader().unwrap().spend("user:p/u1", "2026-11").unwrap(),
            60,
            "recorded in every period, the month too"
        );
        handle.shutdown().unwrap();
    }

    #[test]
    fn accounts_without_a_limit_still_record_spend_in_every_period() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, reader) = store::Store::open(
            &dir.path().join("l.db"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let l = Ledger {
            store: Some(handle.clone()),
            reader: Some(Arc::new(reader)),
            ..Ledger::in_memory(nov)
        };
        let free = |kind, id: &str| AccountRef {
            kind,
            id: id.into(),
            name: accounts::ledger_name(kind, "p", id).into(),
            window: None,
        };
        let set = vec![
            free(AccountKind::Project, "p"),
            free(AccountKind::Team, "pay"),
            free(AccountKind::Key, "ci"),
            free(AccountKind::User, "bob"),
        ];
        let r = l.reserve_accounts_at("p", &set, Nanos(10), NOV).unwrap();
        assert_eq!(r.remaining(), None);
        r.settle_at(Nanos(7), NOV);
        handle.flush().unwrap();
        let rd = l.reader().unwrap();
        for name in ["p", "team:pay", "key:p/ci", "user:p/bob"] {
            for period in ["2026-11-22", "week-of-2026-11-16", "2026-11", "total"] {
                assert_eq!(rd.spend(name, period).unwrap(), 7, "{name} {period}");
            }
        }
        assert_eq!(
            l.users_in_memory(),
            0,
            "a user without a budget needs no memory"
        );
        handle.shutdown().unwrap();
    }
}
