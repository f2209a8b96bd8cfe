//! This instance's side of the fleet: it admits requests against the shared Redis (one hold
//! per request), settles them through a queue kept in the local SQLite ledger, joins each
//! Redis generation with its own spend, follows freezes, and announces itself.
//!
//! Everything that talks to Redis runs with the store's deadline (`[fleet] timeout_ms`). The
//! background work (connect, generation check and join, heartbeat, freeze poll, settle replay,
//! the decision stream) runs on a runtime of its own, one thread, so nothing here depends on
//! Pingora's runtimes; a request's reserve is awaited on the request's task (the connection is
//! multiplexed and shared).
//!
//! The rules that keep a budget exact:
//! - a budgeted or rate-limited request is forwarded only after Redis answered its reserve
//!   with a hold, in the generation this instance has joined; any other outcome (refused,
//!   unreachable, timed out, rebuilding) is answered here, and an unknown outcome is settled
//!   to 0 later so a hold that did get made is released;
//! - every settle is written to SQLite (`fleet_settles`) before it is sent, and deleted once
//!   Redis applied it; what is left is replayed until it is applied (each is idempotent by hold
//!   id), also by the next process after a crash;
//! - a settle carries the generation its spend belongs to: if that generation is gone, the
//!   spend was already carried into the new one by this instance's join report, so Redis skips
//!   it (see [`Tags`]).
//!
//! Must not import `pingora` or the proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};

use super::keys::{AccountKind, ProjectKeys};
use super::text;
use super::{
    AccountActual, AccountHold, FleetConfig as StoreConfig, FleetError, FleetStore, Joined,
    RateAdd, RateCheck, Reservation as Answered, Settlement,
};
use crate::engine::accounts::AccountRef;
use crate::engine::budget::Refusal;
use crate::engine::config::{Config, FleetConfig, Project};
use crate::engine::error::{GatewayError, PolicyCode};
use crate::engine::pricing::Nanos;
use crate::ledger::store::Write;
use crate::ledger::Ledger;

/// Rate windows are minutes; a window key outlives the minute after it (the sliding estimate
/// reads the previous one).
const RATE_EXPIRE_S: u32 = 180;
/// How often the background loop checks the generation, beats, polls freezes and replays.
const TICK: Duration = Duration::from_millis(500);
/// Settles replayed per tick at most.
const REPLAY_BATCH: usize = 512;
/// Records per stream entry at most, and how long the writer waits for a burst to fill one.
const STREAM_BATCH: usize = 64;
const STREAM_LINGER: Duration = Duration::from_millis(20);
/// Stream entries kept (approximately: `MAXLEN ~`): at least this many recent records, and
/// at most [`STREAM_BATCH`] times as many.
pub const STREAM_MAX_ENTRIES: usize = 1_000;
/// Ticks between two reaps of every project's expired holds (every 5 s).
const REAP_EVERY: u32 = 10;
/// Instances not seen for this long are dropped from `/admin/fleet`.
const FORGET_INSTANCE_MS: i64 = 3_600_000;

pub const STREAM_KEY: &str = "tg:decisions";
pub const INSTANCES_KEY: &str = "tg:instances";
/// The pub/sub channel of freezes (see tg_freeze).
pub const EVENTS: &str = "tg:events";
/// A lease's hold lives this long in Redis; the instance stops admitting on it well before.
const LEASE_TTL_S: u32 = 60;
const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// A lease is replaced by a fresh one (sized to the current demand) this often.
const LEASE_ROTATE: Duration = Duration::from_secs(10);
/// A lease nobody admitted on for this long goes back to the pool.
const LEASE_IDLE_MS: i64 = 2_000;
/// A slice covers this many ticks of demand (20 × 0.5 s: about ten seconds).
const LEASE_TICKS_OF_DEMAND: u64 = 20;

/// The generation each snapshot of a project's spend was reported into: a settle that saw
/// snapshot count `s` belongs to the generation of the last snapshot `<= s` (the one its
/// spend was, or will be, counted in). Before any snapshot, the spend belongs to no
/// generation of the fleet: it is carried in by the first join.
#[derive(Clone, Default)]
struct Tags {
    by_project: HashMap<String, Vec<(u64, Arc<String>)>>,
}

impl Tags {
    fn tag(&self, project: &str, seen: u64) -> Option<Arc<String>> {
        self.by_project
            .get(project)?
            .iter()
            .rev()
            .find(|(s, _)| *s <= seen)
            .map(|(_, g)| g.clone())
    }
}

/// The Redis budget key of one account of a request in its window, at `now` (Unix seconds).
fn account_key(keys: &ProjectKeys, a: &AccountRef, now: i64) -> String {
    match a.kind {
        AccountKind::Team => super::keys::team_budget(&a.id, a.period(), now),
        kind => keys.budget(kind, &a.id, a.period(), now),
    }
}

/// The accounts of a project whose spend on this instance a join reports to a new
/// generation: its own windows (the primary first) and its keys' windows, at most
/// [`super::MAX_ACCOUNTS`]. A team's windows (shared by several projects) and end users' are
/// not carried: after Redis loses its data they count again from what is spent after it.
fn join_accounts(p: &Project) -> Vec<AccountRef> {
    let mut out = crate::ledger::project_accounts(p);
    for k in &p.keys {
        if let Some(w) = k.budget {
            out.push(AccountRef {
                kind: AccountKind::Key,
                id: k.name.as_str().into(),
                name: crate::engine::accounts::ledger_name(AccountKind::Key, &p.id, &k.name).into(),
                window: Some(w),
            });
        }
    }
    if out.len() > super::MAX_ACCOUNTS {
        log::warn!(
            "fleet: project {} has more than {} budget windows with its keys; a rebuild carries the first {}",
            p.id,
            super::MAX_ACCOUNTS,
            super::MAX_ACCOUNTS
        );
        out.truncate(super::MAX_ACCOUNTS);
    }
    out
}

/// Why the fleet cannot admit a request that needs it.
fn unavailable(why: &str) -> GatewayError {
    GatewayError::LedgerUnavailable(format!(
        "The shared ledger (Redis) {why}; this request needs it (its project has a budget or a rate limit). Retry shortly."
    ))
}

pub struct Fleet {
    pub instance: String,
    settings: FleetConfig,
    rt: tokio::runtime::Handle,
    store: ArcSwapOption<FleetStore>,
    /// The generation this instance has joined (reported its ledger into); admission through
    /// Redis needs it to be the one in force.
    joined: ArcSwapOption<String>,
    tags: ArcSwap<Tags>,
    wake: tokio::sync::Notify,
    up: AtomicBool,
    ledger: Arc<Ledger>,
    config: Arc<ArcSwap<Config>>,
    in_flight: fn() -> i64,
    stream: tokio::sync::mpsc::Sender<String>,
    stream_rx: Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    /// Hold ids: instance + a counter (request ids are unique too, but a hold id must never
    /// repeat across restarts of this instance either, so it carries the start time).
    started_ms: i64,
    counter: AtomicU64,
    /// This fleet, for tasks it spawns (set right after construction).
    this: std::sync::OnceLock<std::sync::Weak<Fleet>>,
    /// Lease mode: each project's leases.
    leases: ArcSwap<HashMap<String, Arc<ProjectLeases>>>,
    /// Live instances (from the heartbeats): a slice is a share of what is left among them.
    peers: AtomicU64,
    /// Holds made at a join for requests in flight from a lost generation, released when the
    /// last of them ends (background task only).
    rebuild_holds: Mutex<Vec<RebuildHold>>,
}

