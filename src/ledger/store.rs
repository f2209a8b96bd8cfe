//! Durable store of the ledger: one SQLite file holding per-project spend,
//! project freezes and the decision log (one row per request decision).
//!
//! # Who owns what
//! The store owns the SQLite file, its schema, and the connection that writes
//! to it. Request handlers never touch the disk: they call
//! [`StoreHandle::send`], which pushes a [`Write`] onto an in-memory channel
//! and returns at once. A dedicated std thread ("tollgate-store") drains the
//! channel into a batch and commits the batch as ONE transaction when the
//! flush interval (default 200 ms) has passed since the oldest uncommitted
//! write, when [`FLUSH_AT_WRITES`] writes are pending, and on
//! [`StoreHandle::shutdown`] (tests also have `StoreHandle::flush`). Spend writes for the same
//! (project, period) are summed in memory before they reach SQLite, so a busy
//! project costs one UPSERT per flush, not one per request.
//! [`Reader`] is a second, read-only connection for the (blocking) start-up
//! restore and the admin API; WAL lets it read while the writer commits.
//!
//! # Wake-ups
//! A send does not wake the writer. The writer sleeps (parked) until its
//! batch is due and then drains the channel; a sender unparks it only when it
//! is idle (nothing pending, so the first write of a batch starts the clock),
//! every [`FLUSH_AT_WRITES`] writes, and for `shutdown` (and the tests' `flush`). Under load
//! that is a few wake-ups a second instead of one per request: waking a
//! thread costs a futex call and a context switch, which on a small machine
//! was the largest single cost of the ledger on the request path.
//!
//! # Durability guarantee
//! * Committed means durable against process death: the file is in WAL mode
//!   with `synchronous=NORMAL`, under which a committed transaction survives
//!   `kill -9` (it is in the OS page cache / WAL file); only a power loss or OS
//!   crash may roll back the last transactions (never corrupt the file).
//! * `kill -9` therefore loses at most the writes of one flush interval (plus
//!   the time a flush takes). Graceful stop ([`StoreHandle::shutdown`]) loses
//!   nothing. Dropping every handle without `shutdown` makes the writer do a
//!   last flush on its own, best effort.
//! * A failed transaction (disk full, lock held past `busy_timeout`, I/O
//!   error) is rolled back and the whole batch is kept and retried with
//!   back-off, so spend is never counted twice or half. Spend and freezes are
//!   kept however long the failure lasts (they are coalesced, so their size is
//!   bounded by projects x periods); decisions beyond
//!   [`MAX_RETAINED_DECISIONS`] are discarded and counted in `failed`, because
//!   the audit log must not grow memory without bound.
//! * Nothing here panics on input from callers or from disk: errors are
//!   logged with `log::error!`, counted in [`StoreStats`] and returned as
//!   `Err(String)` where the API has a result.
//!
//! # Memory trade-off
//! The channel is an unbounded `std::sync::mpsc` channel: `send` can never
//! block or fail a request, at the price that a stalled disk lets the queue
//! grow without limit. `StoreStats::queued` exposes the backlog so it can be
//! alerted on; at a few hundred bytes a write, a minute of backlog at 1k req/s
//! is tens of MB.
//!
//! # Schema (`PRAGMA user_version` = 8)
//! v2 added `decisions.attempts` and `providers_tried`; v3 added `decisions.overrun_nanos`;
//! v4 added `fleet_settles`, fleet mode's queue of settlements not yet applied in Redis;
//! v5 added `decisions.team`, `key_name`, `user` and `tags`; v6 added `decisions.cache` and
//! `saved_nanos` (the response cache); v7 added `rollups`, the hourly sums the reports read
//! (`super::rollups`, which holds its schema), written in the same transaction as the records;
//! v8 rebuilt the two `decisions` indexes in ascending order (they were `DESC`): new records
//! have the largest times, so each insert now appends at the right edge of both B-trees, where
//! SQLite splits a full page cheaply, instead of at the left edge, where every split
//! rebalances three pages. Queries newest first walk them backwards, as fast.
//! `spend.project` is an account's ledger name: a project's id, `team:ID`, `key:PROJECT/NAME`
//! or `user:PROJECT/USER`; every charge is added to the day, week, month and total rows of
//! each account it applies to, so a window added later starts from the truth.
//! ```sql
//! CREATE TABLE spend(
//!   project TEXT NOT NULL, period TEXT NOT NULL,  -- period: "2026-11", "2026-11-22", "week-of-2026-11-16", "total"
//!   spent_nanos INTEGER NOT NULL,                 -- nano-dollars, saturates at i64::MAX
//!   updated_ms INTEGER,                           -- unix ms of the last flush that touched the row
//!   PRIMARY KEY(project, period));
//! CREATE TABLE freezes(
//!   project TEXT PRIMARY KEY, frozen INTEGER NOT NULL, updated_ms INTEGER);
//! CREATE TABLE decisions(
//!   id TEXT NOT NULL, time_ms INTEGER NOT NULL,
//!   time TEXT NOT NULL,                           -- RFC 3339 UTC with ms, for people using the sqlite3 CLI
//!   project TEXT, key_id TEXT, endpoint TEXT, model TEXT, provider TEXT,
//!   decision TEXT NOT NULL, reason TEXT NOT NULL, status INTEGER NOT NULL,
//!   prompt_tokens INTEGER, completion_tokens INTEGER, usage_source TEXT NOT NULL,
//!   cost_nanos INTEGER, cost_usd REAL,            -- cost_usd = cost_nanos / 1e9, for people
//!   latency_ms REAL,                              -- NULL only if the gateway sent NaN
//!   stream INTEGER NOT NULL,
//!   attempts INTEGER NOT NULL DEFAULT 0,          -- v2: upstream tries
//!   providers_tried TEXT,                         -- v2: "openai,openai-backup"
//!   overrun_nanos INTEGER NOT NULL DEFAULT 0,     -- v3: usage charged beyond the reservation
//!   team TEXT, key_name TEXT, user TEXT,          -- v5: who caused it (the key's name, never the key)
//!   tags TEXT,                                    -- v5: x-tollgate-tags as a JSON object
//!   cache TEXT,                                   -- v6: hit / miss / skip, NULL: no cache
//!   saved_nanos INTEGER NOT NULL DEFAULT 0);      -- v6: what a hit saved
//! CREATE INDEX decisions_time ON decisions(time_ms, id);                  -- v8: ascending
//! CREATE INDEX decisions_project_time ON decisions(project, time_ms, id);
//! CREATE TABLE fleet_settles(                     -- v4: written before a settle is sent to Redis,
//!   hold_id TEXT PRIMARY KEY,                     -- deleted once Redis applied it; what is left
//!   body TEXT NOT NULL,                           -- is replayed (idempotent by hold id), also
//!   created_ms INTEGER NOT NULL);                 -- after a crash
//! ```
//! `decisions` has no uniqueness on `id`: a unique index would slow every
//! insert for a property the gateway already guarantees (request ids are
//! unique); the paging cursor is (time_ms, id).
//! A file whose `user_version` is newer than this build is refused rather than
//! written with an old idea of the schema.

use foldhash::HashMap;
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 8;

/// A batch this large is committed without waiting for the timer, so a burst
/// becomes several medium transactions instead of one huge one.
pub const FLUSH_AT_WRITES: u64 = 5_000;

/// While the database keeps failing, decisions beyond this many are dropped
/// (and counted as failed) so that a dead disk cannot exhaust memory.
pub const MAX_RETAINED_DECISIONS: usize = 100_000;

/// How long a statement waits for a lock held by another connection (e.g. a
/// person running the sqlite3 CLI, or a second gateway process) before failing.
#[cfg(not(test))]
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
// Tests provoke lock failures on purpose; waiting 5 s each time buys nothing.
#[cfg(test)]
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed flush, retries back off up to this delay so a persistent
/// failure logs a few lines a minute, not five a second.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// One request's decision, as shown in the decision log.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    pub id: String,
    pub time_ms: i64,
    pub project: Option<String>,
    /// First 8 hex digits of the key's sha256, never the key.
    pub key_id: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// "allow" | "block"
    pub decision: String,
    /// "ok" when allowed, else a reason code ("budget_exceeded", ...).
    pub reason: String,
    pub status: u16,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// "reported" | "estimated" | "none"
    pub usage_source: String,
    /// None = unknown (unpriced model).
    pub cost_nanos: Option<u64>,
    pub latency_ms: f64,
    pub stream: bool,
    /// Upstream tries made (0 for a request blocked before any), retries and fallbacks included.
    pub attempts: u32,
    /// The provider of each try, in order, comma-separated (`None`: no try).
    pub providers_tried: Option<String>,
    /// How far the charged cost exceeded the reserved worst case, in nano-dollars (0: it did
    /// not, or nothing was reserved).
    pub overrun_nanos: u64,
    /// The project's team, the key's name (never the key), the end user, and the tags as a
    /// JSON object (`None`: none were sent).
    pub team: Option<String>,
    pub key_name: Option<String>,
    pub user: Option<String>,
    pub tags: Option<String>,
    /// The response cache: `hit`, `miss` or `skip` (`None`: the project has no cache, or the
    /// endpoint is not cached); what a hit saved, in nano-dollars.
    pub cache: Option<String>,
    pub saved_nanos: u64,
}

/// Which decision records [`Reader::decisions_where`] returns: each `Some` must match
/// exactly; `tag` is (name, value) of the record's tags; the time range is `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    pub project: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub user: Option<String>,
    pub tag: Option<(String, String)>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// (project, period), as used by [`Reader::all_spend_for`].
pub type SpendKey = (String, String);

/// The period keys one spend write adds to, shared by every write of a day.
pub type Periods = Arc<[Arc<str>]>;

/// A change to persist.
#[derive(Debug, Clone)]
pub enum Write {
    /// Add to an account's spend in each of `periods` (period key strings like "2026-11",
    /// "2026-11-22", "week-of-2026-11-16", "total"). `project` is the account's ledger name
    /// ([`crate::engine::accounts::ledger_name`]): a project's id, `team:…`, `key:…`, `user:…`.
    Spend {
        project: Arc<str>,
        periods: Periods,
        add_nanos: u64,
    },
    /// Set a project's freeze flag; writes are applied in the order sent, so
    /// the last one sent wins (`time_ms` is recorded, not compared, so a clock
    /// step cannot reorder them).
    Freeze {
        project: String,
        frozen: bool,
        time_ms: i64,
    },
    Decision(Box<DecisionRecord>),
    /// Fleet mode: a settlement about to be sent to Redis (JSON `body`), kept until
    /// [`Write::FleetDone`] says Redis applied it.
    FleetQueue {
        hold_id: String,
        body: String,
    },
    /// Fleet mode: Redis applied this hold's settlement.
    FleetDone {
        hold_id: String,
    },
}

