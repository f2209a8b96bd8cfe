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

pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::engine::budget::{refusal_message, Account};
use crate::engine::config::{Config, Project};
use crate::engine::error::{GatewayError, PolicyCode};
use crate::engine::pricing::Nanos;
pub use store::{DecisionRecord, Reader, StoreHandle, Write};

/// A project's account and its id, shared so that reservations and spend writes copy a
/// pointer rather than the id string.
struct Slot {
    project: Arc<str>,
    account: Mutex<Account>,
}

type Cell = Arc<Slot>;

pub struct Ledger {
    accounts: ArcSwap<HashMap<String, Cell>>,
    frozen: ArcSwap<HashSet<String>>,
    store: Option<StoreHandle>,
    reader: Option<Arc<Reader>>,
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
    now_unix: fn() -> i64,
    period: Option<crate::engine::budget::Period>,
    settled: bool,
}

impl Reservation {
    pub fn amount(&self) -> Nanos {
        self.amount
    }

    /// The budget left once this reservation was made, read under the same lock (None when
    /// the project has no budget).
    pub fn remaining(&self) -> Option<Nanos> {
        self.remaining
    }

    /// Release the reservation and charge `actual`.
    pub fn settle(mut self, actual: Nanos) {
        self.finish(actual);
    }

    fn finish(&mut self, actual: Nanos) {
        if self.settled {
            return;
        }
        self.settled = true;
        let period_key = {
            let mut a = lock(&self.cell);
            if let Some(p) = self.period {
                a.roll_at(p, (self.now_unix)());
            }
            a.settle(self.amount, actual);
            a.period_key.clone()
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
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(Nanos::ZERO);
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
        };
        ledger.load(cfg)?;
        Ok(ledger)
    }

    /// A ledger that keeps nothing on disk (unit tests, `check`).
    pub fn in_memory() -> Ledger {
        Ledger {
            accounts: ArcSwap::from_pointee(HashMap::new()),
            frozen: ArcSwap::from_pointee(HashSet::new()),
            store: None,
            reader: None,
        }
    }

    pub fn reader(&self) -> Option<Arc<Reader>> {
        self.reader.clone()
    }

    pub fn store(&self) -> Option<&StoreHandle> {
        self.store.as_ref()
    }

    /// Create accounts for projects that have none yet, reading their current-period spend and
    /// the freezes from the store. Blocking: called at start and from the reload task, never
    /// from a request phase. Existing accounts are kept as they are (a reload never resets
    /// spend).
    pub fn load(&self, cfg: &Config) -> Result<(), String> {
        let now = crate::clock::unix_secs();
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

    pub fn check_frozen(&self, project: &Project) -> Result<(), GatewayError> {
        if self.is_frozen(&project.id) {
            return Err(GatewayError::PolicyBlocked(
                PolicyCode::ProjectFrozen,
                format!("Project {} is frozen by an operator", project.id),
            ));
        }
        Ok(())
    }

    /// Admit a request whose worst case is `amount`, atomically against the project's budget.
    /// Projects without a budget get a reservation too, so their spend is still recorded.
    pub fn reserve(&self, project: &Project, amount: Nanos) -> Result<Reservation, GatewayError> {
        let cell = self.cell(&project.id);
        let remaining = {
            let mut a = lock(&cell);
            a.roll_at(period_of(project), crate::clock::unix_secs());
            match project.budget {
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
            now_unix: crate::clock::unix_secs,
            period: Some(period_of(project)),
            settled: false,
        })
    }

    pub fn status(&self, project: &Project) -> ProjectStatus {
        let cell = self.cell(&project.id);
        let a = {
            let mut a = lock(&cell);
            a.roll_at(period_of(project), crate::clock::unix_secs());
            a.clone()
        };
        let limit = project.budget.map(|b| b.limit);
        ProjectStatus {
            id: project.id.clone(),
            period: period_of(project).as_str(),
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

    /// Commit everything sent so far (graceful stop, tests).
    pub fn flush(&self) -> Result<(), String> {
        match &self.store {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

/// Projects without a budget still account per month, so the admin view shows a useful number.
fn period_of(p: &Project) -> crate::engine::budget::Period {
    p.budget
        .map_or(crate::engine::budget::Period::Month, |b| b.period)
}