/// What a settle sends to Redis, also the row kept in SQLite until Redis applied it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct SettleBody {
    project: String,
    id: String,
    keys: Vec<String>,
    actuals: Vec<u64>,
    /// tpm: the current minute's window key and the tokens to add.
    tpm: Option<(String, u64)>,
    /// The generation this spend belongs to; `None`: none yet (carried in by a join).
    tag: Option<String>,
}

/// A hold in Redis for one admitted request; settles itself to 0 if dropped unsettled.
pub struct FleetHold {
    fleet: Arc<Fleet>,
    id: String,
    project: String,
    /// The budget keys held, one per windowed account of the request.
    budget_keys: Vec<String>,
    tpm: bool,
    /// Budget left on the project after this hold (`None`: no budget, or not asked).
    pub remaining: Option<Nanos>,
    settled: bool,
    /// Admitted locally against this lease (holding `worst` of it), not by a hold of its own.
    lease: Option<(Arc<Lease>, u64)>,
    /// Counted in flight here (with its worst case) until it settles.
    open: Option<(Arc<OpenCounter>, u64)>,
}

/// A lease: a hold in Redis owned by this instance, which admits requests against it locally.
/// Admitting until it is retired (rotated, idle, frozen, or past its local deadline); settled
/// once, with what its requests cost, when the last of them finishes.
pub struct Lease {
    id: String,
    project: String,
    budget_key: String,
    granted: u64,
    /// The generation it was taken in.
    gen: Arc<String>,
    /// No admission after this (well before the hold expires in Redis).
    deadline: Instant,
    created: Instant,
    /// `false` for the spend batch of a project without a budget: nothing is held in Redis,
    /// the settle charges it.
    in_redis: bool,
    st: Mutex<LeaseUse>,
}

#[derive(Default)]
struct LeaseUse {
    in_flight: u64,
    /// Spend settled on this lease, by the generation it belongs to (see [`Tags`]).
    used: Vec<(Option<Arc<String>>, u64)>,
    retired: bool,
    closed: bool,
}

impl LeaseUse {
    fn used_total(&self) -> u64 {
        self.used
            .iter()
            .fold(0u64, |a, (_, n)| a.saturating_add(*n))
    }
}

struct RebuildHold {
    project: String,
    id: String,
    keys: Vec<String>,
    counter: Arc<OpenCounter>,
}

/// Worst cases of this instance's requests in flight on a project, admitted in one generation.
#[derive(Default)]
pub struct OpenCounter {
    worst: AtomicU64,
    count: AtomicU64,
}