/// Counters for metrics. `queued + committed + dropped + failed` = writes sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Writes sent but not yet committed (in the channel or the pending batch).
    pub queued: u64,
    /// Writes committed to SQLite since open (a coalesced spend write counts once per `send`).
    pub committed: u64,
    /// Writes that never reached the writer (sent after shutdown, or the writer thread is gone).
    pub dropped: u64,
    /// Writes that reached the writer but were discarded after SQLite failures.
    pub failed: u64,
    /// Transactions that failed (each is retried; see the module doc).
    pub flush_errors: u64,
    /// Unix ms at the end of the last successful commit; 0 = none yet.
    pub last_flush_ms: i64,
    /// Duration of the last successful commit, in µs.
    pub last_flush_us: u64,
}

#[derive(Default)]
struct Shared {
    /// Writes ever sent (counted before each is pushed, so a count read after a send covers it).
    sent: AtomicU64,
    queued: AtomicU64,
    committed: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    flush_errors: AtomicU64,
    last_flush_ms: AtomicI64,
    last_flush_us: AtomicU64,
    /// So that a gateway sending thousands of writes after the writer died
    /// logs one line, not thousands.
    drop_logged: AtomicBool,
    /// The writer is parked with nothing pending: the next sender must wake it.
    idle: AtomicBool,
}

enum Msg {
    Write(Write),
    #[cfg(test)]
    Flush(Sender<Result<(), String>>),
    Shutdown(Sender<Result<(), String>>),
}

struct Inner {
    /// Behind a lock only so that `shutdown` can take the sender out: after
    /// that no write can slip into the channel behind the Shutdown message and
    /// be lost uncounted. Sends take the read side, which never waits except
    /// during the moment shutdown swaps it.
    tx: RwLock<Option<Sender<Msg>>>,
    join: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to unpark it.
    writer: Thread,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    /// The last handle is gone: disconnect the channel, then wake the writer so
    /// it sees that (it may be parked with nothing pending) and makes its last flush.
    fn drop(&mut self) {
        drop(
            self.tx
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.writer.unpark();
    }
}

/// Cheap to clone; every clone feeds the same writer thread.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

impl StoreHandle {
    /// Non-blocking; never fails the caller (if the writer thread is gone, log once and count as dropped).
    pub fn send(&self, w: Write) {
        let shared = &self.inner.shared;
        // Counted before the send so the writer can never decrement first.
        let queued = shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
        shared.sent.fetch_add(1, Ordering::SeqCst);
        let guard = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        let sent = match guard.as_ref() {
            Some(tx) => tx.send(Msg::Write(w)).is_ok(),
            None => false,
        };
        drop(guard);
        if sent {
            // Pairs with the fence in `Writer::sleep`: either the writer's last look at the
            // channel saw this write, or this load sees `idle` set (Dekker's pattern).
            fence(Ordering::SeqCst);
            let idle =
                shared.idle.load(Ordering::Relaxed) && shared.idle.swap(false, Ordering::Relaxed);
            if idle || queued % FLUSH_AT_WRITES == 0 {
                self.inner.writer.unpark();
            }
        } else {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            if !shared.drop_logged.swap(true, Ordering::Relaxed) {
                log::error!("ledger store: writer is not running (shut down or died); dropping writes from now on (see dropped count)");
            }
        }
    }

    /// Block until everything sent before this call is committed. Returns Err(String) on a
    /// SQLite failure. Tests only: the gateway commits on its timer and at `shutdown`.
    #[cfg(test)]
    pub fn flush(&self) -> Result<(), String> {
        let (reply_tx, reply_rx) = mpsc::channel();
        {
            let guard = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
            let tx = guard
                .as_ref()
                .ok_or_else(|| "ledger store: flush after shutdown".to_string())?;
            tx.send(Msg::Flush(reply_tx))
                .map_err(|_| "ledger store: writer thread is not running".to_string())?;
        }
        self.inner.writer.unpark();
        reply_rx.recv().map_err(|_| {
            "ledger store: writer thread stopped before confirming the flush".to_string()
        })?
    }

    /// Flush, stop the writer thread and join it. Idempotent.
    pub fn shutdown(&self) -> Result<(), String> {
        let tx = self
            .inner
            .tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut result = Ok(());
        if let Some(tx) = tx {
            let (reply_tx, reply_rx) = mpsc::channel();
            let sent = tx.send(Msg::Shutdown(reply_tx));
            self.inner.writer.unpark();
            result = match sent {
                Ok(()) => reply_rx.recv().unwrap_or_else(|_| {
                    Err(
                        "ledger store: writer thread stopped before confirming shutdown"
                            .to_string(),
                    )
                }),
                Err(_) => Err("ledger store: writer thread is not running".to_string()),
            };
        }
        let handle = self
            .inner
            .join
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                log::error!("ledger store: writer thread panicked");
                if result.is_ok() {
                    result = Err("ledger store: writer thread panicked".to_string());
                }
            }
        }
        result
    }

    /// Writes sent so far. Read right after a send, it is a mark that [`StoreHandle::processed`]
    /// passes only once that send (and all pushed before it) was committed or given up: the
    /// channel is FIFO and every send is counted before it is pushed.
    pub fn sent(&self) -> u64 {
        self.inner.shared.sent.load(Ordering::SeqCst)
    }

    /// Writes the writer is done with: committed, or given up (failed, dropped).
    pub fn processed(&self) -> u64 {
        let s = &self.inner.shared;
        s.committed.load(Ordering::SeqCst)
            + s.failed.load(Ordering::SeqCst)
            + s.dropped.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.shared;
        StoreStats {
            queued: s.queued.load(Ordering::Relaxed),
            committed: s.committed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            flush_errors: s.flush_errors.load(Ordering::Relaxed),
            last_flush_ms: s.last_flush_ms.load(Ordering::Relaxed),
            last_flush_us: s.last_flush_us.load(Ordering::Relaxed),
        }
    }
}

pub struct Store;

impl Store {
    /// Open (creating parent dirs and the file), set WAL + synchronous=NORMAL + busy_timeout, create/migrate the schema (PRAGMA user_version), start the writer thread. Returns the handle and a Reader.
    pub fn open(path: &Path, flush_interval: Duration) -> Result<(StoreHandle, Reader), String> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                format!(
                    "ledger store: cannot create directory {}: {e}",
                    parent.display()
                )
            })?;
        }
        let mut conn = open_connection(path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| format!("ledger store: cannot use {shown} as a SQLite database: {e}"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "ledger store: {shown} cannot be put in WAL mode (journal_mode is {mode}); refusing, durability would not hold"
            ));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| format!("ledger store: {shown}: set synchronous: {e}"))?;
        migrate(&mut conn, PROGRESS_EVERY, still_starting)
            .map_err(|e| format!("ledger store: {shown}: {e}"))?;

        let read_conn = open_connection(path)?;
        // A guard, not a permission: the Reader must never be able to write.
        read_conn
            .pragma_update(None, "query_only", "ON")
            .map_err(|e| format!("ledger store: {shown}: reader: {e}"))?;

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            shared: Arc::clone(&shared),
            pending: Batch::default(),
            interval: flush_interval,
            failures: 0,
        };
        let join = std::thread::Builder::new()
            .name("tollgate-store".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("ledger store: cannot start writer thread: {e}"))?;
        let handle = StoreHandle {
            inner: Arc::new(Inner {
                tx: RwLock::new(Some(tx)),
                writer: join.thread().clone(),
                join: Mutex::new(Some(join)),
                shared,
            }),
        };
        Ok((
            handle,
            Reader {
                conn: Mutex::new(read_conn),
            },
        ))
    }
}

