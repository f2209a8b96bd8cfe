//! A binary upgrade keeps every budget exact: the predecessor hands its ledger to the
//! successor, and from then on the successor alone admits.
//!
//! Pingora's upgrade runs both processes for a while: the successor (started with
//! `serve --upgrade`) takes the listening sockets when the predecessor gets SIGQUIT, and the
//! predecessor keeps serving the connections it has, and its requests in flight, until they
//! end. Two processes admitting against two in-memory ledgers could each spend the same
//! budget; so they do not:
//!
//! 1. The successor, before it asks for the sockets, listens on a Unix socket beside the
//!    upgrade socket (`<upgrade_sock>.ledger`, mode 0600).
//! 2. On SIGQUIT, before the sockets go, the predecessor connects, marks its ledger handed
//!    over ([`Ledger::hand_over`]: every account's spend and holds, read under its lock) and
//!    sends those numbers, its freezes and its rate windows first, then waits for the answer.
//!    The successor takes them over ([`Ledger::take_over`]): its in-memory ledger now counts
//!    everything the predecessor spent and holds.
//! 3. From then on the predecessor admits nothing itself: each new request it still gets is
//!    reserved on the successor over the same connection (the successor checks budgets,
//!    freezes and rate limits and keeps the hold; its settle comes back the same way and the
//!    successor charges and records the spend). Each request the predecessor admitted before
//!    settles locally (its own store records the spend) and sends what it cost, so the
//!    successor releases its hold and charges it ([`Ledger::apply_carried`]).
//!
//! One connection carries everything in order (the numbers first), so the successor never
//! sees a settle before the hold it releases. Why this and not holds shared through the SQLite
//! file: the file would put a disk transaction on every admission of both processes during the
//! overlap, and each process would still need the other's in-memory numbers; handing them over
//! once makes the successor the one authority, as Redis is in fleet mode. (In fleet mode the
//! shared ledger already covers an upgrade: nothing is handed over.)
//!
//! If the successor cannot be reached (none listens, it is a version without this, it answers
//! wrong), the predecessor logs it and the upgrade goes on as before: each process admits on
//! its own numbers during the overlap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::engine::accounts::{AccountKind, AccountRef};
use crate::engine::budget::{Budget, Period};
use crate::engine::config::Config;
use crate::engine::error::{GatewayError, PolicyCode};
use crate::engine::pricing::Nanos;
use crate::ledger::{Carried, CellState, Ledger, Reservation};
use crate::ratelimit::RateLimiter;

/// How long the predecessor waits for the successor to take its numbers.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(5);

/// The hand-over socket of an upgrade socket.
pub fn socket_path(upgrade_sock: &str) -> PathBuf {
    PathBuf::from(format!("{upgrade_sock}.ledger"))
}