impl OpenCounter {
    fn add(&self, worst: u64) {
        self.worst.fetch_add(worst, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self, worst: u64) {
        self.worst.fetch_sub(worst, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A project's state on this instance: its leases and its requests in flight.
#[derive(Default)]
struct ProjectLeases {
    /// Requests in flight admitted in the generation joined now; swapped for a fresh one when a
    /// new generation is joined (the old one then backs that generation's in-flight hold).
    open: ArcSwap<OpenCounter>,
    current: ArcSwapOption<Lease>,
    /// Σ worst cases admitted (any path) since the last tick: the demand a new slice serves.
    demand: AtomicU64,
    /// The largest worst case seen: a slice smaller than a few of them is not worth taking.
    max_worst: AtomicU64,
    last_admit_ms: std::sync::atomic::AtomicI64,
    /// A request found no lease (or too little of one): take one at the next tick.
    wanted: AtomicBool,
}

fn lock_use(l: &Lease) -> std::sync::MutexGuard<'_, LeaseUse> {
    l.st.lock().unwrap_or_else(|p| p.into_inner())
}

impl FleetHold {
    /// Release the hold and commit `actual` (and `tokens` to the tpm window). `seen` is the
    /// local account's snapshot count at the local settle ([`crate::ledger::Reservation::settle_seen`]).
    pub fn settle(mut self, actual: Nanos, tokens: u64, seen: u64) {
        self.settled = true;
        if let Some((c, w)) = self.open.take() {
            c.done(w);
        }
        if let Some((lease, worst)) = self.lease.take() {
            let tag = self.fleet.tags.load().tag(&lease.project, seen);
            self.fleet.ticket_done(&lease, worst, tag, actual.0);
            return;
        }
        self.fleet.settle(&self, actual, tokens, seen);
    }
}

impl Drop for FleetHold {
    fn drop(&mut self) {
        if let Some((c, w)) = self.open.take() {
            c.done(w);
        }
        if let Some((lease, worst)) = self.lease.take() {
            if !self.settled {
                self.settled = true;
                self.fleet.ticket_done(&lease, worst, None, 0);
            }
            return;
        }
        if !self.settled {
            let seen = u64::MAX; // nothing was spent: any generation will do
            self.fleet.settle(self, Nanos::ZERO, 0, seen);
        }
    }
}

impl Fleet {
    /// Start the fleet's runtime and background loop. The runtime must outlive the server.
    pub fn start(
        settings: FleetConfig,
        instance: String,
        ledger: Arc<Ledger>,
        config: Arc<ArcSwap<Config>>,
        in_flight: fn() -> i64,
    ) -> std::io::Result<(Arc<Fleet>, tokio::runtime::Runtime)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tollgate-fleet")
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let fleet = Arc::new(Fleet {
            instance,
            settings,
            rt: rt.handle().clone(),
            store: ArcSwapOption::empty(),
            joined: ArcSwapOption::empty(),
            tags: ArcSwap::from_pointee(Tags::default()),
            wake: tokio::sync::Notify::new(),
            up: AtomicBool::new(false),
            ledger,
            config,
            in_flight,
            stream: tx,
            stream_rx: Mutex::new(Some(rx)),
            started_ms: crate::clock::unix_ms(),
            counter: AtomicU64::new(0),
            this: std::sync::OnceLock::new(),
            leases: ArcSwap::from_pointee(HashMap::new()),
            peers: AtomicU64::new(1),
            rebuild_holds: Mutex::new(Vec::new()),
        });
        let _ = fleet.this.set(Arc::downgrade(&fleet));
        if let Some(m) = crate::metrics::fleet() {
            m.redis_up.set(0);
        }
        let f = fleet.clone();
        rt.spawn(async move { f.run().await });
        let f = fleet.clone();
        rt.spawn(async move { f.stream_writer().await });
        if fleet.settings.leases {
            let f = fleet.clone();
            rt.spawn(async move { f.listen_events().await });
        }
        Ok((fleet, rt))
    }

    /// Connected to Redis and joined to the generation in force: the reserve decides.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && self.joined.load().is_some()
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        if let Some(m) = crate::metrics::fleet() {
            m.redis_up
                .set(i64::from(up && self.joined.load().is_some()));
        }
        if was && !up {
            log::error!(
                "fleet: Redis is unreachable; refusing budgeted and rate-limited requests (503 ledger_unavailable) until it is back"
            );
        }
    }

    fn next_hold_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}:{:x}:{n:x}", self.instance, self.started_ms)
    }

    /// Admit one request: hold `worst` on every windowed account of `accounts` (and the
    /// project's own, for its fleet-wide spend) and count it against the project's rate
    /// limits, in one Redis call, all or nothing. A token count passes no accounts (it costs
    /// nothing, but is still a request for rpm).
    pub async fn reserve(
        self: &Arc<Self>,
        project: &Project,
        accounts: &[AccountRef],
        worst: Nanos,
    ) -> Result<FleetHold, GatewayError> {
        let windowed = accounts.iter().filter(|a| a.window.is_some()).count();
        let needs_fleet = windowed > 0 || project.rate_limit.is_some();
        // A lease covers the project's one window; a request that also answers to a team, a
        // key or an end user budget (or a second window) holds on all of them in Redis.
        let lease_covers = project.budgets.len() <= 1
            && accounts
                .iter()
                .all(|a| a.window.is_none() || a.kind == AccountKind::Project);
        if self.settings.leases && project.rate_limit.is_none() && lease_covers {
            if let Some((l, open)) = self.admit_on_lease(project, worst) {
                // The fast path: no Redis call and no key to build.
                open.add(worst.0);
                return Ok(FleetHold {
                    fleet: self.clone(),
                    id: String::new(),
                    project: String::new(),
                    budget_keys: Vec::new(),
                    tpm: false,
                    remaining: None,
                    settled: false,
                    lease: Some((l, worst.0)),
                    open: Some((open, worst.0)),
                });
            }
            if self.ledger.is_frozen(&project.id) && !self.is_up() {
                return Err(GatewayError::PolicyBlocked(
                    PolicyCode::ProjectFrozen,
                    format!("Project {} is frozen by an operator", project.id),
                ));
            }
        }
        let now_ms = crate::clock::unix_ms();
        let now = now_ms.div_euclid(1000);
        let keys = ProjectKeys::new(&project.id);
        // The project's own account always (its fleet-wide spend), then every other account
        // with a limit; `at` maps each key back to its account for the 402.
        let mut holds: Vec<AccountHold> = Vec::with_capacity(accounts.len().max(1));
        let mut at: Vec<Option<usize>> = Vec::with_capacity(accounts.len().max(1));
        if !accounts.iter().any(|a| a.kind == AccountKind::Project) {
            holds.push(AccountHold {
                key: keys.budget(
                    AccountKind::Project,
                    &project.id,
                    project.primary_period(),
                    now,
                ),
                limit: None,
                amount: worst,
            });
            at.push(None);
        }
        for (i, a) in accounts.iter().enumerate() {
            if a.window.is_none() && a.kind != AccountKind::Project {
                continue;
            }
            holds.push(AccountHold {
                key: account_key(&keys, a, now),
                limit: a.window.map(|w| w.limit),
                amount: worst,
            });
            at.push(Some(i));
        }
        let mut hold = FleetHold {
            fleet: self.clone(),
            id: self.next_hold_id(),
            project: project.id.clone(),
            budget_keys: holds.iter().map(|h| h.key.clone()).collect(),
            tpm: project.rate_limit.as_ref().is_some_and(|l| l.tpm.is_some()),
            remaining: None,
            settled: false,
            lease: None,
            open: None,
        };
        let (store, joined) = match (self.store.load_full(), self.joined.load_full()) {
            (Some(s), Some(j)) if self.up.load(Ordering::Acquire) => (s, j),
            _ => {
                // Never sent: nothing to release, but a local-only admission still settles
                // (its spend is charged when Redis is back).
                return if needs_fleet {
                    hold.settled = true;
                    Err(unavailable("cannot be reached"))
                } else {
                    Ok(hold)
                };
            }
        };
        let minute = now_ms.div_euclid(60_000);
        // Permille of the previous minute still inside the sliding 60 s.
        let into = now_ms.rem_euclid(60_000);
        let weight = u16::try_from((60_000 - into) / 60).unwrap_or(1000);
        let mut rates = Vec::new();
        let mut rate_names = Vec::new();
        if let Some(l) = &project.rate_limit {
            if let Some(rpm) = l.rpm {
                rates.push(RateCheck {
                    prev: keys.rate("rpm", minute - 1),
                    curr: keys.rate("rpm", minute),
                    limit: rpm,
                    need: 1,
                    add: 1,
                    weight_permille: weight,
                    expire_s: RATE_EXPIRE_S,
                });
                rate_names.push(format!("{rpm} requests per minute"));
            }
            if let Some(tpm) = l.tpm {
                rates.push(RateCheck {
                    prev: keys.rate("tpm", minute - 1),
                    curr: keys.rate("tpm", minute),
                    limit: tpm,
                    need: 1,
                    add: 0,
                    weight_permille: weight,
                    expire_s: RATE_EXPIRE_S,
                });
                rate_names.push(format!("{tpm} tokens per minute"));
            }
        }
        let started = Instant::now();
        let answer = store
            .reserve_with(
                &keys,
                &hold.id,
                &self.instance,
                self.settings.hold_ttl_s,
                &holds,
                &rates,
            )
            .await;
        observe("reserve", started);
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // The outcome is unknown: the hold may exist. Dropping `hold` settles it to 0.
                // One slow answer is not an outage: the background check decides that.
                log::warn!("fleet: reserve for project {} failed: {e}", project.id);
                self.wake();
                return if needs_fleet {
                    Err(unavailable("did not answer in time"))
                } else {
                    // Admitted on this instance alone; its settle charges the fleet later.
                    Ok(hold)
                };
            }
        };
        if answer.generation.as_deref() != Some(joined.as_str()) {
            // Redis lost its data (or was rebuilt) since this instance joined: its spend is
            // not in the counters yet. Any hold just made is released by the drop.
            self.joined.store(None);
            self.wake();
            return if needs_fleet {
                Err(unavailable("is rebuilding its counters"))
            } else {
                Ok(hold)
            };
        }
        let left_s = u64::try_from((60_000 - into).div_euclid(1000).max(1)).unwrap_or(60);
        match answer.value {
            Answered::Reserved(r) => {
                hold.remaining = r.remaining.iter().flatten().copied().min();
                let open = self.project_leases(&project.id).open.load_full();
                open.add(worst.0);
                hold.open = Some((open, worst.0));
                Ok(hold)
            }
            Answered::Refused(r) => {
                hold.settled = true;
                let refused = at.get(r.account).copied().flatten().and_then(|i| {
                    let a = accounts.get(i)?;
                    Some((a, a.window?))
                });
                let Some((account, window)) = refused else {
                    return Err(GatewayError::Internal(
                        "fleet refused an unlimited account".into(),
                    ));
                };
                let refusal = Refusal {
                    spent: Nanos(u64::try_from(r.committed).unwrap_or(0)),
                    reserved: Nanos(u64::try_from(r.held).unwrap_or(0)),
                    limit: r.limit,
                    needed: worst,
                };
                Err(crate::engine::accounts::refused(
                    account,
                    &project.id,
                    window.period,
                    &refusal,
                ))
            }
            Answered::Limited { rate, .. } => {
                hold.settled = true;
                let what = rate_names.get(rate).map_or("rate limit", String::as_str);
                Err(GatewayError::RateLimited {
                    message: format!("Project {} is over its limit of {what}", project.id),
                    retry_after_s: left_s,
                })
            }
            Answered::Frozen { .. } => {
                hold.settled = true;
                self.ledger.set_frozen_from_fleet(&project.id, true);
                Err(GatewayError::PolicyBlocked(
                    PolicyCode::ProjectFrozen,
                    format!("Project {} is frozen by an operator", project.id),
                ))
            }
            Answered::Rebuilding | Answered::NoGeneration => {
                hold.settled = true;
                if answer.value == Answered::NoGeneration {
                    self.joined.store(None);
                    self.wake();
                }
                if needs_fleet {
                    Err(unavailable("is rebuilding its counters"))
                } else {
                    hold.settled = false;
                    Ok(hold)
                }
            }
            Answered::Void => {
                hold.settled = true;
                Err(unavailable("answered for a settled hold"))
            }
        }
    }

    fn project_leases(&self, project: &str) -> Arc<ProjectLeases> {
        if let Some(p) = self.leases.load().get(project) {
            return p.clone();
        }
        let fresh = Arc::new(ProjectLeases::default());
        let mut out = fresh.clone();
        self.leases.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m
                .entry(project.to_string())
                .or_insert_with(|| fresh.clone())
                .clone();
            m
        });
        out
    }

    /// Lease mode: admit against this instance's current lease of the project, if it has
    /// room; `None` sends the request to a hold of its own (and asks for a lease).
    fn admit_on_lease(
        &self,
        project: &Project,
        worst: Nanos,
    ) -> Option<(Arc<Lease>, Arc<OpenCounter>)> {
        let pl = self.project_leases(&project.id);
        pl.demand.fetch_add(worst.0, Ordering::Relaxed);
        pl.max_worst.fetch_max(worst.0, Ordering::Relaxed);
        pl.last_admit_ms
            .store(crate::clock::unix_ms(), Ordering::Relaxed);
        if self.ledger.is_frozen(&project.id) {
            // The fleet's freeze, pushed here by pub/sub (or the poll): no lease admission.
            return None;
        }
        let lease = pl.current.load_full();
        let joined = self.joined.load();
        let admitted = lease.filter(|l| {
            // A lease of a generation Redis lost is gone: its budget is no longer held.
            let current = joined.as_ref().is_some_and(|g| **g == *l.gen);
            if !current || Instant::now() >= l.deadline {
                return false;
            }
            let mut u = lock_use(l);
            let room = l
                .granted
                .saturating_sub(u.used_total())
                .saturating_sub(u.in_flight);
            if u.retired || worst.0 > room {
                return false;
            }
            u.in_flight += worst.0;
            true
        });
        if admitted.is_none() {
            pl.wanted.store(true, Ordering::Relaxed);
            self.wake();
        }
        admitted.map(|l| (l, pl.open.load_full()))
    }

    /// A request admitted on `lease` finished: it no longer holds `worst`, and cost `actual`
    /// (in the generation `tag`). The last one out of a retired lease settles it.
    fn ticket_done(&self, lease: &Arc<Lease>, worst: u64, tag: Option<Arc<String>>, actual: u64) {
        let close = {
            let mut u = lock_use(lease);
            u.in_flight = u.in_flight.saturating_sub(worst);
            if actual > 0 {
                match u.used.iter_mut().find(|(t, _)| *t == tag) {
                    Some((_, n)) => *n = n.saturating_add(actual),
                    None => u.used.push((tag, actual)),
                }
            }
            let close = u.retired && u.in_flight == 0 && !u.closed;
            if close {
                u.closed = true;
            }
            close.then(|| u.used.clone())
        };
        if let Some(used) = close {
            self.close_lease(lease, used);
        }
    }

    /// No more admission on `lease`; settle it now if nothing runs on it.
    fn retire(&self, lease: &Arc<Lease>) {
        let close = {
            let mut u = lock_use(lease);
            u.retired = true;
            let close = u.in_flight == 0 && !u.closed;
            if close {
                u.closed = true;
            }
            close.then(|| u.used.clone())
        };
        if let Some(used) = close {
            self.close_lease(lease, used);
        }
    }

    /// Settle a lease with what its requests cost: the spend of its own generation on its
    /// hold; spend of a later generation (Redis lost its data meanwhile) as a charge of its own;
    /// spend of no generation or a dead one is already in a join report.
    fn close_lease(&self, lease: &Lease, used: Vec<(Option<Arc<String>>, u64)>) {
        let mut own = 0u64;
        for (tag, n) in used {
            match tag {
                Some(t) if t == lease.gen => own = own.saturating_add(n),
                Some(t) => {
                    let short: String = t.chars().take(12).collect();
                    self.submit(SettleBody {
                        project: lease.project.clone(),
                        id: format!("{}~{short}", lease.id),
                        keys: vec![lease.budget_key.clone()],
                        actuals: vec![n],
                        tpm: None,
                        tag: Some(t.to_string()),
                    });
                }
                None => {}
            }
        }
        if lease.in_redis || own > 0 {
            self.submit(SettleBody {
                project: lease.project.clone(),
                id: lease.id.clone(),
                keys: vec![lease.budget_key.clone()],
                actuals: vec![own],
                tpm: None,
                tag: Some(lease.gen.to_string()),
            });
        }
    }

    /// Lease mode, every tick: for each project without a rate limit, rotate a lease that is
    /// old, half used or asked for; take one where requests found none; retire an idle one, so
    /// no budget is stranded on an idle instance.
    async fn manage_leases(&self, store: &FleetStore) {
        let Some(gen) = self.joined.load_full() else {
            return;
        };
        let cfg = self.config.load_full();
        let now_ms = crate::clock::unix_ms();
        for p in cfg
            .projects
            .iter()
            .filter(|p| p.rate_limit.is_none() && p.budgets.len() <= 1)
        {
            let pl = self.project_leases(&p.id);
            let demand = pl.demand.swap(0, Ordering::Relaxed);
            let wanted = pl.wanted.swap(false, Ordering::Relaxed);
            let idle = now_ms - pl.last_admit_ms.load(Ordering::Relaxed) > LEASE_IDLE_MS;
            let frozen = self.ledger.is_frozen(&p.id);
            let current = pl.current.load_full();
            if let Some(c) = &current {
                let (used, in_flight) = {
                    let u = lock_use(c);
                    (u.used_total(), u.in_flight)
                };
                let stale = c.gen != gen || Instant::now() >= c.deadline;
                if idle || frozen || stale {
                    pl.current.store(None);
                    self.retire(c);
                    continue;
                }
                let half = used.saturating_add(in_flight) >= c.granted / 2;
                let old = c.created.elapsed() >= LEASE_ROTATE;
                if !(half || old || wanted) {
                    continue;
                }
            } else if !wanted || frozen {
                continue;
            }
            // Enough for about ten seconds of this instance's demand, and a few of its
            // largest requests.
            let max_worst = pl.max_worst.load(Ordering::Relaxed).max(1);
            let want = demand
                .saturating_mul(LEASE_TICKS_OF_DEMAND)
                .max(max_worst.saturating_mul(8));
            let id = format!("lease:{}", self.next_hold_id());
            let key = ProjectKeys::new(&p.id).budget(
                AccountKind::Project,
                &p.id,
                p.primary_period(),
                now_ms.div_euclid(1000),
            );
            let fresh = if p.budgets.is_empty() {
                // Nothing to check: admit locally, charge the spend in one settle.
                Some(Lease {
                    id,
                    project: p.id.clone(),
                    budget_key: key,
                    granted: u64::MAX / 4,
                    gen: gen.clone(),
                    deadline: Instant::now() + LEASE_ROTATE * 2,
                    created: Instant::now(),
                    in_redis: false,
                    st: Mutex::new(LeaseUse::default()),
                })
            } else {
                let sent = Instant::now();
                let divisor =
                    u32::try_from(self.peers.load(Ordering::Relaxed).max(1) * 2).unwrap_or(1000);
                let r = store
                    .lease(
                        &ProjectKeys::new(&p.id),
                        &id,
                        &self.instance,
                        LEASE_TTL_S,
                        &key,
                        p.budgets.first().map(|b| b.limit),
                        Nanos(want),
                        Nanos(max_worst.saturating_mul(2)),
                        divisor,
                    )
                    .await;
                observe("lease", sent);
                match r {
                    Ok(a) if a.generation.as_deref() == Some(gen.as_str()) => match a.value {
                        Answered::Reserved(r) => Some(Lease {
                            id,
                            project: p.id.clone(),
                            budget_key: key,
                            granted: r.remaining.first().copied().flatten().map_or(0, |n| n.0),
                            gen: gen.clone(),
                            deadline: sent + Duration::from_secs(u64::from(LEASE_TTL_S))
                                - LEASE_MARGIN,
                            created: Instant::now(),
                            in_redis: true,
                            st: Mutex::new(LeaseUse::default()),
                        }),
                        Answered::Frozen { .. } => {
                            self.ledger.set_frozen_from_fleet(&p.id, true);
                            None
                        }
                        // Near the limit (or rebuilding): requests hold their own.
                        _ => None,
                    },
                    Ok(_) => {
                        self.release_unknown(&p.id, &id, std::slice::from_ref(&key));
                        None
                    }
                    Err(e) => {
                        // The lease may exist: release it; keep the current one meanwhile
                        // (valid until its deadline).
                        log::warn!("fleet: lease for project {} failed: {e}", p.id);
                        self.release_unknown(&p.id, &id, std::slice::from_ref(&key));
                        continue;
                    }
                }
            };
            let old = pl.current.swap(fresh.map(Arc::new));
            if let Some(old) = old {
                self.retire(&old);
            }
        }
    }

    /// Release each rebuild hold whose requests have all ended.
    fn release_rebuild_holds(&self) {
        let done: Vec<RebuildHold> = match self.rebuild_holds.lock().as_mut() {
            Ok(v) => {
                let (done, keep) = std::mem::take(&mut **v)
                    .into_iter()
                    .partition(|h| h.counter.count.load(Ordering::Acquire) == 0);
                **v = keep;
                done
            }
            Err(_) => return,
        };
        for h in done {
            self.release_unknown(&h.project, &h.id, &h.keys);
        }
    }

    /// Settle a hold whose creation's outcome is unknown to 0 (it may not exist: then nothing).
    fn release_unknown(&self, project: &str, id: &str, keys: &[String]) {
        self.submit(SettleBody {
            project: project.to_string(),
            id: id.to_string(),
            keys: keys.to_vec(),
            actuals: vec![0; keys.len()],
            tpm: None,
            tag: self.joined.load_full().map(|g| g.to_string()),
        });
    }

    /// Lease mode: hear freezes at once (pub/sub); the poll is the backstop for lost messages.
    async fn listen_events(self: Arc<Self>) {
        loop {
            if let Err(e) = self.subscribe_once().await {
                log::debug!("fleet: event subscription ended: {e}");
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn subscribe_once(&self) -> Result<(), FleetError> {
        let client = redis::Client::open(self.settings.redis_url.expose())
            .map_err(|e| FleetError::BadArgument(format!("redis url: {}", e.category())))?;
        let mut ps = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| FleetError::Unavailable("subscribe: timed out".into()))?
            .map_err(|e| FleetError::Unavailable(e.to_string()))?;
        ps.subscribe(EVENTS)
            .await
            .map_err(|e| FleetError::Unavailable(e.to_string()))?;
        let mut stream = ps.into_on_message();
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
            })
            .await;
            let Some(msg) = next else {
                return Err(FleetError::Unavailable("subscription closed".into()));
            };
            let text = String::from_utf8_lossy(msg.get_payload_bytes()).to_string();
            self.on_event(&text);
        }
    }

    /// `freeze <cfg key> <0|1> <version>`.
    fn on_event(&self, text: &str) {
        let mut parts = text.split(' ');
        let (Some("freeze"), Some(cfg_key), Some(flag)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let cfg = self.config.load_full();
        let Some(p) = cfg
            .projects
            .iter()
            .find(|p| ProjectKeys::new(&p.id).cfg() == cfg_key)
        else {
            return;
        };
        let frozen = flag == "1";
        self.ledger.set_frozen_from_fleet(&p.id, frozen);
        if frozen {
            if let Some(l) = self.project_leases(&p.id).current.swap(None) {
                self.retire(&l);
            }
        }
    }

    fn me(&self) -> Option<Arc<Fleet>> {
        self.this.get().and_then(std::sync::Weak::upgrade)
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queue the settle in SQLite, then try it at once on the fleet runtime.
    fn settle(&self, hold: &FleetHold, actual: Nanos, tokens: u64, seen: u64) {
        let tag = if seen == u64::MAX {
            self.joined.load_full().map(|g| g.to_string())
        } else {
            self.tags
                .load()
                .tag(&hold.project, seen)
                .map(|g| g.to_string())
        };
        let tpm = hold.tpm.then(|| {
            let minute = crate::clock::unix_ms().div_euclid(60_000);
            (ProjectKeys::new(&hold.project).rate("tpm", minute), tokens)
        });
        let body = SettleBody {
            project: hold.project.clone(),
            id: hold.id.clone(),
            keys: hold.budget_keys.clone(),
            actuals: vec![actual.0; hold.budget_keys.len()],
            tpm: tpm.filter(|(_, t)| *t > 0),
            tag,
        };
        self.submit(body);
    }

    /// Queue a settle in SQLite, then try it at once on the fleet runtime.
    fn submit(&self, body: SettleBody) {
        if let Ok(text) = serde_json::to_string(&body) {
            if let Some(s) = self.ledger.store() {
                s.send(Write::FleetQueue {
                    hold_id: body.id.clone(),
                    body: text,
                });
            }
        }
        let Some(f) = self.me() else { return };
        self.rt.spawn(async move {
            let _ = f.apply(&body).await;
        });
    }

    /// Send one settle; on success mark it done in SQLite. A settle whose spend belongs to a
    /// generation no longer in force (this instance's join report carried it) only releases
    /// the hold; one whose spend counts is applied only in the generation it belongs to.
    async fn apply(&self, body: &SettleBody) -> Result<(), FleetError> {
        let Some(store) = self.store.load_full() else {
            return Err(FleetError::Unavailable("not connected".into()));
        };
        let Some(current) = self.joined.load_full() else {
            return Err(FleetError::Unavailable("not joined to a generation".into()));
        };
        let keys = ProjectKeys::new(&body.project);
        let stale = body.tag.as_deref() != Some(current.as_str());
        let accounts: Vec<AccountActual> = body
            .keys
            .iter()
            .zip(&body.actuals)
            .map(|(k, a)| AccountActual {
                key: k.clone(),
                actual: if stale { Nanos::ZERO } else { Nanos(*a) },
            })
            .collect();
        let adds: Vec<RateAdd> = body
            .tpm
            .iter()
            .filter(|_| !stale)
            .map(|(k, t)| RateAdd {
                key: k.clone(),
                add: *t,
                expire_s: RATE_EXPIRE_S,
            })
            .collect();
        let counts =
            !stale && (accounts.iter().any(|a| a.actual > Nanos::ZERO) || !adds.is_empty());
        let expected = counts.then_some(current.as_str());
        let started = Instant::now();
        let r = store
            .settle_with(&keys, &body.id, &accounts, &adds, expected)
            .await;
        observe("settle", started);
        match r {
            Ok(a) if a.value == Settlement::Stale => {
                // Redis moved to another generation: this stays queued until the join.
                self.joined.store(None);
                self.wake();
                Err(FleetError::Unavailable("the generation changed".into()))
            }
            Ok(a) => {
                if let Settlement::Corrected { .. } = a.value {
                    log::info!(
                        "fleet: hold {} had burned; corrected to its true cost",
                        body.id
                    );
                }
                if let Some(s) = self.ledger.store() {
                    s.send(Write::FleetDone {
                        hold_id: body.id.clone(),
                    });
                }
                Ok(())
            }
            Err(e) => {
                if !matches!(e, FleetError::Unavailable(_)) {
                    log::error!("fleet: settle {} failed: {e}", body.id);
                }
                Err(e)
            }
        }
    }

    /// The background loop: connect, check the generation (join it if new), beat, poll
    /// freezes, replay queued settles.
    async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_complaint: Option<Instant> = None;
        let mut reap_tick: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            if self.store.load().is_none() {
                let cfg = StoreConfig {
                    connect_timeout: self.settings.timeout.max(Duration::from_millis(250)),
                    response_timeout: self.settings.timeout,
                    ..StoreConfig::new(self.settings.redis_url.expose())
                };
                match FleetStore::open(&cfg).await {
                    Ok(s) => {
                        log::info!("fleet: connected to Redis as instance {}", self.instance);
                        self.store.store(Some(Arc::new(s)));
                    }
                    Err(e) => {
                        if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            log::error!(
                                "fleet: cannot reach Redis ({}): {e}; refusing budgeted and rate-limited requests (503 ledger_unavailable) until it can",
                                self.settings.redis_url_env
                            );
                            last_complaint = Some(Instant::now());
                        }
                        self.set_up(false);
                        continue;
                    }
                }
            }
            let Some(store) = self.store.load_full() else {
                continue;
            };
            match self.check_generation(&store).await {
                Ok(()) => self.set_up(true),
                Err(e) => {
                    if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        log::error!("fleet: Redis: {e}");
                        last_complaint = Some(Instant::now());
                    }
                    self.set_up(false);
                    continue;
                }
            }
            let _ = self.heartbeat(&store).await;
            let _ = self.poll_freezes(&store).await;
            self.replay().await;
            self.release_rebuild_holds();
            if self.settings.leases {
                self.manage_leases(&store).await;
            }
            reap_tick += 1;
            if reap_tick % REAP_EVERY == 0 {
                self.reap(&store).await;
            }
        }
    }

    /// Make sure a generation is in force and this instance has joined it: every project of
    /// the config reported its local spend into it once (a project added by a reload joins on
    /// the next tick).
    async fn check_generation(&self, store: &FleetStore) -> Result<(), FleetError> {
        let grace = u64::try_from(self.settings.rebuild_grace.as_millis()).unwrap_or(5_000);
        let started = Instant::now();
        let (gen, _rebuilding) = store.begin(grace).await?;
        observe("status", started);
        let was = self.joined.load_full();
        if was.as_deref().map(String::as_str) != Some(gen.as_str()) {
            self.joined.store(None);
        }
        let cfg = self.config.load_full();
        let gen_arc: Arc<String> = Arc::new(gen.clone());
        for p in &cfg.projects {
            let tags = self.tags.load();
            let last = tags.by_project.get(&p.id).and_then(|v| v.last());
            if last.is_some_and(|(_, g)| **g == gen) {
                continue;
            }
            let keys = ProjectKeys::new(&p.id);
            // The tag goes in before the snapshot: a settle that sees the new count must find
            // it. Only this task takes snapshots, so the next count is known.
            let next = self.ledger.snapshots(p) + 1;
            self.tags.rcu(|t| {
                let mut t = Tags::clone(t);
                t.by_project
                    .entry(p.id.clone())
                    .or_default()
                    .push((next, gen_arc.clone()));
                t
            });
            let carried = join_accounts(p);
            let (amounts, snap) = self.ledger.snapshot_accounts(p, &carried);
            let amount = amounts.iter().copied().max().unwrap_or_default();
            if snap != next {
                log::error!("fleet: snapshot count of {} moved under the join", p.id);
            }
            // Requests still in flight from another generation (Redis lost their holds): held
            // again in this one until they end.
            let pl = self.project_leases(&p.id);
            let old = pl.open.swap(Arc::new(OpenCounter::default()));
            let in_flight = old.worst.load(Ordering::Relaxed);
            let now = crate::clock::unix_secs();
            let budget_keys: Vec<String> =
                carried.iter().map(|a| account_key(&keys, a, now)).collect();
            let rebuild_id = format!("rebuild:{}", self.next_hold_id());
            // Each account may carry all of the project's requests in flight: more than a
            // key's own share, never less.
            let held = vec![Nanos(in_flight); budget_keys.len()];
            let started = Instant::now();
            let reported: Vec<AccountActual> = budget_keys
                .iter()
                .zip(&amounts)
                .map(|(k, a)| AccountActual {
                    key: k.clone(),
                    actual: *a,
                })
                .collect();
            let r = store
                .join(
                    &keys,
                    &gen,
                    &self.instance,
                    &reported,
                    (in_flight > 0).then_some((
                        rebuild_id.as_str(),
                        self.settings.hold_ttl_s,
                        &held[..],
                    )),
                )
                .await;
            match &r {
                Ok(Joined::Added) if in_flight > 0 => {
                    if let Ok(m) = self.rebuild_holds.lock().as_mut() {
                        m.push(RebuildHold {
                            project: p.id.clone(),
                            id: rebuild_id,
                            keys: budget_keys,
                            counter: old,
                        });
                    }
                }
                Ok(Joined::Added | Joined::Already) => {}
                // Not joined: these requests still count as this generation's, for the retry.
                Ok(Joined::Stale(_)) | Err(_) => pl.open.store(old),
            }
            observe("join", started);
            match r? {
                Joined::Added if amount > Nanos::ZERO => log::info!(
                    "fleet: carried ${} of project {}'s spend on this instance into generation {gen}",
                    amount.usd_exact(),
                    p.id
                ),
                Joined::Added | Joined::Already => {}
                Joined::Stale(g) => {
                    // Undo the tag: this generation is not the one in force after all.
                    self.tags.rcu(|t| {
                        let mut t = Tags::clone(t);
                        if let Some(v) = t.by_project.get_mut(&p.id) {
                            v.retain(|(_, x)| **x != gen);
                        }
                        t
                    });
                    return Err(FleetError::Protocol(format!(
                        "the generation changed while joining ({g:?}); will retry"
                    )));
                }
            }
        }
        if self.joined.load().is_none() {
            log::info!("fleet: instance {} joined generation {gen}", self.instance);
            self.joined.store(Some(gen_arc));
        }
        Ok(())
    }

    /// Burn expired holds of idle projects (reserves burn a few on their way, but a project
    /// nobody calls would keep them counted as held, not spent).
    async fn reap(&self, store: &FleetStore) {
        let cfg = self.config.load_full();
        for p in &cfg.projects {
            let started = Instant::now();
            let r = store.reap(&ProjectKeys::new(&p.id), 100).await;
            observe("reap", started);
            if let Ok(a) = r {
                if a.value.burned > 0 {
                    log::warn!(
                        "fleet: {} expired holds of project {} burned (their instance settled none of them in time: counted as spent)",
                        a.value.burned,
                        p.id
                    );
                }
            }
        }
    }

    async fn heartbeat(&self, store: &FleetStore) -> Result<(), FleetError> {
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "last_seen_ms": crate::clock::unix_ms(),
            "in_flight": (self.in_flight)().max(0),
        })
        .to_string();
        let started = Instant::now();
        let r = store
            .command(
                redis::cmd("HSET")
                    .arg(INSTANCES_KEY)
                    .arg(&self.instance)
                    .arg(body),
            )
            .await;
        observe("heartbeat", started);
        r?;
        // Live peers (seen in the last ten seconds) size the lease slices.
        if self.settings.leases {
            if let Ok(v) = store.command(redis::cmd("HVALS").arg(INSTANCES_KEY)).await {
                let now = crate::clock::unix_ms();
                let live = match v {
                    redis::Value::Array(items) => items
                        .iter()
                        .filter_map(text)
                        .filter_map(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                        .filter(|j| now - j["last_seen_ms"].as_i64().unwrap_or(0) < 10_000)
                        .count(),
                    _ => 1,
                };
                self.peers.store(live.max(1) as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The fleet's freeze flags, into this instance's view (used when Redis is unreachable and
    /// by projects admitted without Redis). The reserve is the authority.
    async fn poll_freezes(&self, store: &FleetStore) -> Result<(), FleetError> {
        let cfg = self.config.load_full();
        if cfg.projects.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for p in &cfg.projects {
            pipe.cmd("HGET")
                .arg(ProjectKeys::new(&p.id).cfg())
                .arg("frozen");
        }
        let started = Instant::now();
        let values = store.pipeline(&pipe).await;
        observe("status", started);
        for (p, v) in cfg.projects.iter().zip(values?) {
            let frozen = matches!(&v, redis::Value::BulkString(b) if b.as_slice() == b"1");
            self.ledger.set_frozen_from_fleet(&p.id, frozen);
        }
        Ok(())
    }

    /// Apply settles left in SQLite (failed sends, or a previous process's).
    async fn replay(&self) {
        let Some(reader) = self.ledger.reader() else {
            return;
        };
        let rows =
            match tokio::task::spawn_blocking(move || reader.fleet_pending(REPLAY_BATCH)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    log::error!("fleet: cannot read the settle queue: {e}");
                    return;
                }
                Err(_) => return,
            };
        for (id, text) in rows {
            match serde_json::from_str::<SettleBody>(&text) {
                Ok(body) => {
                    if self.apply(&body).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    log::error!(
                        "fleet: settle {id} in the queue cannot be read ({e}); dropping it"
                    );
                    if let Some(s) = self.ledger.store() {
                        s.send(Write::FleetDone { hold_id: id });
                    }
                }
            }
        }
    }

    /// Freeze or unfreeze the project on every instance.
    pub async fn freeze(&self, project: &str, frozen: bool) -> Result<u64, GatewayError> {
        let Some(store) = self.store.load_full() else {
            return Err(unavailable("cannot be reached"));
        };
        let started = Instant::now();
        let r = store.freeze(&ProjectKeys::new(project), frozen).await;
        observe("freeze", started);
        r.map(|a| a.value).map_err(|e| {
            log::error!("fleet: freeze of {project} failed: {e}");
            unavailable("did not take the freeze")
        })
    }

    /// Fleet-wide committed, held by requests and leased of each of `accounts` (in their
    /// current windows), and the freeze flag of `project` (whose keys the call goes with).
    pub async fn windows_status(
        &self,
        project: &str,
        accounts: &[AccountRef],
    ) -> Option<(Vec<(Nanos, Nanos, Nanos)>, bool)> {
        let store = self.store.load_full()?;
        let keys = ProjectKeys::new(project);
        let now = crate::clock::unix_secs();
        let budget_keys: Vec<String> = accounts
            .iter()
            .map(|a| account_key(&keys, a, now))
            .collect();
        if budget_keys.is_empty() || budget_keys.len() > super::MAX_ACCOUNTS {
            return None;
        }
        let started = Instant::now();
        let r = store.status(&keys, &budget_keys).await;
        observe("read", started);
        let s = r.ok()?.value;
        let out = s
            .accounts
            .iter()
            .map(|b| {
                let held = u64::try_from(b.held).unwrap_or(0);
                let leased = u64::try_from(b.leased).unwrap_or(0).min(held);
                (
                    Nanos(u64::try_from(b.committed).unwrap_or(0)),
                    Nanos(held - leased),
                    Nanos(leased),
                )
            })
            .collect();
        Some((out, s.frozen))
    }

    /// `GET /admin/fleet`.
    pub async fn fleet_json(&self) -> String {
        let mut instances = Vec::new();
        let mut ok = false;
        if let Some(store) = self.store.load_full() {
            let started = Instant::now();
            let r = store
                .command(redis::cmd("HGETALL").arg(INSTANCES_KEY))
                .await;
            observe("read", started);
            let items: Option<Vec<redis::Value>> = match r {
                Ok(redis::Value::Array(items)) => Some(items),
                Ok(redis::Value::Map(m)) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
                _ => None,
            };
            if let Some(items) = items {
                ok = true;
                let now = crate::clock::unix_ms();
                let mut stale = Vec::new();
                for pair in items.chunks_exact(2) {
                    let (Some(id), Some(body)) = (text(&pair[0]), text(&pair[1])) else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let seen = v["last_seen_ms"].as_i64().unwrap_or(0);
                    if now - seen > FORGET_INSTANCE_MS {
                        stale.push(id);
                        continue;
                    }
                    instances.push(serde_json::json!({
                        "id": id,
                        "version": v["version"],
                        "last_seen": crate::engine::time::rfc3339_millis(seen),
                        "in_flight": v["in_flight"],
                        "self": id == self.instance,
                    }));
                }
                if !stale.is_empty() {
                    let _ = store
                        .command(redis::cmd("HDEL").arg(INSTANCES_KEY).arg(&stale))
                        .await;
                }
            }
        }
        instances.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        serde_json::json!({
            "instance": self.instance,
            "redis": {
                "ok": ok,
                "joined": self.joined.load().is_some(),
                "generation": self.joined.load().as_deref().map(String::as_str),
            },
            "instances": instances,
        })
        .to_string()
    }

    /// Send a decision record (JSON, with `instance`) to the fleet's stream; dropped if the
    /// stream writer is behind (each instance's SQLite keeps the full record).
    pub fn record(&self, json: String) {
        let _ = self.stream.try_send(json);
    }

    /// The response cache shared by the fleet: the stored blob of `key` in `project`, if Redis
    /// answers in time and has it.
    pub async fn cache_get(&self, project: &str, key: &str) -> Option<Vec<u8>> {
        let store = self.store.load_full()?;
        let started = Instant::now();
        let r = store
            .command(redis::cmd("GET").arg(ProjectKeys::new(project).cache(key)))
            .await;
        observe("cache", started);
        match r {
            Ok(redis::Value::BulkString(b)) => Some(b),
            _ => None,
        }
    }

    /// Store a blob for the fleet, for `ttl_ms` (in the background: a request never waits).
    pub fn cache_put(&self, project: &str, key: &str, blob: Vec<u8>, ttl_ms: u64) {
        let Some(store) = self.store.load_full() else {
            return;
        };
        let k = ProjectKeys::new(project).cache(key);
        self.rt.spawn(async move {
            let started = Instant::now();
            let r = store
                .command(
                    redis::cmd("SET")
                        .arg(k)
                        .arg(blob)
                        .arg("PX")
                        .arg(ttl_ms.max(1)),
                )
                .await;
            observe("cache", started);
            if let Err(e) = r {
                log::warn!("fleet: storing a cached answer failed: {e}");
            }
        });
    }

    /// Writes records to the stream, up to [`STREAM_BATCH`] records per entry (one JSON per
    /// line, oldest first), so the stream costs one XADD per batch, not per request. A batch
    /// that fails (Redis down) is kept and tried again; meanwhile new records wait in the
    /// bounded channel, and past its capacity they are dropped from the stream only (SQLite has
    /// every one).
    async fn stream_writer(self: Arc<Self>) {
        let rx = self.stream_rx.lock().ok().and_then(|mut r| r.take());
        let Some(mut rx) = rx else { return };
        let mut batch: Vec<String> = Vec::with_capacity(STREAM_BATCH);
        loop {
            if batch.is_empty() {
                if rx.recv_many(&mut batch, STREAM_BATCH).await == 0 {
                    return;
                }
                // Let a burst fill the entry a little (the stream is for people, not a hot path).
                tokio::time::sleep(STREAM_LINGER).await;
                let room = STREAM_BATCH - batch.len();
                if room > 0 {
                    while let Ok(d) = rx.try_recv() {
                        batch.push(d);
                        if batch.len() >= STREAM_BATCH {
                            break;
                        }
                    }
                }
            }
            let sent = match self.store.load_full() {
                Some(store) => {
                    let entry = batch.join("\n");
                    let started = Instant::now();
                    let r = store
                        .command(
                            redis::cmd("XADD")
                                .arg(STREAM_KEY)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(STREAM_MAX_ENTRIES)
                                .arg("*")
                                .arg("d")
                                .arg(entry),
                        )
                        .await;
                    observe("stream", started);
                    r.is_ok()
                }
                None => false,
            };
            if sent {
                batch.clear();
            } else {
                tokio::time::sleep(TICK).await;
            }
        }
    }

    /// The fleet's recent decision records, newest first: (cursor, JSON). A cursor is
    /// `<stream id>.<index in its entry>`; `before` returns what is older than one.
    pub async fn decisions(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        let store = self.store.load_full()?;
        let (entry, skip_from) = match before.and_then(|c| c.rsplit_once('.')) {
            Some((id, i)) => (Some(id.to_string()), i.parse::<usize>().ok()),
            None => (before.map(str::to_string), None),
        };
        let mut out = Vec::with_capacity(limit);
        let mut end = match &entry {
            // The entry of the cursor is read again, for its older records.
            Some(id) if skip_from.is_some() => id.clone(),
            Some(id) => format!("({id}"),
            None => "+".to_string(),
        };
        let mut first = true;
        while out.len() < limit {
            let started = Instant::now();
            let r = store
                .command(
                    redis::cmd("XREVRANGE")
                        .arg(STREAM_KEY)
                        .arg(&end)
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit.div_ceil(8).max(4)),
                )
                .await;
            observe("read", started);
            let redis::Value::Array(entries) = r.ok()? else {
                return None;
            };
            let got = entries.len();
            for e in entries {
                let redis::Value::Array(parts) = e else {
                    continue;
                };
                let (Some(id), Some(redis::Value::Array(fields))) =
                    (parts.first().and_then(text), parts.get(1))
                else {
                    continue;
                };
                let Some(body) = fields.get(1).and_then(text) else {
                    continue;
                };
                let lines: Vec<&str> = body.split('\n').collect();
                // Newest last within an entry.
                let upto = match (first, entry.as_deref(), skip_from) {
                    (true, Some(cur), Some(i)) if cur == id => i.min(lines.len()),
                    _ => lines.len(),
                };
                for i in (0..upto).rev() {
                    if out.len() >= limit {
                        break;
                    }
                    out.push((format!("{id}.{i}"), lines[i].to_string()));
                }
                end = format!("({id}");
                first = false;
            }
            if got == 0 {
                break;
            }
        }
        Some(out)
    }
}

fn observe(op: &str, started: Instant) {
    if let Some(m) = crate::metrics::fleet() {
        m.roundtrip
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }
}