fn open_connection(path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("ledger store: cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("ledger store: {}: set busy_timeout: {e}", path.display()))?;
    Ok(conn)
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS spend(
  project TEXT NOT NULL,
  period TEXT NOT NULL,
  spent_nanos INTEGER NOT NULL,
  updated_ms INTEGER,
  PRIMARY KEY(project, period)
);
CREATE TABLE IF NOT EXISTS freezes(
  project TEXT PRIMARY KEY,
  frozen INTEGER NOT NULL,
  updated_ms INTEGER
);
CREATE TABLE IF NOT EXISTS decisions(
  id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  time TEXT NOT NULL,
  project TEXT,
  key_id TEXT,
  endpoint TEXT,
  model TEXT,
  provider TEXT,
  decision TEXT NOT NULL,
  reason TEXT NOT NULL,
  status INTEGER NOT NULL,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  usage_source TEXT NOT NULL,
  cost_nanos INTEGER,
  cost_usd REAL,
  latency_ms REAL,
  stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions(time_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS decisions_project_time ON decisions(project, time_ms DESC, id DESC);
";

/// v2: every try of a request (retries, fallbacks) in its decision record.
const MIGRATE_TO_V2: &str = "
ALTER TABLE decisions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decisions ADD COLUMN providers_tried TEXT;
";

/// v3: usage charged beyond the reserved worst case (SPEC "Money": an overrun is never
/// silent). Rows written before it had no way to know, so they read 0.
const MIGRATE_TO_V3: &str = "
ALTER TABLE decisions ADD COLUMN overrun_nanos INTEGER NOT NULL DEFAULT 0;
";

/// v5: who and what caused a decision (SPEC "Budgets everywhere the money is"). Rows written
/// before it read `NULL`: nothing was known of teams, key names, users or tags then.
const MIGRATE_TO_V5: &str = "
ALTER TABLE decisions ADD COLUMN team TEXT;
ALTER TABLE decisions ADD COLUMN key_name TEXT;
ALTER TABLE decisions ADD COLUMN user TEXT;
ALTER TABLE decisions ADD COLUMN tags TEXT;
";

/// v6: the response cache on each record.
const MIGRATE_TO_V6: &str = "
ALTER TABLE decisions ADD COLUMN cache TEXT;
ALTER TABLE decisions ADD COLUMN saved_nanos INTEGER NOT NULL DEFAULT 0;
";

/// v8: both indexes ascending (see the module's schema notes). One sort of the table each; the
/// names stay, so nothing that names them changes.
const MIGRATE_TO_V8: &str = "
DROP INDEX IF EXISTS decisions_time;
DROP INDEX IF EXISTS decisions_project_time;
CREATE INDEX decisions_time ON decisions(time_ms, id);
CREATE INDEX decisions_project_time ON decisions(project, time_ms, id);
";

/// v4: fleet mode's settle queue.
const MIGRATE_TO_V4: &str = "
CREATE TABLE IF NOT EXISTS fleet_settles(
  hold_id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
";

/// How often a long migration tells the service manager it is still starting.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A long migration's heartbeat: under systemd (`Type=notify`), `EXTEND_TIMEOUT_USEC` gives
/// the start 30 s more from now, so `TimeoutStartSec` does not kill a start that is busy
/// building rollups of a big store (and roll the migration back, and start over).
fn still_starting() {
    crate::notify::notify("EXTEND_TIMEOUT_USEC=30000000");
}

/// About how many decision records the store holds (the largest rowid), for a migration's
/// warning.
fn record_count(conn: &Connection) -> i64 {
    conn.query_row("SELECT coalesce(max(rowid), 0) FROM decisions", [], |r| {
        r.get(0)
    })
    .unwrap_or(0)
}

/// Runs `step` (a long migration step) with `progress` called every `every` while SQLite works.
fn with_heartbeat(
    conn: &Connection,
    every: Duration,
    progress: fn(),
    step: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let mut last = Instant::now();
    conn.progress_handler(
        100_000,
        Some(move || {
            if last.elapsed() >= every {
                progress();
                last = Instant::now();
            }
            false
        }),
    );
    let done = step();
    conn.progress_handler(0, None::<fn() -> bool>);
    done
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction. While a step that reads every
/// record runs (v7's rollups), `progress` is called every `every`.
fn migrate(conn: &mut Connection, every: Duration, progress: fn()) -> Result<(), String> {
    // IMMEDIATE: two processes opening a fresh file at once must not both
    // decide to create the schema from the same old version.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| format!("schema migration: {e}"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("read user_version: {e}"))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this build supports ({SCHEMA_VERSION}); refusing to write to it"
        ));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)
            .map_err(|e| format!("create schema v1: {e}"))?;
    }
    if version < 2 {
        tx.execute_batch(MIGRATE_TO_V2)
            .map_err(|e| format!("migrate schema to v2: {e}"))?;
    }
    if version < 3 {
        tx.execute_batch(MIGRATE_TO_V3)
            .map_err(|e| format!("migrate schema to v3: {e}"))?;
    }
    if version < 4 {
        tx.execute_batch(MIGRATE_TO_V4)
            .map_err(|e| format!("migrate schema to v4: {e}"))?;
    }
    if version < 5 {
        tx.execute_batch(MIGRATE_TO_V5)
            .map_err(|e| format!("migrate schema to v5: {e}"))?;
    }
    if version < 6 {
        tx.execute_batch(MIGRATE_TO_V6)
            .map_err(|e| format!("migrate schema to v6: {e}"))?;
    }
    if version < 7 {
        let records = record_count(&tx);
        if records > 100_000 {
            log::warn!(
                "schema v7: building the report rollups from about {records} decision records \
                 (once; roughly 10 s per million records)"
            );
        }
        with_heartbeat(&tx, every, progress, || {
            tx.execute_batch(&super::rollups::create_v7())
                .map_err(|e| format!("migrate schema to v7: {e}"))?;
            if let Err(e) = tx.execute_batch(&super::rollups::fill_v7(false)) {
                log::warn!("schema v7: exact rollups of the old records failed ({e}); saturating");
                tx.execute_batch(&super::rollups::fill_v7(true))
                    .map_err(|e| format!("migrate schema to v7 (build the rollups): {e}"))?;
            }
            Ok(())
        })?;
    }
    if version < 8 {
        let records = record_count(&tx);
        if records > 1_000_000 {
            log::warn!(
                "schema v8: rebuilding the two decision indexes over about {records} records \
                 (once; a few seconds per million records)"
            );
        }
        with_heartbeat(&tx, every, progress, || {
            tx.execute_batch(MIGRATE_TO_V8)
                .map_err(|e| format!("migrate schema to v8: {e}"))
        })?;
    }
    // Later versions: `if version < 9 { ... }`.
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| format!("set user_version: {e}"))?;
    }
    tx.commit()
        .map_err(|e| format!("schema migration commit: {e}"))
}

/// Writes received but not yet committed.
#[derive(Default)]
struct Batch {
    spend: HashMap<(Arc<str>, Arc<str>), u64>,
    freezes: HashMap<String, (bool, i64)>,
    decisions: Vec<DecisionRecord>,
    /// Fleet settle queue: `Some(body)` to insert, `None` to delete. A settlement queued and
    /// done within one batch never touches the disk.
    fleet: HashMap<String, Option<String>>,
    /// Writes as sent (before coalescing), for the stats.
    writes: u64,
}