// ---------------------------------------------------------------------------------------
// The wire: one JSON object per line each way, one answer per message, in order.

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WireCell {
    name: String,
    period: String,
    key: String,
    spent: u64,
    reserved: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WireAccount {
    kind: String,
    id: String,
    name: String,
    limit: Option<u64>,
    period: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WireRate {
    project: String,
    requests: u64,
    tokens: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Msg {
    State {
        pid: u32,
        cells: Vec<WireCell>,
        frozen: Vec<String>,
        rates: Vec<WireRate>,
    },
    Reserve {
        id: String,
        project: String,
        accounts: Vec<WireAccount>,
        amount: u64,
        charged: bool,
    },
    Settle {
        id: String,
        actual: u64,
        tokens: u64,
    },
    Release {
        id: String,
    },
    Carried {
        project: String,
        cells: Vec<(String, String)>,
        amount: u64,
        actual: u64,
    },
    Freeze {
        project: String,
        frozen: bool,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Reply {
    ok: bool,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    remaining: Option<u64>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after_s: Option<u64>,
}

fn kind_of(s: &str) -> Option<AccountKind> {
    Some(match s {
        "project" => AccountKind::Project,
        "team" => AccountKind::Team,
        "key" => AccountKind::Key,
        "user" => AccountKind::User,
        _ => return None,
    })
}

fn to_wire(a: &AccountRef) -> WireAccount {
    WireAccount {
        kind: a.kind.as_str().to_string(),
        id: a.id.to_string(),
        name: a.name.to_string(),
        limit: a.window.map(|w| w.limit.0),
        period: a.period().as_str().to_string(),
    }
}

fn from_wire(a: &WireAccount) -> Option<AccountRef> {
    let period = Period::parse(&a.period)?;
    Some(AccountRef {
        kind: kind_of(&a.kind)?,
        id: a.id.as_str().into(),
        name: a.name.as_str().into(),
        window: a.limit.map(|l| Budget {
            limit: Nanos(l),
            period,
        }),
    })
}

/// The successor's refusal, as the predecessor answers it to its client.
fn error_of(r: &Reply) -> GatewayError {
    let m = r.message.clone().unwrap_or_default();
    match r.code.as_deref() {
        Some("budget_exceeded") => GatewayError::BudgetExceeded(AccountKind::Project, m),
        Some("team_budget_exceeded") => GatewayError::BudgetExceeded(AccountKind::Team, m),
        Some("key_budget_exceeded") => GatewayError::BudgetExceeded(AccountKind::Key, m),
        Some("user_budget_exceeded") => GatewayError::BudgetExceeded(AccountKind::User, m),
        Some("project_frozen") => GatewayError::PolicyBlocked(PolicyCode::ProjectFrozen, m),
        Some("rate_limited") => GatewayError::RateLimited {
            message: m,
            retry_after_s: r.retry_after_s.unwrap_or(1),
        },
        _ => GatewayError::LedgerUnavailable(format!(
            "The successor process could not admit this request during the upgrade: {m}"
        )),
    }
}

fn refusal(e: &GatewayError) -> Reply {
    Reply {
        ok: false,
        status: Some(e.status()),
        code: Some(e.code().to_string()),
        message: Some(e.message().to_string()),
        retry_after_s: e.retry_after_s(),
        ..Reply::default()
    }
}

// ---------------------------------------------------------------------------------------
// The successor's side.

/// Listen for a predecessor's hand-over (successor, before it asks for the sockets). Runs on
/// its own thread for the life of the process.
pub fn listen(
    path: &Path,
    ledger: Arc<Ledger>,
    config: Arc<ArcSwap<Config>>,
    limits: Arc<RateLimiter>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let std_listener = std::os::unix::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    std_listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("tollgate-handover".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match UnixListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("hand-over socket {shown}: {e}");
                        return;
                    }
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let (l, c, r) = (ledger.clone(), config.clone(), limits.clone());
                            tokio::spawn(async move { serve_predecessor(stream, l, c, r).await });
                        }
                        Err(e) => {
                            log::warn!("hand-over socket: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })?;
    Ok(())
}

/// One predecessor's connection: its numbers, then its admissions and settles, until it exits.
async fn serve_predecessor(
    stream: UnixStream,
    ledger: Arc<Ledger>,
    config: Arc<ArcSwap<Config>>,
    limits: Arc<RateLimiter>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The predecessor's requests admitted here, until they settle: id → (project, hold).
    let mut holds: std::collections::HashMap<String, (String, Reservation)> =
        std::collections::HashMap::new();
    let mut taken = false;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                log::warn!("hand-over: reading from the predecessor: {e}");
                break;
            }
        };
        let reply = match serde_json::from_str::<Msg>(&line) {
            Ok(m) => handle(m, &ledger, &config, &limits, &mut holds, &mut taken),
            Err(e) => Reply {
                ok: false,
                message: Some(format!("bad message: {e}")),
                ..Reply::default()
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
    if !holds.is_empty() {
        log::warn!(
            "hand-over: the predecessor went away with {} requests unsettled; their holds are released",
            holds.len()
        );
    }
    if taken {
        log::info!("hand-over: the predecessor has exited; this process admits alone");
    }
}

fn handle(
    m: Msg,
    ledger: &Ledger,
    config: &ArcSwap<Config>,
    limits: &RateLimiter,
    holds: &mut std::collections::HashMap<String, (String, Reservation)>,
    taken: &mut bool,
) -> Reply {
    let ok = Reply {
        ok: true,
        pid: Some(std::process::id()),
        ..Reply::default()
    };
    match m {
        Msg::State {
            pid,
            cells,
            frozen,
            rates,
        } => {
            if pid == std::process::id() {
                return Reply {
                    ok: false,
                    message: Some("a process cannot hand its ledger to itself".into()),
                    ..Reply::default()
                };
            }
            let cells: Vec<CellState> = cells
                .into_iter()
                .filter_map(|c| {
                    Some(CellState {
                        period: Period::parse(&c.period)?,
                        name: c.name,
                        period_key: c.key,
                        spent: Nanos(c.spent),
                        reserved: Nanos(c.reserved),
                    })
                })
                .collect();
            ledger.take_over(&cells);
            let cfg = config.load();
            for p in &cfg.projects {
                let f = frozen.contains(&p.id);
                if ledger.is_frozen(&p.id) != f {
                    ledger.set_frozen(&p.id, f);
                }
            }
            for r in rates {
                if let Some(p) = cfg.projects.iter().find(|p| p.id == r.project) {
                    limits.carry_over(p, r.requests, r.tokens);
                }
            }
            *taken = true;
            log::info!(
                "hand-over: took the ledger of process {pid} ({} accounts); admitting for both",
                cells.len()
            );
            ok
        }
        Msg::Reserve {
            id,
            project,
            accounts,
            amount,
            charged,
        } => {
            let cfg = config.load();
            let Some(p) = cfg.projects.iter().find(|p| p.id == project) else {
                return refusal(&GatewayError::Unauthorized(format!(
                    "Project {project} is not in the successor's configuration"
                )));
            };
            if ledger.is_frozen(&p.id) {
                return refusal(&GatewayError::PolicyBlocked(
                    PolicyCode::ProjectFrozen,
                    format!("Project {} is frozen by an operator", p.id),
                ));
            }
            if let Err(e) = limits.admit(p) {
                return refusal(&e);
            }
            if !charged {
                return ok;
            }
            let accounts: Vec<AccountRef> = accounts.iter().filter_map(from_wire).collect();
            match ledger.reserve_accounts(&p.id, &accounts, Nanos(amount)) {
                Ok(r) => {
                    let remaining = r.remaining().map(|n| n.0);
                    holds.insert(id, (p.id.clone(), r));
                    Reply { remaining, ..ok }
                }
                Err(e) => refusal(&e),
            }
        }
        Msg::Settle { id, actual, tokens } => {
            if let Some((project, r)) = holds.remove(&id) {
                r.settle_seen(Nanos(actual));
                if let Some(p) = config.load().projects.iter().find(|p| p.id == project) {
                    limits.add_tokens(p, tokens);
                }
            }
            ok
        }
        Msg::Release { id } => {
            holds.remove(&id);
            ok
        }
        Msg::Carried {
            project: _,
            cells,
            amount,
            actual,
        } => {
            let cells = cells
                .into_iter()
                .filter_map(|(n, p)| Some((n, Period::parse(&p)?)))
                .collect();
            ledger.apply_carried(&Carried {
                cells,
                amount: Nanos(amount),
                actual: Nanos(actual),
            });
            ok
        }
        Msg::Freeze { project, frozen } => {
            ledger.set_frozen(&project, frozen);
            ok
        }
    }
}

// ---------------------------------------------------------------------------------------
// The predecessor's side.

type Call = (String, Option<oneshot::Sender<Result<Reply, String>>>);

/// The predecessor's connection to its successor. Messages are queued in order; until the
/// numbers are sent ([`Successor::open`]) they wait, so nothing overtakes them.
pub struct Successor {
    tx: mpsc::UnboundedSender<Call>,
    pending: Mutex<Option<Vec<Call>>>,
    counter: std::sync::atomic::AtomicU64,
}

static SUCCESSOR: OnceLock<Arc<Successor>> = OnceLock::new();

/// Set when an upgrade begins (SIGQUIT, or SIGUSR2 once the successor waits), before the
/// sockets go: from then on every response closes its connection (`Connection: close`), so
/// clients move to the successor between requests. Pingora drops the connections still idle
/// when its graceful shutdown starts (5 s later); without this a busy keep-alive client could
/// send its next request just as its connection is dropped.
static UPGRADING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_upgrading() {
    UPGRADING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process is handing over to a successor (see [`set_upgrading`]).
pub fn upgrading() -> bool {
    UPGRADING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The successor this process handed its ledger to, if it did.
pub fn successor() -> Option<&'static Arc<Successor>> {
    SUCCESSOR.get()
}

impl Successor {
    /// Connect, and run the connection on a thread of its own (the predecessor's runtimes
    /// are shutting down; this must keep answering its last requests until it exits).
    fn connect(path: &Path) -> Result<Arc<Successor>, String> {
        let std_stream =
            std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
        std_stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("tollgate-handover".into())
            .spawn(move || {
                rt.block_on(async move {
                    let stream = match UnixStream::from_std(std_stream) {
                        Ok(s) => s,
                        Err(e) => {
                            log::error!("hand-over: {e}");
                            return;
                        }
                    };
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Some((text, reply)) = rx.recv().await {
                        let answer = async {
                            write
                                .write_all(text.as_bytes())
                                .await
                                .map_err(|e| e.to_string())?;
                            match lines.next_line().await {
                                Ok(Some(l)) => {
                                    serde_json::from_str::<Reply>(&l).map_err(|e| e.to_string())
                                }
                                Ok(None) => Err("the successor closed the connection".to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        };
                        let answer = tokio::time::timeout(HAND_OVER_WITHIN, answer)
                            .await
                            .unwrap_or_else(|_| Err("the successor did not answer in time".into()));
                        if let Err(e) = &answer {
                            log::error!("hand-over: {e}");
                        }
                        if let Some(r) = reply {
                            let _ = r.send(answer);
                        }
                    }
                })
            })
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Successor {
            tx,
            pending: Mutex::new(Some(Vec::new())),
            counter: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn line(m: &Msg) -> String {
        let mut t = serde_json::to_string(m).unwrap_or_default();
        t.push('\n');
        t
    }

    fn enqueue(&self, call: Call) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.as_mut() {
            Some(waiting) => waiting.push(call),
            None => {
                let _ = self.tx.send(call);
            }
        }
    }

    fn send(&self, m: &Msg) {
        self.enqueue((Successor::line(m), None));
    }

    async fn call(&self, m: &Msg) -> Result<Reply, String> {
        let (tx, rx) = oneshot::channel();
        self.enqueue((Successor::line(m), Some(tx)));
        rx.await
            .map_err(|_| "the hand-over connection is gone".to_string())?
    }

    /// Send the numbers, then everything queued behind them.
    fn open(&self, state: &Msg) -> oneshot::Receiver<Result<Reply, String>> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.tx.send((Successor::line(state), Some(tx)));
        for call in p.take().unwrap_or_default() {
            let _ = self.tx.send(call);
        }
        rx
    }

    /// Admit a request on the successor: its budgets (all of `accounts`, all or nothing), its
    /// freeze and its rate limits.
    pub async fn reserve(
        self: &Arc<Self>,
        project: &str,
        accounts: &[AccountRef],
        amount: Nanos,
        charged: bool,
    ) -> Result<RemoteHold, GatewayError> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let m = Msg::Reserve {
            id: id.clone(),
            project: project.to_string(),
            accounts: accounts.iter().map(to_wire).collect(),
            amount: amount.0,
            charged,
        };
        let r = self.call(&m).await.map_err(|e| {
            GatewayError::LedgerUnavailable(format!(
                "The successor process cannot be reached during the upgrade: {e}"
            ))
        })?;
        if !r.ok {
            return Err(error_of(&r));
        }
        Ok(RemoteHold {
            successor: self.clone(),
            id,
            amount,
            remaining: r.remaining.map(Nanos),
            settled: !charged,
        })
    }

    /// An operator's freeze on this process applies on the successor too.
    pub fn freeze(&self, project: &str, frozen: bool) {
        self.send(&Msg::Freeze {
            project: project.to_string(),
            frozen,
        });
    }
}

/// A request this process admitted on its successor; settles there, or releases if dropped.
pub struct RemoteHold {
    successor: Arc<Successor>,
    id: String,
    amount: Nanos,
    pub remaining: Option<Nanos>,
    settled: bool,
}

impl RemoteHold {
    pub fn amount(&self) -> Nanos {
        self.amount
    }

    /// Charge `actual` (the successor records it) and count `tokens` against its tpm.
    pub fn settle(mut self, actual: Nanos, tokens: u64) {
        self.settled = true;
        self.successor.send(&Msg::Settle {
            id: self.id.clone(),
            actual: actual.0,
            tokens,
        });
    }
}

impl Drop for RemoteHold {
    fn drop(&mut self) {
        if !self.settled {
            self.successor.send(&Msg::Release {
                id: self.id.clone(),
            });
        }
    }
}

/// The predecessor's hand-over, run on SIGQUIT before the sockets go: connect, hand the
/// ledger over, wait for the successor to take it. On any failure the ledger stays here.
pub async fn hand_over(
    path: PathBuf,
    ledger: Arc<Ledger>,
    config: Arc<ArcSwap<Config>>,
    limits: Arc<RateLimiter>,
) {
    if SUCCESSOR.get().is_some() {
        return;
    }
    let succ = match Successor::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(
                "hand-over: no successor listens on {} ({e}); during the overlap each process admits on its own numbers",
                path.display()
            );
            return;
        }
    };
    // Settles on handed accounts go to the successor, queued behind the numbers.
    let sink = succ.clone();
    ledger.set_carry(Box::new(move |c: Carried| {
        sink.send(&Msg::Carried {
            project: String::new(),
            cells: c
                .cells
                .into_iter()
                .map(|(n, p)| (n, p.as_str().to_string()))
                .collect(),
            amount: c.amount.0,
            actual: c.actual.0,
        })
    }));
    let _ = SUCCESSOR.set(succ.clone());
    let cells = ledger.hand_over();
    let cfg = config.load_full();
    let state = Msg::State {
        pid: std::process::id(),
        cells: cells
            .iter()
            .map(|c| WireCell {
                name: c.name.clone(),
                period: c.period.as_str().to_string(),
                key: c.period_key.clone(),
                spent: c.spent.0,
                reserved: c.reserved.0,
            })
            .collect(),
        frozen: ledger.frozen_list(),
        rates: cfg
            .projects
            .iter()
            .filter_map(|p| {
                let (requests, tokens) = limits.window_counts(p)?;
                Some(WireRate {
                    project: p.id.clone(),
                    requests,
                    tokens,
                })
            })
            .collect(),
    };
    drop(cfg);
    let answer = succ.open(&state).await;
    match answer {
        Ok(Ok(r)) if r.ok && r.pid.is_some_and(|p| p != std::process::id()) => {
            log::info!(
                "hand-over: process {} took the ledger ({} accounts); it admits from now on",
                r.pid.unwrap_or(0),
                cells.len()
            );
        }
        other => {
            // Requests queued behind the numbers get errors and are answered 503; the rest
            // admit here again.
            ledger.undo_hand_over();
            log::error!("hand-over failed ({other:?}); this process admits on its own numbers");
        }
    }
}