impl Batch {
    fn add(&mut self, w: Write) {
        self.writes += 1;
        match w {
            Write::Spend {
                project,
                periods,
                add_nanos,
            } => {
                for period in periods.iter() {
                    let total = self
                        .spend
                        .entry((project.clone(), period.clone()))
                        .or_insert(0);
                    *total = total.saturating_add(add_nanos);
                }
            }
            Write::Freeze {
                project,
                frozen,
                time_ms,
            } => {
                self.freezes.insert(project, (frozen, time_ms));
            }
            Write::Decision(d) => self.decisions.push(*d),
            Write::FleetQueue { hold_id, body } => {
                self.fleet.insert(hold_id, Some(body));
            }
            Write::FleetDone { hold_id } => {
                if let Some(Some(_)) = self.fleet.get(&hold_id) {
                    self.fleet.remove(&hold_id);
                } else {
                    self.fleet.insert(hold_id, None);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.writes == 0
    }
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    pending: Batch,
    interval: Duration,
    /// Consecutive failed commits; drives the retry back-off.
    failures: u32,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        // When the pending batch must be committed; None while it is empty, so
        // an idle gateway does not wake this thread at all.
        let mut due: Option<Instant> = None;
        // A message `sleep` took off the channel instead of sleeping.
        let mut held: Option<Msg> = None;
        loop {
            // Drain everything sent so far, in order.
            let mut attempted = false;
            let disconnected = loop {
                let msg = match held.take().map_or_else(|| rx.try_recv(), Ok) {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                };
                match msg {
                    Msg::Write(w) => {
                        self.pending.add(w);
                        // The first write of a batch starts the clock.
                        due = due.or_else(|| Some(Instant::now() + self.interval));
                        // While failing, the size trigger would retry on every
                        // write; the back-off timer decides instead.
                        if self.pending.writes >= FLUSH_AT_WRITES && self.failures == 0 {
                            attempted = true;
                            let _ = self.commit();
                        }
                    }
                    #[cfg(test)]
                    Msg::Flush(reply) => {
                        attempted = true;
                        let _ = reply.send(self.commit());
                    }
                    Msg::Shutdown(reply) => {
                        let result = self.commit();
                        self.discard_pending("shutdown");
                        let _ = reply.send(result);
                        return;
                    }
                }
            };
            if disconnected {
                break;
            }
            if due.is_some_and(|at| Instant::now() >= at) {
                attempted = true;
                let _ = self.commit();
            }
            due = if self.pending.is_empty() {
                None
            } else if attempted {
                // Only a failed attempt leaves writes pending.
                Some(Instant::now() + self.retry_delay())
            } else {
                due
            };
            held = self.sleep(&rx, due);
        }
        // Every handle was dropped without shutdown: best-effort last flush.
        let _ = self.commit();
        self.discard_pending("handles dropped");
    }

    /// Park until `due`, or (with nothing pending) until a sender wakes us. Spurious
    /// wake-ups are harmless: the loop drains and sleeps again. Returns a message found
    /// on the channel instead of sleeping.
    fn sleep(&self, rx: &Receiver<Msg>, due: Option<Instant>) -> Option<Msg> {
        match due {
            Some(at) => {
                std::thread::park_timeout(at.saturating_duration_since(Instant::now()));
                None
            }
            None => {
                self.shared.idle.store(true, Ordering::Relaxed);
                // Pairs with the fence in `StoreHandle::send`.
                fence(Ordering::SeqCst);
                // A write sent before `idle` was set did not unpark us: look once more.
                let found = match rx.try_recv() {
                    Ok(m) => Some(m),
                    // The drain loop sees the disconnection next.
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty) => {
                        std::thread::park();
                        None
                    }
                };
                self.shared.idle.store(false, Ordering::Relaxed);
                found
            }
        }
    }

    fn retry_delay(&self) -> Duration {
        let factor = 1u32 << self.failures.min(8);
        self.interval
            .saturating_mul(factor)
            .clamp(Duration::from_millis(50), MAX_RETRY_DELAY)
    }

    /// Commit the pending batch in one transaction. On failure the batch is
    /// kept for the next attempt (the transaction was rolled back, so a retry
    /// cannot double count).
    fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match write_batch(&mut self.conn, &self.pending) {
            Ok(()) => {
                let n = self.pending.writes;
                self.pending = Batch::default();
                self.failures = 0;
                let s = &self.shared;
                s.queued.fetch_sub(n, Ordering::Relaxed);
                s.committed.fetch_add(n, Ordering::SeqCst);
                s.last_flush_us.store(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                s.last_flush_ms
                    .store(crate::clock::unix_ms(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.shared.flush_errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "ledger store: commit of {} writes failed (attempt {}), keeping them for retry: {e}",
                    self.pending.writes, self.failures
                );
                log::error!("{msg}");
                let excess = self
                    .pending
                    .decisions
                    .len()
                    .saturating_sub(MAX_RETAINED_DECISIONS);
                if excess > 0 {
                    // Oldest first: the newest decisions are the ones an
                    // operator looks at after the incident.
                    self.pending.decisions.drain(..excess);
                    self.count_failed(excess as u64);
                    log::error!(
                        "ledger store: discarded {excess} decision records to bound memory while the database is failing"
                    );
                }
                Err(msg)
            }
        }
    }

    fn count_failed(&mut self, n: u64) {
        self.pending.writes = self.pending.writes.saturating_sub(n);
        self.shared.queued.fetch_sub(n, Ordering::Relaxed);
        self.shared.failed.fetch_add(n, Ordering::SeqCst);
    }

    fn discard_pending(&mut self, why: &str) {
        let n = self.pending.writes;
        if n > 0 {
            log::error!(
                "ledger store: {why}: discarding {n} uncommitted writes after a failed commit"
            );
            self.count_failed(n);
            self.pending = Batch::default();
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &Batch) -> rusqlite::Result<()> {
    // IMMEDIATE takes the write lock up front, so lock contention goes through
    // busy_timeout instead of failing at the first INSERT.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = crate::clock::unix_ms();
    {
        let mut spend = tx.prepare_cached(
            "INSERT INTO spend(project, period, spent_nanos, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(project, period) DO UPDATE SET
               spent_nanos = CASE WHEN spend.spent_nanos > 9223372036854775807 - excluded.spent_nanos
                                  THEN 9223372036854775807
                                  ELSE spend.spent_nanos + excluded.spent_nanos END,
               updated_ms = excluded.updated_ms",
        )?;
        for ((project, period), add) in &batch.spend {
            spend.execute(params![&**project, &**period, clamp_i64(*add), now])?;
        }
        let mut freeze = tx.prepare_cached(
            "INSERT INTO freezes(project, frozen, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(project) DO UPDATE SET frozen = excluded.frozen, updated_ms = excluded.updated_ms",
        )?;
        for (project, (frozen, time_ms)) in &batch.freezes {
            freeze.execute(params![project, frozen, time_ms])?;
        }
        if !batch.fleet.is_empty() {
            let mut queue = tx.prepare_cached(
                "INSERT INTO fleet_settles(hold_id, body, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(hold_id) DO UPDATE SET body = excluded.body",
            )?;
            let mut done = tx.prepare_cached("DELETE FROM fleet_settles WHERE hold_id = ?1")?;
            for (id, body) in &batch.fleet {
                match body {
                    Some(b) => queue.execute(params![id, b, now])?,
                    None => done.execute(params![id])?,
                };
            }
        }
        // Rows go in INSERT_ROWS at a time: one statement run per 8 records, not per record
        // (its start, its cursors on the table and both indexes, its halt), the rest one by one.
        let mut time_buf = [0u8; 24];
        let mut chunks = batch.decisions.chunks_exact(INSERT_ROWS);
        if chunks.len() > 0 {
            let mut many = tx.prepare_cached(&DECISION_INSERT_MANY)?;
            for chunk in &mut chunks {
                for (i, d) in chunk.iter().enumerate() {
                    bind_decision(&mut many, i * DECISION_PARAMS, d, &mut time_buf)?;
                }
                many.raw_execute()?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut one = tx.prepare_cached(&DECISION_INSERT_ONE)?;
            for d in rest {
                bind_decision(&mut one, 0, d, &mut time_buf)?;
                one.raw_execute()?;
            }
        }
    }
    super::rollups::write(&tx, &batch.decisions)?;
    tx.commit()
}

/// Records per multi-row INSERT.
const INSERT_ROWS: usize = 8;
/// Columns (parameters) of one decision row.
const DECISION_PARAMS: usize = 27;

fn decision_insert(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO decisions(id, time_ms, time, project, key_id, endpoint, model, provider,
           decision, reason, status, prompt_tokens, completion_tokens, usage_source,
           cost_nanos, cost_usd, latency_ms, stream, attempts, providers_tried, overrun_nanos,
           team, key_name, user, tags, cache, saved_nanos) VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..DECISION_PARAMS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(r * DECISION_PARAMS + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

static DECISION_INSERT_ONE: once_cell::sync::Lazy<String> =
    once_cell::sync::Lazy::new(|| decision_insert(1));
static DECISION_INSERT_MANY: once_cell::sync::Lazy<String> =
    once_cell::sync::Lazy::new(|| decision_insert(INSERT_ROWS));

/// Bind `d` as the row whose first parameter follows `base` (SQLite copies each value).
fn bind_decision(
    stmt: &mut rusqlite::CachedStatement<'_>,
    base: usize,
    d: &DecisionRecord,
    time_buf: &mut [u8; 24],
) -> rusqlite::Result<()> {
    let time_owned;
    let time = match crate::engine::time::rfc3339_millis_into(d.time_ms, time_buf) {
        Some(t) => t,
        None => {
            time_owned = crate::engine::time::rfc3339_millis(d.time_ms);
            &time_owned
        }
    };
    let mut at = base;
    let mut bind = |v: &dyn rusqlite::ToSql| {
        at += 1;
        stmt.raw_bind_parameter(at, v)
    };
    bind(&d.id)?;
    bind(&d.time_ms)?;
    bind(&time)?;
    bind(&d.project)?;
    bind(&d.key_id)?;
    bind(&d.endpoint)?;
    bind(&d.model)?;
    bind(&d.provider)?;
    bind(&d.decision)?;
    bind(&d.reason)?;
    bind(&d.status)?;
    bind(&d.prompt_tokens.map(clamp_i64))?;
    bind(&d.completion_tokens.map(clamp_i64))?;
    bind(&d.usage_source)?;
    bind(&d.cost_nanos.map(clamp_i64))?;
    bind(&d.cost_nanos.map(|n| n as f64 / 1e9))?;
    // SQLite stores NaN as NULL; read back as NaN.
    bind(&d.latency_ms)?;
    bind(&d.stream)?;
    bind(&d.attempts)?;
    bind(&d.providers_tried)?;
    bind(&clamp_i64(d.overrun_nanos))?;
    bind(&d.team)?;
    bind(&d.key_name)?;
    bind(&d.user)?;
    bind(&d.tags)?;
    bind(&d.cache)?;
    bind(&clamp_i64(d.saved_nanos))
}

/// SQLite integers are i64; a u64 above i64::MAX (≈ $9.2 billion in
/// nano-dollars) would make the whole batch fail, so it saturates instead.
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A separate read connection (WAL allows reads concurrent with the writer). Methods are blocking; the gateway calls them from a blocking-pool thread, never a request phase.
pub struct Reader {
    conn: Mutex<Connection>,
}

const DECISION_COLUMNS: &str =
    "id, time_ms, project, key_id, endpoint, model, provider, decision, reason, \
     status, prompt_tokens, completion_tokens, usage_source, cost_nanos, latency_ms, stream, \
     attempts, providers_tried, overrun_nanos, team, key_name, user, tags, cache, saved_nanos";

impl Reader {
    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a read connection in a
        // bad state, so a poisoned lock is simply taken over.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spend of one project in one period; 0 if nothing was ever recorded (tests; the
    /// gateway reads many at once with [`Reader::all_spend_for`]).
    #[cfg(test)]
    pub fn spend(&self, project: &str, period: &str) -> Result<u64, String> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT spent_nanos FROM spend WHERE project = ?1 AND period = ?2")
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        stmt.query_row(params![project, period], |r| r.get::<_, u64>(0))
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("ledger store: read spend of {project}/{period}: {e}"))
    }

    /// Spend for each requested (project, period) pair, in request order,
    /// with 0 for pairs never recorded; read from one snapshot so the values
    /// are consistent with each other.
    pub fn all_spend_for(
        &self,
        periods: &[(String, String)],
    ) -> Result<Vec<(SpendKey, u64)>, String> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        let mut out = Vec::with_capacity(periods.len());
        {
            let mut stmt = tx
                .prepare_cached("SELECT spent_nanos FROM spend WHERE project = ?1 AND period = ?2")
                .map_err(|e| format!("ledger store: read spend: {e}"))?;
            for (project, period) in periods {
                let v = stmt
                    .query_row(params![project, period], |r| r.get::<_, u64>(0))
                    .optional()
                    .map_err(|e| format!("ledger store: read spend of {project}/{period}: {e}"))?
                    .unwrap_or(0);
                out.push(((project.clone(), period.clone()), v));
            }
        }
        tx.finish()
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        Ok(out)
    }

    /// Accounts whose ledger name starts with `prefix` (e.g. `user:checkout-bot/`), with their
    /// spend in `period` (a period key), in name order, after the name `after` (exclusive;
    /// paging), at most `limit`: the name without the prefix, and the spend.
    pub fn spend_with_prefix(
        &self,
        prefix: &str,
        period: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, String> {
        // Every name with the prefix sorts between the prefix and the prefix with its last
        // byte raised by one (prefixes end in '/', raised to '0').
        let mut upper = prefix.as_bytes().to_vec();
        if let Some(last) = upper.last_mut() {
            *last = last.saturating_add(1);
        }
        let upper = String::from_utf8(upper)
            .map_err(|_| "ledger store: a prefix must end in an ASCII byte".to_string())?;
        let from = format!("{prefix}{}", after.unwrap_or(""));
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT project, spent_nanos FROM spend
                 WHERE project > ?1 AND project < ?2 AND period = ?3
                 ORDER BY project LIMIT ?4",
            )
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        let rows = stmt
            .query_map(params![from, upper, period, clamp_i64(limit as u64)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
            })
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        let rows = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| format!("ledger store: read spend: {e}"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, n)| Some((name.strip_prefix(prefix)?.to_string(), n)))
            .collect())
    }

    /// Fleet mode: settlements not yet applied in Redis, oldest first, at most `limit`.
    pub fn fleet_pending(&self, limit: usize) -> Result<Vec<(String, String)>, String> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT hold_id, body FROM fleet_settles ORDER BY created_ms, hold_id LIMIT ?1",
            )
            .map_err(|e| format!("ledger store: read fleet settles: {e}"))?;
        let rows = stmt
            .query_map(params![clamp_i64(limit as u64)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| format!("ledger store: read fleet settles: {e}"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| format!("ledger store: read fleet settles: {e}"))
    }

    /// Every project that ever had a freeze write, with its current flag, by project name.
    pub fn freezes(&self) -> Result<Vec<(String, bool)>, String> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT project, frozen FROM freezes ORDER BY project")
            .map_err(|e| format!("ledger store: read freezes: {e}"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))
            .map_err(|e| format!("ledger store: read freezes: {e}"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| format!("ledger store: read freezes: {e}"))
    }

    /// Newest first; `project` filter optional; `before_time_ms`/`before_id` for paging (records strictly older than that cursor).
    ///
    /// "Older" is the order (time_ms, id) descending, so records sharing a
    /// millisecond page correctly; pass the last record's (time_ms, id) to get
    /// the next page.
    #[cfg(test)]
    pub fn decisions(
        &self,
        project: Option<&str>,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> Result<Vec<DecisionRecord>, String> {
        let filter = DecisionFilter {
            project: project.map(str::to_string),
            ..Default::default()
        };
        self.decisions_where(&filter, limit, before)
    }

    /// [`Reader::decisions`] with every filter of [`DecisionFilter`]. The project filter and
    /// the time range use the indexes; the others are checked on the rows the index walk
    /// meets, newest first, until `limit` match (a rare value over a long range reads more).
    pub fn decisions_where(
        &self,
        f: &DecisionFilter,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> Result<Vec<DecisionRecord>, String> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::with_capacity(8);
        for (column, value) in [
            ("project", &f.project),
            ("decision", &f.decision),
            ("reason", &f.reason),
            ("model", &f.model),
            ("user", &f.user),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(Value::Text(v.clone()));
            }
        }
        if let Some((name, value)) = &f.tag {
            // A JSON path with the name quoted, so any tag name is one path step.
            let mut path = String::from("$.");
            crate::engine::error::push_json_string(&mut path, name);
            sql.push_str(" AND json_extract(tags, ?) = ?");
            args.push(Value::Text(path));
            args.push(Value::Text(value.clone()));
        }
        if let Some(t) = f.from_ms {
            sql.push_str(" AND time_ms >= ?");
            args.push(Value::Integer(t));
        }
        if let Some(t) = f.to_ms {
            sql.push_str(" AND time_ms < ?");
            args.push(Value::Integer(t));
        }
        if let Some((t, id)) = before {
            // The `time_ms <= ?` half lets SQLite seek the index; the OR half
            // breaks ties within one millisecond by id.
            sql.push_str(" AND time_ms <= ? AND (time_ms < ? OR id < ?)");
            args.push(Value::Integer(t));
            args.push(Value::Integer(t));
            args.push(Value::Text(id));
        }
        sql.push_str(" ORDER BY time_ms DESC, id DESC LIMIT ?");
        args.push(Value::Integer(clamp_i64(limit as u64)));

        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&sql)
            .map_err(|e| format!("ledger store: read decisions: {e}"))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(DecisionRecord {
                    id: r.get(0)?,
                    time_ms: r.get(1)?,
                    project: r.get(2)?,
                    key_id: r.get(3)?,
                    endpoint: r.get(4)?,
                    model: r.get(5)?,
                    provider: r.get(6)?,
                    decision: r.get(7)?,
                    reason: r.get(8)?,
                    status: r.get(9)?,
                    prompt_tokens: r.get(10)?,
                    completion_tokens: r.get(11)?,
                    usage_source: r.get(12)?,
                    cost_nanos: r.get(13)?,
                    latency_ms: r.get::<_, Option<f64>>(14)?.unwrap_or(f64::NAN),
                    stream: r.get(15)?,
                    attempts: r.get(16)?,
                    providers_tried: r.get(17)?,
                    overrun_nanos: r.get(18)?,
                    team: r.get(19)?,
                    key_name: r.get(20)?,
                    user: r.get(21)?,
                    tags: r.get(22)?,
                    cache: r.get(23)?,
                    saved_nanos: r.get(24)?,
                })
            })
            .map_err(|e| format!("ledger store: read decisions: {e}"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| format!("ledger store: read decisions: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;

    const LONG: Duration = Duration::from_secs(3600);

    fn db_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("ledger.db")
    }

    fn open(path: &Path, interval: Duration) -> (StoreHandle, Reader) {
        match Store::open(path, interval) {
            Ok(v) => v,
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }

    fn spend(project: &str, period: &str, add_nanos: u64) -> Write {
        let periods: Periods = Arc::from(vec![Arc::<str>::from(period)]);
        Write::Spend {
            project: project.into(),
            periods,
            add_nanos,
        }
    }

    fn freeze(project: &str, frozen: bool, time_ms: i64) -> Write {
        Write::Freeze {
            project: project.into(),
            frozen,
            time_ms,
        }
    }

    fn rec(id: &str, time_ms: i64, project: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            id: id.into(),
            time_ms,
            project: project.map(String::from),
            key_id: Some("a1b2c3d4".into()),
            endpoint: Some("/v1/chat/completions".into()),
            model: Some("gpt-4o-mini".into()),
            provider: Some("openai".into()),
            decision: "allow".into(),
            reason: "ok".into(),
            status: 200,
            prompt_tokens: Some(12),
            completion_tokens: Some(34),
            usage_source: "reported".into(),
            cost_nanos: Some(1_234_567),
            latency_ms: 12.5,
            stream: true,
            attempts: 2,
            providers_tried: Some("a,b".into()),
            overrun_nanos: 0,
            team: None,
            key_name: None,
            user: None,
            tags: None,
            cache: None,
            saved_nanos: 0,
        }
    }

    fn decision(r: DecisionRecord) -> Write {
        Write::Decision(Box::new(r))
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn rollup_totals(
        r: &Reader,
        dims: &[super::super::rollups::Dim],
    ) -> Vec<super::super::rollups::Row> {
        r.rollups(&super::super::rollups::Query {
            from_ms: 0,
            to_ms: i64::MAX,
            dims,
            bucket_ms: Some(super::super::rollups::HOUR_MS),
            project: None,
        })
        .unwrap()
    }

    /// Every row of the four rollup tables, table by table.
    fn dump_rollups(path: &Path) -> Vec<Vec<String>> {
        let c = Connection::open(path).unwrap();
        super::super::rollups::TABLES
            .iter()
            .map(|t| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT * FROM {} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
                        t.name
                    ))
                    .unwrap();
                let n = st.column_count();
                st.query_map([], |r| {
                    let mut row = Vec::new();
                    for i in 0..n {
                        row.push(format!("{:?}", r.get::<_, Value>(i)?));
                    }
                    Ok(row.join("|"))
                })
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap()
            })
            .collect()
    }

    /// Whatever table a report is read from (detailed or coarse, hourly or daily with the
    /// hours at either end), it sums to what the records say.
    #[test]
    fn every_report_shape_sums_to_the_records_whichever_tables_it_reads() {
        use super::super::rollups::{Dim, Query, Sums, DAY_MS, HOUR_MS};
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        let mut records = Vec::new();
        // Three days, every 37 minutes, varied projects, users, tags, models and decisions.
        let mut t = 3 * HOUR_MS + 11;
        let mut i = 0u64;
        while t < 3 * DAY_MS {
            let mut d = rec(&format!("r{i}"), t, Some(["p", "q", "r"][(i % 3) as usize]));
            d.user = (i % 4 != 0).then(|| format!("u{}", i % 5));
            d.tags = (i % 3 == 1).then(|| format!(r#"{{"env":"e{}"}}"#, i % 2));
            d.model = Some(["m1", "m2"][(i % 2) as usize].into());
            d.cost_nanos = Some(1_000 + i * 7);
            if i % 11 == 0 {
                d.decision = "block".into();
                d.reason = "budget_exceeded".into();
                d.cost_nanos = Some(0);
            }
            records.push(d.clone());
            h.send(decision(d));
            t += 37 * 60_000;
            i += 1;
        }
        h.flush().unwrap();
        let value = |d: &DecisionRecord, dim: Dim| -> Option<String> {
            match dim {
                Dim::Project => d.project.clone(),
                Dim::User => d.user.clone(),
                Dim::Tags => d.tags.clone(),
                Dim::Model => d.model.clone(),
                Dim::Decision => Some(d.decision.clone()),
                _ => unreachable!(),
            }
        };
        let ranges = [
            (0, 3 * DAY_MS),
            (5 * HOUR_MS, 2 * DAY_MS + 7 * HOUR_MS),
            (DAY_MS, 2 * DAY_MS),
            (DAY_MS + HOUR_MS, 2 * DAY_MS - HOUR_MS),
            (2 * HOUR_MS, 9 * HOUR_MS),
        ];
        let dims_sets: [&[Dim]; 4] = [
            &[Dim::Project, Dim::Model],
            &[Dim::User],
            &[Dim::Project, Dim::Tags],
            &[Dim::Decision],
        ];
        let mut checked = 0;
        for (from, to) in ranges {
            for dims in dims_sets {
                for bucket in [None, Some(HOUR_MS), Some(DAY_MS)] {
                    let mut want: BTreeMap<(Option<i64>, Vec<Option<String>>), Sums> =
                        BTreeMap::new();
                    for d in records
                        .iter()
                        .filter(|d| d.time_ms >= from && d.time_ms < to)
                    {
                        let b = bucket.map(|b| d.time_ms - d.time_ms % b);
                        let key = (b, dims.iter().map(|&x| value(d, x)).collect());
                        want.entry(key).or_default().add(&Sums {
                            requests: 1,
                            blocked: u64::from(d.decision == "block"),
                            prompt_tokens: 12,
                            completion_tokens: 34,
                            cost_nanos: d.cost_nanos.unwrap_or(0),
                            ..Default::default()
                        });
                    }
                    let got: Vec<_> = r
                        .rollups(&Query {
                            from_ms: from,
                            to_ms: to,
                            dims,
                            bucket_ms: bucket,
                            project: None,
                        })
                        .unwrap()
                        .into_iter()
                        .map(|row| {
                            (
                                (row.bucket_ms.filter(|_| bucket.is_some()), row.dims),
                                row.sums,
                            )
                        })
                        .collect();
                    let want: Vec<_> = want.into_iter().collect();
                    assert_eq!(
                        got, want,
                        "range {from}..{to}, dims {dims:?}, bucket {bucket:?}"
                    );
                    checked += want.len();
                }
            }
        }
        assert!(checked > 500, "{checked}");
        h.shutdown().unwrap();
    }

    #[test]
    fn rollups_sum_the_records_of_each_hour_across_batches_in_the_same_commit() {
        use super::super::rollups::{Dim, Sums, HOUR_MS};
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        let mut blocked = rec("b", HOUR_MS + 5, Some("p"));
        blocked.decision = "block".into();
        blocked.reason = "budget_exceeded".into();
        blocked.status = 402;
        blocked.cost_nanos = Some(0);
        let mut failed = rec("f", HOUR_MS + 6, Some("p"));
        failed.status = 502;
        failed.cost_nanos = None;
        failed.saved_nanos = 9;
        for d in [rec("a", 10, Some("p")), rec("a2", 20, Some("q")), blocked] {
            h.send(decision(d));
        }
        h.flush().unwrap();
        h.send(decision(rec("a3", HOUR_MS - 1, Some("p"))));
        h.send(decision(failed));
        h.flush().unwrap();
        let rows = rollup_totals(&r, &[Dim::Project]);
        let got: Vec<(Option<String>, Option<i64>, Sums)> = rows
            .into_iter()
            .map(|row| (row.dims[0].clone(), row.bucket_ms, row.sums))
            .collect();
        let allowed = |n: u64| Sums {
            requests: n,
            prompt_tokens: 12 * n,
            completion_tokens: 34 * n,
            cost_nanos: 1_234_567 * n,
            ..Default::default()
        };
        assert_eq!(
            got,
            vec![
                (Some("p".into()), Some(0), allowed(2)),
                (Some("q".into()), Some(0), allowed(1)),
                (
                    Some("p".into()),
                    Some(HOUR_MS),
                    Sums {
                        requests: 2,
                        blocked: 1,
                        errors: 1,
                        prompt_tokens: 24,
                        completion_tokens: 68,
                        cost_nanos: 0,
                        saved_nanos: 9,
                    }
                ),
            ]
        );
        h.shutdown().unwrap();
    }

    /// Building the rollups of a big v6 store keeps telling systemd the start goes on.
    #[test]
    fn a_long_migration_sends_heartbeats_while_it_builds_the_rollups() {
        static BEATS: AtomicU64 = AtomicU64::new(0);
        fn beat() {
            BEATS.fetch_add(1, Ordering::Relaxed);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        h.shutdown().unwrap();
        drop(r);
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO decisions(id, time_ms, time, project, decision, reason, status,
                                   usage_source, stream, cost_nanos)
             SELECT 'r' || i, i * 60000, '', 'p' || (i % 7), 'allow', 'ok', 200, 'reported', 0, i
             FROM n;
             DROP TABLE rollups; DROP TABLE rollups_day; DROP TABLE rollups_coarse;
             DROP TABLE rollups_coarse_day; PRAGMA user_version = 6;",
        )
        .unwrap();
        migrate(&mut c, Duration::ZERO, beat).unwrap();
        assert!(BEATS.load(Ordering::Relaxed) > 0, "no heartbeat");
        let (requests, nanos): (i64, i64) = c
            .query_row(
                "SELECT sum(requests), sum(cost_nanos) FROM rollups_coarse_day",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((requests, nanos), (20001, 20000 * 20001 / 2));
        // A file already at this version runs no migration step: no heartbeat.
        BEATS.store(0, Ordering::Relaxed);
        migrate(&mut c, Duration::ZERO, beat).unwrap();
        assert_eq!(BEATS.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_version_6_file_gets_its_rollups_built_from_the_records_it_holds() {
        use super::super::rollups::Dim;
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        let mut tagged = rec("t", 7_200_000 + 1, Some("p"));
        tagged.tags = Some(r#"{"env":"prod"}"#.into());
        tagged.user = Some("alice".into());
        for d in [rec("a", 1, Some("p")), rec("b", 2, None), tagged] {
            h.send(decision(d));
        }
        h.shutdown().unwrap();
        let before = rollup_totals(&r, &[Dim::Project, Dim::User, Dim::Tags]);
        let tables_before = dump_rollups(&path);
        assert!(
            tables_before.iter().all(|t| !t.is_empty()),
            "{tables_before:?}"
        );
        drop(r);
        {
            // What a v6 file looks like: the same records, no rollups.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE rollups; DROP TABLE rollups_day; DROP TABLE rollups_coarse;
                 DROP TABLE rollups_coarse_day; PRAGMA user_version = 6;",
            )
            .unwrap();
        }
        let (h, r) = open(&path, LONG);
        let after = rollup_totals(&r, &[Dim::Project, Dim::User, Dim::Tags]);
        assert_eq!(
            dump_rollups(&path),
            tables_before,
            "all four tables are rebuilt as the writer wrote them"
        );
        assert_eq!(
            after, before,
            "the migration sums the old records as the writer did"
        );
        assert_eq!(after.len(), 3);
        assert_eq!(
            after[0].dims,
            vec![None, None, None],
            "a record without a project"
        );
        h.shutdown().unwrap();
    }

    #[test]
    fn spend_adds_up_across_batches_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        h.send(spend("acme", "2026-11", 100));
        h.send(spend("acme", "total", 100));
        h.flush().unwrap();
        h.send(spend("acme", "2026-11", 250));
        h.send(spend("other", "2026-11", 7));
        h.flush().unwrap();
        assert_eq!(r.spend("acme", "2026-11").unwrap(), 350);
        assert_eq!(r.spend("acme", "total").unwrap(), 100);
        assert_eq!(r.spend("other", "2026-11").unwrap(), 7);
        assert_eq!(r.spend("nobody", "2026-11").unwrap(), 0);
        h.shutdown().unwrap();
        drop(r);

        let (h, r) = open(&path, LONG);
        assert_eq!(r.spend("acme", "2026-11").unwrap(), 350);
        h.send(spend("acme", "2026-11", 50));
        h.shutdown().unwrap();
        assert_eq!(r.spend("acme", "2026-11").unwrap(), 400);
    }

    #[test]
    fn coalesced_batch_gives_same_totals_as_one_flush_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let (coalesced, rc) = open(&dir.path().join("a.db"), LONG);
        let (separate, rs) = open(&dir.path().join("b.db"), LONG);
        for i in 1..=1000u64 {
            let (p, period) = if i % 3 == 0 {
                ("x", "2026-11-22")
            } else {
                ("y", "2026-11")
            };
            coalesced.send(spend(p, period, i));
            separate.send(spend(p, period, i));
            if i % 20 == 0 {
                separate.flush().unwrap();
            }
        }
        coalesced.flush().unwrap();
        separate.flush().unwrap();
        let expect_x: u64 = (1..=1000u64).filter(|i| i % 3 == 0).sum();
        let expect_y: u64 = (1..=1000u64).filter(|i| i % 3 != 0).sum();
        for r in [&rc, &rs] {
            assert_eq!(r.spend("x", "2026-11-22").unwrap(), expect_x);
            assert_eq!(r.spend("y", "2026-11").unwrap(), expect_y);
        }
        // Coalescing must not change how writes are counted.
        assert_eq!(coalesced.stats().committed, 1000);
        assert_eq!(separate.stats().committed, 1000);
    }

    #[test]
    fn all_spend_for_returns_requested_pairs_in_order_with_zero_for_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        h.send(spend("a", "2026-11", 5));
        h.send(spend("b", "total", 9));
        h.flush().unwrap();
        let ask = vec![
            ("b".to_string(), "total".to_string()),
            ("a".to_string(), "2026-12".to_string()),
            ("a".to_string(), "2026-11".to_string()),
        ];
        let got = r.all_spend_for(&ask).unwrap();
        assert_eq!(
            got,
            vec![
                (ask[0].clone(), 9),
                (ask[1].clone(), 0),
                (ask[2].clone(), 5)
            ]
        );
        assert_eq!(r.all_spend_for(&[]).unwrap(), vec![]);
    }

    #[test]
    fn one_spend_write_adds_to_every_period_it_names_and_users_page_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), Duration::from_secs(3600));
        let periods: Periods = Arc::from(vec![
            Arc::<str>::from("2026-11-22"),
            Arc::<str>::from("2026-11"),
            Arc::<str>::from("total"),
        ]);
        for (who, n) in [
            ("user:bot/alice", 5),
            ("user:bot/bob", 7),
            ("user:bot/alice", 1),
            ("user:bot0/zed", 100),
            ("user:bo/x", 100),
            ("bot", 9),
        ] {
            h.send(Write::Spend {
                project: Arc::from(who),
                periods: periods.clone(),
                add_nanos: n,
            });
        }
        h.flush().unwrap();
        assert_eq!(r.spend("user:bot/alice", "2026-11-22").unwrap(), 6);
        assert_eq!(r.spend("user:bot/alice", "2026-11").unwrap(), 6);
        assert_eq!(r.spend("user:bot/alice", "total").unwrap(), 6);
        assert_eq!(r.spend("bot", "2026-11").unwrap(), 9);
        let all = r
            .spend_with_prefix("user:bot/", "2026-11", None, 10)
            .unwrap();
        assert_eq!(
            all,
            vec![("alice".to_string(), 6), ("bob".to_string(), 7)],
            "only this project's users, in id order"
        );
        let page = r
            .spend_with_prefix("user:bot/", "2026-11", Some("alice"), 10)
            .unwrap();
        assert_eq!(page, vec![("bob".to_string(), 7)]);
        assert_eq!(
            r.spend_with_prefix("user:bot/", "2026-11", None, 1)
                .unwrap()
                .len(),
            1
        );
        assert!(r
            .spend_with_prefix("user:bot/", "2026-12", None, 10)
            .unwrap()
            .is_empty());
        assert!(h.processed() >= h.sent(), "every write sent was processed");
        h.shutdown().unwrap();
    }

    #[test]
    fn spend_saturates_instead_of_failing_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        h.send(spend("big", "total", u64::MAX));
        h.send(spend("small", "total", 3));
        h.flush().unwrap();
        h.send(spend("big", "total", 10));
        h.flush().unwrap();
        assert_eq!(r.spend("big", "total").unwrap(), i64::MAX as u64);
        assert_eq!(r.spend("small", "total").unwrap(), 3);
        assert_eq!(h.stats().flush_errors, 0);
    }

    #[test]
    fn freezes_persist_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        // Within one batch: last sent wins even though its time_ms is older.
        h.send(freeze("a", true, 1_000));
        h.send(freeze("a", false, 2_000));
        h.send(freeze("a", true, 500));
        // Across batches.
        h.send(freeze("b", true, 1_000));
        h.flush().unwrap();
        h.send(freeze("b", false, 3_000));
        h.send(freeze("c", false, 3_000));
        h.flush().unwrap();
        let expect = vec![
            ("a".to_string(), true),
            ("b".to_string(), false),
            ("c".to_string(), false),
        ];
        assert_eq!(r.freezes().unwrap(), expect);
        h.shutdown().unwrap();
        drop(r);
        let (h, r) = open(&path, LONG);
        assert_eq!(r.freezes().unwrap(), expect);
        h.shutdown().unwrap();
    }

    #[test]
    fn decisions_round_trip_every_field_including_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        let full = DecisionRecord {
            id: "req-full".into(),
            time_ms: 1_795_341_600_005,
            project: Some("acme".into()),
            key_id: Some("deadbeef".into()),
            endpoint: Some("/v1/messages".into()),
            model: Some("claude-x".into()),
            provider: Some("anthropic".into()),
            decision: "block".into(),
            reason: "budget_exceeded".into(),
            status: 429,
            prompt_tokens: Some(u64::from(u32::MAX) + 1),
            completion_tokens: Some(0),
            usage_source: "estimated".into(),
            cost_nanos: Some(9_000_000_000_000),
            latency_ms: 0.125,
            stream: false,
            attempts: 2,
            providers_tried: Some("a,b".into()),
            overrun_nanos: 164_500,
            team: Some("payments".into()),
            key_name: Some("ci".into()),
            user: Some("alice".into()),
            tags: Some(r#"{"feature":"summarize"}"#.into()),
            cache: Some("hit".into()),
            saved_nanos: 164_500,
        };
        let empty = DecisionRecord {
            id: "req-empty".into(),
            time_ms: 1_795_341_600_004,
            project: None,
            key_id: None,
            endpoint: None,
            model: None,
            provider: None,
            decision: "allow".into(),
            reason: "ok".into(),
            status: 0,
            prompt_tokens: None,
            completion_tokens: None,
            usage_source: "none".into(),
            cost_nanos: None,
            latency_ms: 0.0,
            stream: true,
            attempts: 2,
            providers_tried: Some("a,b".into()),
            overrun_nanos: 0,
            team: None,
            key_name: None,
            user: None,
            tags: None,
            cache: None,
            saved_nanos: 0,
        };
        h.send(decision(full.clone()));
        h.send(decision(empty.clone()));
        h.shutdown().unwrap();
        drop(r);
        let (h, r) = open(&path, LONG);
        assert_eq!(
            r.decisions(None, 10, None).unwrap(),
            vec![full.clone(), empty.clone()]
        );

        // A batch of 19 goes in as two 8-row INSERTs and three single ones: every field of
        // every row lands in its own row, whichever statement carried it.
        let batch: Vec<DecisionRecord> = (0..19)
            .map(|i| {
                let mut d = if i % 3 == 0 {
                    empty.clone()
                } else {
                    full.clone()
                };
                d.id = format!("req-batch-{i:02}");
                d.time_ms = 1_795_341_700_000 + i;
                d.status = 200 + i as u16;
                d.user = (i % 2 == 0).then(|| format!("user-{i}"));
                d.cost_nanos = (i % 4 != 1).then_some(1_000 * i as u64);
                d
            })
            .collect();
        for d in &batch {
            h.send(decision(d.clone()));
        }
        h.shutdown().unwrap();
        drop(r);
        let (_h, r) = open(&path, LONG);
        let newest_first: Vec<DecisionRecord> = batch.iter().rev().cloned().collect();
        assert_eq!(r.decisions(None, 19, None).unwrap(), newest_first);
        let mut all = newest_first;
        all.extend([full.clone(), empty.clone()]);
        assert_eq!(r.decisions(None, 100, None).unwrap(), all);

        // The human-facing columns are derived correctly.
        let c = Connection::open(&path).unwrap();
        let (time, usd): (String, Option<f64>) = c
            .query_row(
                "SELECT time, cost_usd FROM decisions WHERE id = 'req-full'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(time, "2026-11-22T10:00:00.005Z");
        assert_eq!(usd, Some(9000.0));
        let usd: Option<f64> = c
            .query_row(
                "SELECT cost_usd FROM decisions WHERE id = 'req-empty'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(usd, None);
    }

    #[test]
    fn odd_values_in_one_record_do_not_poison_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        let mut odd = rec("odd", 2, Some("p"));
        odd.latency_ms = f64::NAN;
        odd.prompt_tokens = Some(u64::MAX);
        odd.cost_nanos = Some(u64::MAX);
        odd.time_ms = i64::MIN;
        h.send(decision(odd));
        h.send(decision(rec("normal", 1, Some("p"))));
        h.send(spend("p", "total", 1));
        h.flush().unwrap();
        let got = r.decisions(None, 10, None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "normal");
        assert!(got[1].latency_ms.is_nan());
        assert_eq!(got[1].prompt_tokens, Some(i64::MAX as u64));
        assert_eq!(got[1].time_ms, i64::MIN);
        assert_eq!(r.spend("p", "total").unwrap(), 1);
    }

    #[test]
    fn decisions_are_newest_first_with_project_filter_limit_and_cursor_paging() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        // Several records share a millisecond so the id tie-break is exercised.
        let mut all = Vec::new();
        for i in 0..23i64 {
            let project = if i % 2 == 0 { "even" } else { "odd" };
            let id = format!("id-{:02}", (i * 7) % 23);
            let r = rec(&id, 1_000 + i / 4, Some(project));
            all.push(r.clone());
            h.send(decision(r));
        }
        h.flush().unwrap();
        all.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));

        assert_eq!(r.decisions(None, 100, None).unwrap(), all);
        assert_eq!(r.decisions(None, 5, None).unwrap(), all[..5].to_vec());
        assert!(r.decisions(None, 0, None).unwrap().is_empty());

        for (filter, limit) in [(None, 1), (None, 4), (Some("even"), 3), (Some("odd"), 5)] {
            let expect: Vec<_> = all
                .iter()
                .filter(|d| filter.is_none() || d.project.as_deref() == filter)
                .cloned()
                .collect();
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let page = r.decisions(filter, limit, cursor.clone()).unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                cursor = Some((last.time_ms, last.id.clone()));
                got.extend(page);
            }
            assert_eq!(got, expect, "filter {filter:?} limit {limit}");
        }
        assert!(r.decisions(Some("nobody"), 10, None).unwrap().is_empty());
    }

    #[test]
    fn flush_makes_writes_visible_to_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        h.send(spend("p", "total", 42));
        h.send(decision(rec("r1", 1, Some("p"))));
        // With a one-hour interval nothing is committed until asked.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(r.spend("p", "total").unwrap(), 0);
        let s = h.stats();
        assert_eq!((s.queued, s.committed, s.last_flush_ms), (2, 0, 0));
        h.flush().unwrap();
        assert_eq!(r.spend("p", "total").unwrap(), 42);
        assert_eq!(r.decisions(None, 10, None).unwrap().len(), 1);
        let s = h.stats();
        assert_eq!((s.queued, s.committed, s.dropped, s.failed), (0, 2, 0, 0));
        assert!(s.last_flush_ms > 0);
    }

    #[test]
    fn timer_commits_without_an_explicit_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), Duration::from_millis(50));
        h.send(spend("p", "total", 1));
        wait_until("timer flush", || r.spend("p", "total").unwrap() == 1);
        // Writes arriving more often than the interval must not postpone it.
        let stop = Instant::now() + Duration::from_millis(400);
        let mut sent = 1;
        while Instant::now() < stop {
            h.send(spend("p", "total", 1));
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        let seen = r.spend("p", "total").unwrap();
        assert!(seen > 1, "nothing committed during a steady stream");
        wait_until("final timer flush", || {
            r.spend("p", "total").unwrap() == sent
        });
    }

    #[test]
    fn a_full_batch_commits_without_waiting_for_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        for _ in 0..FLUSH_AT_WRITES {
            h.send(spend("p", "total", 1));
        }
        wait_until("size-triggered flush", || {
            r.spend("p", "total").unwrap() == FLUSH_AT_WRITES
        });
    }

    #[test]
    fn shutdown_flushes_is_idempotent_and_later_writes_count_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        let clone = h.clone();
        h.send(spend("p", "total", 5));
        clone.send(decision(rec("last", 9, None)));
        h.shutdown().unwrap();
        assert_eq!(r.spend("p", "total").unwrap(), 5);
        assert_eq!(r.decisions(None, 10, None).unwrap().len(), 1);

        clone.send(spend("p", "total", 1));
        h.send(freeze("p", true, 1));
        let s = h.stats();
        assert_eq!((s.queued, s.committed, s.dropped), (0, 2, 2));
        assert!(h.flush().is_err());
        assert!(clone.shutdown().is_ok());
        assert!(h.shutdown().is_ok());
        assert_eq!(r.spend("p", "total").unwrap(), 5);
    }

    #[test]
    fn dropping_the_handle_without_shutdown_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        h.send(spend("p", "total", 10));
        h.send(decision(rec("kept", 1, Some("p"))));
        h.flush().unwrap();
        h.send(spend("p", "total", 1));
        drop(h);
        drop(r);
        let (h2, r2) = open(&path, LONG);
        let got = r2.spend("p", "total").unwrap();
        // The unflushed +1 may or may not have made it (the orphaned writer
        // makes a last attempt); the flushed part must be there.
        assert!(got == 10 || got == 11, "spend {got}");
        assert_eq!(r2.decisions(None, 10, None).unwrap()[0].id, "kept");
        h2.shutdown().unwrap();
    }

    const KILL_CHILD_ENV: &str = "TOLLGATE_STORE_KILL_CHILD_DB";
    const KILL_CHILD_MARK: &str = "STORE-CHILD-READY";

    /// Body of the child process of `kill_9_keeps_committed_writes_and_loses_only_pending_ones`.
    #[test]
    #[ignore = "helper: run as a child process by the kill -9 test"]
    fn kill_9_child_process() {
        let Some(path) = std::env::var_os(KILL_CHILD_ENV) else {
            return;
        };
        let (h, _r) = open(Path::new(&path), LONG);
        for i in 0..100 {
            h.send(spend("p", "total", 10));
            h.send(decision(rec(&format!("c{i:03}"), i, Some("p"))));
        }
        h.send(freeze("p", true, 1));
        h.flush().unwrap();
        // Sent but, with a one-hour interval, never committed before the kill.
        h.send(spend("p", "total", 1));
        h.send(freeze("p", false, 2));
        h.send(decision(rec("lost", 1_000, Some("p"))));
        println!("\n{KILL_CHILD_MARK}");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn kill_9_keeps_committed_writes_and_loses_only_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let exe = std::env::current_exe().unwrap();
        // The test's path inside the test binary, wherever this file is mounted.
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let mut child = std::process::Command::new(exe)
            .args([
                format!("{module}::kill_9_child_process").as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(KILL_CHILD_MARK));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        assert!(ready, "child never reported ready");

        let (h, r) = open(&path, LONG);
        assert_eq!(r.spend("p", "total").unwrap(), 1000);
        assert_eq!(r.freezes().unwrap(), vec![("p".to_string(), true)]);
        let ds = r.decisions(None, 1000, None).unwrap();
        assert_eq!(ds.len(), 100);
        assert!(ds.iter().all(|d| d.id != "lost"));
        h.shutdown().unwrap();
    }

    #[test]
    fn database_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, _r) = open(&path, LONG);
        h.send(spend("p", "total", 1));
        h.flush().unwrap();
        let c = Connection::open(&path).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version = user_version(&c);
        assert_eq!(version, SCHEMA_VERSION);
        assert!(dir.path().join("ledger.db-wal").exists());
    }

    #[test]
    fn a_second_store_on_the_same_file_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (a, ra) = open(&path, LONG);
        a.send(spend("p", "total", 3));
        a.flush().unwrap();
        let (b, rb) = open(&path, LONG);
        assert_eq!(rb.spend("p", "total").unwrap(), 3);
        b.send(spend("p", "total", 4));
        b.flush().unwrap();
        assert_eq!(ra.spend("p", "total").unwrap(), 7);
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    }

    #[test]
    fn a_held_write_lock_fails_the_flush_and_the_batch_is_retried_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let (h, r) = open(&path, LONG);
        let mut blocker = Connection::open(&path).unwrap();
        let tx = blocker
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        h.send(spend("p", "total", 5));
        h.send(decision(rec("d", 1, Some("p"))));
        let err = h.flush().unwrap_err();
        assert!(err.contains("locked") || err.contains("busy"), "{err}");
        let s = h.stats();
        assert_eq!((s.queued, s.committed, s.flush_errors), (2, 0, 1));
        drop(tx);
        h.send(spend("p", "total", 1));
        h.flush().unwrap();
        assert_eq!(r.spend("p", "total").unwrap(), 6);
        assert_eq!(r.decisions(None, 10, None).unwrap().len(), 1);
        let s = h.stats();
        assert_eq!((s.queued, s.committed, s.failed), (0, 3, 0));
    }

    #[test]
    fn missing_parent_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/ledger.db");
        let (h, r) = open(&path, LONG);
        h.send(spend("p", "total", 1));
        h.shutdown().unwrap();
        assert_eq!(r.spend("p", "total").unwrap(), 1);
    }

    #[test]
    fn an_uncreatable_location_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: fails even for root.
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file.join("sub/ledger.db"), LONG)
            .err()
            .unwrap();
        assert!(err.contains("cannot create directory"), "{err}");
        assert!(err.contains("not-a-dir"), "{err}");

        // The path itself is a directory.
        let err = Store::open(dir.path(), LONG).err().unwrap();
        assert!(err.contains("ledger store"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let garbage: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, garbage).unwrap();
        let err = Store::open(&path, LONG).err().unwrap();
        assert!(err.contains("not a database"), "{err}");
        assert!(err.contains("ledger.db"), "{err}");
    }

    #[test]
    fn a_version_1_file_is_migrated_in_place_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO decisions(id, time_ms, time, decision, reason, status, usage_source, stream)
                 VALUES ('old', 5, 't', 'allow', 'ok', 200, 'reported', 0)",
                [],
            )
            .unwrap();
        }
        let (h, reader) = Store::open(&path, Duration::from_millis(50)).unwrap();
        let got = reader.decisions(None, 10, None).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].id.as_str(),
                got[0].attempts,
                got[0].providers_tried.clone()
            ),
            ("old", 0, None)
        );
        h.shutdown().unwrap();
        let c = Connection::open(&path).unwrap();
        let v = user_version(&c);
        assert_eq!(v, SCHEMA_VERSION);
    }

    fn user_version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn v8_rebuilds_the_decision_indexes_ascending_and_newest_first_needs_no_sort() {
        // A v7 file: the indexes as they were (descending), three records, two in one ms.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v7.db");
        {
            let (h, _r) = Store::open(&path, Duration::from_millis(50)).unwrap();
            h.shutdown().unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP INDEX decisions_time; DROP INDEX decisions_project_time;
                 CREATE INDEX decisions_time ON decisions(time_ms DESC, id DESC);
                 CREATE INDEX decisions_project_time ON decisions(project, time_ms DESC, id DESC);
                 PRAGMA user_version = 7;",
            )
            .unwrap();
            for (id, t, p) in [("a", 5, "p"), ("b", 7, "q"), ("c", 7, "p")] {
                c.execute(
                    "INSERT INTO decisions(id, time_ms, time, project, decision, reason, status,
                       usage_source, stream) VALUES (?1, ?2, 't', ?3, 'allow', 'ok', 200, 'reported', 0)",
                    params![id, t, p],
                )
                .unwrap();
            }
        }
        let (h, reader) = Store::open(&path, Duration::from_millis(50)).unwrap();
        let ids = |f: &DecisionFilter, before: Option<(i64, String)>| {
            reader
                .decisions_where(f, 10, before)
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        };
        let all = DecisionFilter::default();
        let p = DecisionFilter {
            project: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(ids(&all, None), ["c", "b", "a"], "newest first, ties by id");
        assert_eq!(ids(&all, Some((7, "c".into()))), ["b", "a"]);
        assert_eq!(ids(&p, None), ["c", "a"]);
        h.shutdown().unwrap();

        let c = Connection::open(&path).unwrap();
        let v = user_version(&c);
        assert_eq!(v, SCHEMA_VERSION);
        let sql: Vec<String> = c
            .prepare("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'decisions' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            sql,
            [
                "CREATE INDEX decisions_project_time ON decisions(project, time_ms, id)",
                "CREATE INDEX decisions_time ON decisions(time_ms, id)"
            ]
        );
        // Newest first walks an index backwards: no sort of the rows, with or without a project.
        for (q, index) in [
            ("", "decisions_time"),
            ("WHERE project = 'p'", "decisions_project_time"),
        ] {
            let plan: Vec<String> = c
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT id FROM decisions {q} ORDER BY time_ms DESC, id DESC LIMIT 10"
                ))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    #[test]
    fn a_version_2_file_is_migrated_in_place_and_its_old_records_read_no_overrun() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(MIGRATE_TO_V2).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO decisions(id, time_ms, time, decision, reason, status, usage_source,
                   stream, cost_nanos, attempts, providers_tried)
                 VALUES ('old', 5, 't', 'allow', 'ok', 200, 'reported', 0, 164500, 2, 'a,b')",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO spend(project, period, spent_nanos) VALUES ('p', 'total', 77)",
                [],
            )
            .unwrap();
        }
        let (h, reader) = Store::open(&path, LONG).unwrap();
        let got = reader.decisions(None, 10, None).unwrap();
        assert_eq!(got.len(), 1, "the v2 record is kept");
        assert_eq!(
            (
                got[0].id.as_str(),
                got[0].cost_nanos,
                got[0].attempts,
                got[0].providers_tried.as_deref(),
                got[0].overrun_nanos
            ),
            ("old", Some(164_500), 2, Some("a,b"), 0),
            "v2 columns survive and the new column reads 0 for rows written before it"
        );
        assert_eq!(reader.spend("p", "total").unwrap(), 77, "spend is kept");

        let mut new = rec("new", 6, Some("p"));
        new.overrun_nanos = 1_000_000_001;
        h.send(decision(new.clone()));
        h.flush().unwrap();
        assert_eq!(
            reader.decisions(None, 1, None).unwrap(),
            vec![new],
            "the migrated file stores overruns"
        );
        h.shutdown().unwrap();
        let c = Connection::open(&path).unwrap();
        let v = user_version(&c);
        assert_eq!(v, SCHEMA_VERSION, "the file is now the current version");
        assert_eq!(SCHEMA_VERSION, 8);
        let fleet: i64 = c
            .query_row("SELECT COUNT(*) FROM fleet_settles", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fleet, 0, "v4 adds the fleet settle queue, empty");
        let who: (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = c
            .query_row(
                "SELECT team, key_name, user, tags FROM decisions ORDER BY time_ms LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(who, (None, None, None, None), "v5: old records name no one");
    }

    #[test]
    fn the_fleet_settle_queue_keeps_what_redis_has_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        let q = |id: &str, body: &str| Write::FleetQueue {
            hold_id: id.into(),
            body: body.into(),
        };
        let done = |id: &str| Write::FleetDone { hold_id: id.into() };
        // Queued and applied within one batch: never on disk.
        h.send(q("a", "{\"n\":1}"));
        h.send(done("a"));
        // Queued, not applied yet.
        h.send(q("b", "{\"n\":2}"));
        h.send(q("c", "{\"n\":3}"));
        h.flush().unwrap();
        assert_eq!(
            r.fleet_pending(10).unwrap(),
            vec![
                ("b".to_string(), "{\"n\":2}".to_string()),
                ("c".to_string(), "{\"n\":3}".to_string())
            ]
        );
        assert_eq!(r.fleet_pending(1).unwrap().len(), 1, "the limit holds");
        // Applied in a later batch: deleted; a second done is harmless.
        h.send(done("b"));
        h.send(done("b"));
        h.flush().unwrap();
        assert_eq!(
            r.fleet_pending(10).unwrap(),
            vec![("c".to_string(), "{\"n\":3}".to_string())]
        );
        h.shutdown().unwrap();
        // A new process finds what is left.
        let (h2, r2) = open(&db_path(&dir), LONG);
        assert_eq!(r2.fleet_pending(10).unwrap().len(), 1);
        h2.shutdown().unwrap();
    }

    #[test]
    fn a_blocked_records_zero_usage_reads_back_as_zero_not_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), LONG);
        let mut blocked = rec("blocked", 1, Some("p"));
        blocked.decision = "block".into();
        blocked.reason = "secret_detected".into();
        blocked.status = 403;
        blocked.prompt_tokens = Some(0);
        blocked.completion_tokens = Some(0);
        blocked.cost_nanos = Some(0);
        blocked.usage_source = "none".into();
        blocked.attempts = 0;
        blocked.providers_tried = None;
        h.send(decision(blocked.clone()));
        h.flush().unwrap();
        let got = r.decisions(None, 10, None).unwrap();
        assert_eq!(
            (
                got[0].prompt_tokens,
                got[0].completion_tokens,
                got[0].cost_nanos
            ),
            (Some(0), Some(0), Some(0)),
            "0 is a known amount (nothing reached a provider); only None may become NULL"
        );
        assert_eq!(got, vec![blocked]);
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(&path, LONG).err().unwrap();
        assert!(err.contains("newer"), "{err}");
    }

    #[test]
    fn hundred_thousand_decisions_are_all_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r) = open(&db_path(&dir), Duration::from_millis(200));
        const N: u64 = 100_000;
        let start = Instant::now();
        for i in 0..N {
            let mut d = rec(
                &format!("req-{i:08}"),
                1_795_341_600_000 + i as i64,
                Some("load"),
            );
            d.project = Some(format!("proj-{}", i % 10));
            h.send(decision(d));
        }
        let sent = start.elapsed();
        h.flush().unwrap();
        let total = start.elapsed();
        println!(
            "100k decisions: send {:.0} ms, committed after {:.0} ms = {:.0} writes/s",
            sent.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            N as f64 / total.as_secs_f64()
        );
        assert_eq!(h.stats().committed, N);
        let c = r.conn();
        let n: i64 = c
            .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, N as i64);
    }

    #[test]
    fn handle_and_reader_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<StoreHandle>();
        shareable::<Reader>();
        shareable::<Arc<Reader>>();
    }
}
