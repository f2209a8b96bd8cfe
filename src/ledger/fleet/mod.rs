//! Fleet ledger, the Redis side: budgets, holds and freezes shared by every instance.
//!
//! [`FleetStore`] owns one `redis` `ConnectionManager` (multiplexed, reconnects in the
//! background, tight timeouts), loads the function library `tollgate_v1` ([`LIBRARY`], the
//! file `tollgate.lua` beside this one) with `FUNCTION LOAD REPLACE`, and turns each library
//! function into a typed async call. All the arithmetic and every check that matters for the
//! invariant (committed + held ≤ limit on every account, all or nothing, idempotent by hold
//! id, expired holds burned) is inside the library, so it is one atomic step on the server;
//! this module only builds arguments, classifies errors and parses replies.
//!
//! [`node`] is this instance's side: admission, the settle queue, the generation, freezes.
//!
//! Must not import: `pingora`, the proxy. Nothing here panics on anything Redis returns.

mod keys;
mod node;
#[cfg(test)]
mod tests;

pub use node::{Fleet, FleetHold};

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Value};

use crate::engine::pricing::Nanos;
#[cfg(test)]
use keys::AccountKind;
pub use keys::ProjectKeys;
#[cfg(test)]
use keys::GENERATION;

/// The function library, embedded so that the binary always loads the code it was tested with.
pub const LIBRARY: &str = include_str!("tollgate.lua");
/// The library's name (the first line of [`LIBRARY`]); a new contract is a new name.
pub const LIBRARY_NAME: &str = "tollgate_v1";
/// The largest amount or limit the library accepts: 2^53 − 1 nanos (about $9M), the largest
/// integer a Lua number holds exactly.
pub const MAX_NANOS: u64 = (1 << 53) - 1;
/// Most accounts one hold can span (the library's own bound).
pub const MAX_ACCOUNTS: usize = 16;

/// How to reach Redis. The URL may hold a password: it comes from the environment, never
/// from the config file, and is never logged.
#[derive(Clone)]
pub struct FleetConfig {
    /// `redis://…` or `rediss://…` (TLS with rustls and the system's roots).
    pub url: String,
    /// A connect that takes longer fails: Redis is then unreachable.
    pub connect_timeout: Duration,
    /// A reply that takes longer is given up: the outcome is unknown.
    pub response_timeout: Duration,
}

impl FleetConfig {
    pub fn new(url: impl Into<String>) -> FleetConfig {
        FleetConfig {
            url: url.into(),
            connect_timeout: Duration::from_millis(50),
            response_timeout: Duration::from_millis(20),
        }
    }
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetError {
    /// Redis could not be reached, the connection dropped or the reply did not come in time.
    /// The call may or may not have run: resend with the same hold id (every call is
    /// idempotent), or settle the id to 0 later.
    Unavailable(String),
    /// The library refused the arguments (`TGARG`) or the caller's own check did; nothing
    /// was changed.
    BadArgument(String),
    /// Anything else: an error reply we did not expect (data that is not ours, OOM, a missing
    /// function), or a reply of the wrong shape.
    Protocol(String),
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetError::Unavailable(m) => write!(f, "redis unavailable (outcome unknown): {m}"),
            FleetError::BadArgument(m) => write!(f, "bad argument: {m}"),
            FleetError::Protocol(m) => write!(f, "redis protocol error: {m}"),
        }
    }
}

impl std::error::Error for FleetError {}

fn classify(e: RedisError) -> FleetError {
    if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return FleetError::Unavailable(e.to_string());
    }
    match e.code() {
        Some("TGARG") => FleetError::BadArgument(e.detail().unwrap_or("").to_string()),
        _ => FleetError::Protocol(e.to_string()),
    }
}

fn is_missing_function(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && e.to_string().contains("Function not found")
}

/// One account of a hold: its budget key ([`ProjectKeys::budget`]), its limit (`None`: no
/// limit, spend is still counted) and the worst case to hold on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountHold {
    pub key: String,
    pub limit: Option<Nanos>,
    pub amount: Nanos,
}

/// One account of a settle: the same key as reserved, and the true cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountActual {
    pub key: String,
    pub actual: Nanos,
}

/// A rate account checked (and counted) by a reserve, on per-minute window keys
/// ([`ProjectKeys::rate`]): refused when `floor(prev × weight / 1000) + curr + need > limit`,
/// otherwise `add` goes to the current window, which expires after `expire_s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCheck {
    pub prev: String,
    pub curr: String,
    pub limit: u64,
    pub need: u64,
    pub add: u64,
    /// Permille of the previous window still inside the sliding minute.
    pub weight_permille: u16,
    pub expire_s: u32,
}

/// Usage added to a rate window by a settle (tpm: the tokens the request used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateAdd {
    pub key: String,
    pub add: u64,
    pub expire_s: u32,
}

/// Every reply carries the store's generation id: a change (or `None`) means Redis lost its
/// data since the caller last looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    pub generation: Option<String>,
    pub value: T,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// Server time (Unix ms) after which the hold burns into committed.
    pub expires_ms: u64,
    /// The project's cfg version (bumped by every freeze/unfreeze).
    pub version: u64,
    /// Budget left on each account after this hold (`None`: the account has no limit).
    pub remaining: Vec<Option<Nanos>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Index into the accounts passed: the first one that could not take the amount.
    pub account: usize,
    pub committed: i64,
    pub held: i64,
    pub limit: Nanos,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    Reserved(Reserved),
    /// Nothing was held anywhere.
    Refused(Refused),
    /// A rate account is full (`rate` indexes the rate checks passed); nothing was held.
    Limited {
        rate: usize,
        count: u64,
        limit: u64,
    },
    /// The counters are being rebuilt after a data loss (`tg_begin`): nothing admitted yet.
    Rebuilding,
    /// The project is frozen; nothing was held.
    Frozen {
        version: u64,
    },
    /// This hold id was settled before the reserve arrived (a late resend): nothing held.
    Void,
    /// `tg:gen` is gone: Redis lost its data. Nothing is admitted until the counters are
    /// rebuilt and the generation set again.
    NoGeneration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Hold released, actual committed; `overrun[i]` = max(0, actual − held) per account.
    Settled { overrun: Vec<Nanos> },
    /// The hold had expired and been burned; the difference was applied, once.
    Corrected { overrun: Vec<Nanos> },
    /// No hold by this id (never reserved, refused, or forgotten) and every actual was 0.
    /// Nothing charged; a late reserve with this id will hold nothing.
    NotHeld,
    /// No hold by this id and no record of one (Redis lost it with its data): the actual
    /// cost was committed, once.
    Charged,
    /// The generation in force is not the one the caller expected: nothing changed.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined {
    /// This member's amounts were added.
    Added,
    /// This member already reported into this generation: nothing changed.
    Already,
    /// Another generation is in force (the one given, or none): nothing changed.
    Stale(Option<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub burned: u64,
    pub forgotten: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub committed: i64,
    /// Every open hold: requests' worst cases and leases.
    pub held: i64,
    /// The part of `held` that is leases (budget slices instances admit against locally).
    pub leased: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub frozen: bool,
    pub version: u64,
    pub open_holds: u64,
    pub accounts: Vec<Balance>,
}

/// A cheap handle (clone it freely): one multiplexed connection shared by all callers.
#[derive(Clone)]
pub struct FleetStore {
    conn: ConnectionManager,
}

impl FleetStore {
    /// Connect, load the library and make sure a generation id exists (tests; an instance
    /// uses [`FleetStore::open`] and [`FleetStore::begin`], which opens a rebuild grace when
    /// it is the one that sets the generation).
    #[cfg(test)]
    pub async fn connect(cfg: &FleetConfig) -> Result<FleetStore, FleetError> {
        let store = FleetStore::open(cfg).await?;
        store.init_generation().await?;
        Ok(store)
    }

    /// Connect and load the library; the generation is left as it is.
    pub async fn open(cfg: &FleetConfig) -> Result<FleetStore, FleetError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| FleetError::BadArgument(format!("redis url: {}", e.category())))?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client, mcfg)
            .await
            .map_err(classify)?;
        let store = FleetStore { conn };
        store.load_library().await?;
        Ok(store)
    }

    /// `FUNCTION LOAD REPLACE` the embedded library.
    pub async fn load_library(&self) -> Result<(), FleetError> {
        let name: Value = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(LIBRARY)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        match text(&name) {
            Some(n) if n == LIBRARY_NAME => Ok(()),
            _ => Err(FleetError::Protocol(format!(
                "FUNCTION LOAD answered {name:?}"
            ))),
        }
    }

    /// Set `tg:gen` to a fresh random id if it is absent; returns the id now in force. After a
    /// data loss this is the step that lets admission resume, so the proxy must call it only
    /// once the counters are rebuilt.
    #[cfg(test)]
    pub async fn init_generation(&self) -> Result<String, FleetError> {
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw)
            .map_err(|e| FleetError::Protocol(format!("no randomness for the generation: {e}")))?;
        let fresh = crate::engine::auth::hex(&raw);
        let _: Value = redis::cmd("SET")
            .arg(GENERATION)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        self.generation()
            .await?
            .ok_or_else(|| FleetError::Protocol("tg:gen vanished right after SET NX".into()))
    }

    /// The generation id in force, `None` if Redis lost it.
    #[cfg(test)]
    pub async fn generation(&self) -> Result<Option<String>, FleetError> {
        let v: Value = redis::cmd("GET")
            .arg(GENERATION)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        match v {
            Value::Nil => Ok(None),
            v => text(&v)
                .map(Some)
                .ok_or_else(|| FleetError::Protocol(format!("GET tg:gen answered {v:?}"))),
        }
    }

    /// Hold `amount` on every account, all or nothing, for `ttl_s` seconds (server time).
    #[cfg(test)]
    pub async fn reserve(
        &self,
        project: &ProjectKeys,
        hold_id: &str,
        owner: &str,
        ttl_s: u32,
        accounts: &[AccountHold],
    ) -> Result<Answer<Reservation>, FleetError> {
        self.reserve_with(project, hold_id, owner, ttl_s, accounts, &[])
            .await
    }

    /// [`FleetStore::reserve`] that also checks and counts rate accounts, in the same step.
    pub async fn reserve_with(
        &self,
        project: &ProjectKeys,
        hold_id: &str,
        owner: &str,
        ttl_s: u32,
        accounts: &[AccountHold],
        rates: &[RateCheck],
    ) -> Result<Answer<Reservation>, FleetError> {
        if accounts.is_empty() || accounts.len() > MAX_ACCOUNTS {
            return Err(FleetError::BadArgument(format!(
                "a hold spans 1..{MAX_ACCOUNTS} accounts, not {}",
                accounts.len()
            )));
        }
        let mut args = vec![hold_id.to_string(), owner.to_string(), ttl_s.to_string()];
        for a in accounts {
            args.push(match a.limit {
                Some(l) => checked(l, "limit")?.to_string(),
                None => "-1".to_string(),
            });
            args.push(checked(a.amount, "amount")?.to_string());
        }
        for r in rates {
            args.push(r.limit.to_string());
            args.push(r.need.to_string());
            args.push(r.add.to_string());
            args.push(r.weight_permille.min(1000).to_string());
            args.push(r.expire_s.to_string());
        }
        let keys = accounts.iter().map(|a| a.key.as_str()).chain(
            rates
                .iter()
                .flat_map(|r| [r.prev.as_str(), r.curr.as_str()]),
        );
        let r = self
            .fcall("FCALL", "tg_reserve", project, keys, &args)
            .await?;
        let (status, generation, n) = head(&r)?;
        let value = match status.as_str() {
            "ok" => {
                if n.len() != 2 + accounts.len() {
                    return Err(shape("tg_reserve ok", &r));
                }
                let remaining = n[2..]
                    .iter()
                    .map(|&x| if x < 0 { None } else { Some(Nanos(x as u64)) })
                    .collect();
                Reservation::Reserved(Reserved {
                    version: unsigned(n[0], &r)?,
                    expires_ms: unsigned(n[1], &r)?,
                    remaining,
                })
            }
            _ => not_admitted(&status, &n, &r, "tg_reserve")?,
        };
        Ok(Answer { generation, value })
    }

    /// Release the hold and commit the true cost on each of its accounts (same keys, same
    /// order as reserved). Idempotent by hold id.
    #[cfg(test)]
    pub async fn settle(
        &self,
        project: &ProjectKeys,
        hold_id: &str,
        accounts: &[AccountActual],
    ) -> Result<Answer<Settlement>, FleetError> {
        self.settle_with(project, hold_id, accounts, &[], None)
            .await
    }

    /// [`FleetStore::settle`] that also adds usage to rate windows (first settle only).
    pub async fn settle_with(
        &self,
        project: &ProjectKeys,
        hold_id: &str,
        accounts: &[AccountActual],
        adds: &[RateAdd],
        expected_generation: Option<&str>,
    ) -> Result<Answer<Settlement>, FleetError> {
        let mut args = vec![hold_id.to_string()];
        for a in accounts {
            args.push(checked(a.actual, "actual")?.to_string());
        }
        for r in adds {
            args.push(r.add.to_string());
            args.push(r.expire_s.to_string());
        }
        if let Some(g) = expected_generation {
            args.push(g.to_string());
        }
        let keys = accounts
            .iter()
            .map(|a| a.key.as_str())
            .chain(adds.iter().map(|r| r.key.as_str()));
        let r = self
            .fcall("FCALL", "tg_settle", project, keys, &args)
            .await?;
        let (status, generation, n) = head(&r)?;
        let overrun = || -> Result<Vec<Nanos>, FleetError> {
            if n.len() != accounts.len() {
                return Err(shape("tg_settle", &r));
            }
            n.iter().map(|&x| unsigned(x, &r).map(Nanos)).collect()
        };
        let value = match status.as_str() {
            "settled" => Settlement::Settled {
                overrun: overrun()?,
            },
            "corrected" => Settlement::Corrected {
                overrun: overrun()?,
            },
            "not_held" if n.is_empty() => Settlement::NotHeld,
            "charged" if n.len() == accounts.len() => Settlement::Charged,
            "stale" if n.is_empty() => Settlement::Stale,
            _ => return Err(shape("tg_settle", &r)),
        };
        Ok(Answer { generation, value })
    }

    /// Take a lease: a hold of as much as `want` on one budget account, shrunk to its share of
    /// what is left (`divisor`), refused below `min`. Idempotent by `lease_id`. On success the
    /// answer's `remaining[0]` is the amount granted. Settle it with [`FleetStore::settle_with`]
    /// like any hold.
    #[allow(clippy::too_many_arguments)]
    pub async fn lease(
        &self,
        project: &ProjectKeys,
        lease_id: &str,
        owner: &str,
        ttl_s: u32,
        key: &str,
        limit: Option<Nanos>,
        want: Nanos,
        min: Nanos,
        divisor: u32,
    ) -> Result<Answer<Reservation>, FleetError> {
        let args = [
            lease_id.to_string(),
            owner.to_string(),
            ttl_s.to_string(),
            match limit {
                Some(l) => checked(l, "limit")?.to_string(),
                None => "-1".to_string(),
            },
            checked(want, "want")?.to_string(),
            checked(min, "min")?.to_string(),
            divisor.clamp(1, 1000).to_string(),
        ];
        let r = self
            .fcall("FCALL", "tg_lease", project, std::iter::once(key), &args)
            .await?;
        let (status, generation, n) = head(&r)?;
        let value = match status.as_str() {
            "ok" if n.len() == 3 => Reservation::Reserved(Reserved {
                version: unsigned(n[0], &r)?,
                expires_ms: unsigned(n[1], &r)?,
                remaining: vec![Some(Nanos(unsigned(n[2], &r)?))],
            }),
            _ => not_admitted(&status, &n, &r, "tg_lease")?,
        };
        Ok(Answer { generation, value })
    }

    /// Make sure a generation is in force: if `tg:gen` is gone (a fresh Redis, or one that
    /// lost its data) a fresh one is set and admission stays closed for `grace_ms`, while the
    /// instances report their own ledgers ([`FleetStore::join`]). Returns the generation and
    /// how long admission stays closed (0: open).
    pub async fn begin(&self, grace_ms: u64) -> Result<(String, u64), FleetError> {
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw)
            .map_err(|e| FleetError::Protocol(format!("no randomness for the generation: {e}")))?;
        let fresh = crate::engine::auth::hex(&raw);
        let build = || {
            let mut c = redis::cmd("FCALL");
            c.arg("tg_begin")
                .arg(0)
                .arg(&fresh)
                .arg(grace_ms.clamp(1, 600_000));
            c
        };
        let mut conn = self.conn.clone();
        let v: Value = match build().query_async::<Value>(&mut conn).await {
            Ok(v) => v,
            Err(e) if is_missing_function(&e) => {
                // A Redis that lost its data lost the library too.
                self.load_library().await?;
                build().query_async(&mut conn).await.map_err(classify)?
            }
            Err(e) => return Err(classify(e)),
        };
        match head(&v)? {
            (s, Some(g), n) if s == "gen" && n.len() == 1 => Ok((g, unsigned(n[0], &v)?)),
            _ => Err(shape("tg_begin", &v)),
        }
    }

    /// Carry `amounts` (what this instance's own ledger holds for each budget key) into the
    /// fleet's counters, once per (generation, member, project); `in_flight` (hold id, TTL,
    /// an amount per key) holds the worst cases of the member's requests still in flight
    /// from a lost generation, until it settles that hold.
    pub async fn join(
        &self,
        project: &ProjectKeys,
        generation: &str,
        member: &str,
        amounts: &[AccountActual],
        in_flight: Option<(&str, u32, &[Nanos])>,
    ) -> Result<Joined, FleetError> {
        let mut args = vec![generation.to_string(), member.to_string()];
        for a in amounts {
            args.push(checked(a.actual, "amount")?.to_string());
        }
        if let Some((id, ttl, held)) = in_flight {
            if held.len() != amounts.len() {
                return Err(FleetError::BadArgument(
                    "one held amount per budget key".into(),
                ));
            }
            args.push(id.to_string());
            args.push(ttl.to_string());
            for h in held {
                args.push(checked(*h, "held")?.to_string());
            }
        }
        let keys = amounts.iter().map(|a| a.key.as_str());
        let r = self.fcall("FCALL", "tg_join", project, keys, &args).await?;
        match head(&r)? {
            (s, _, n) if s == "joined" && n.is_empty() => Ok(Joined::Added),
            (s, _, n) if s == "already" && n.is_empty() => Ok(Joined::Already),
            (s, g, n) if s == "stale" && n.is_empty() => Ok(Joined::Stale(g)),
            _ => Err(shape("tg_join", &r)),
        }
    }

    /// A plain command on the shared connection (heartbeats, the decision stream, reads for
    /// the admin API), with the store's timeouts and error classes.
    pub async fn command(&self, cmd: &redis::Cmd) -> Result<Value, FleetError> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(classify)
    }

    /// Several commands in one round trip.
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, FleetError> {
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(classify)
    }

    /// Burn up to `limit` expired holds of the project (and forget as many old tombstones).
    pub async fn reap(
        &self,
        project: &ProjectKeys,
        limit: u32,
    ) -> Result<Answer<Reaped>, FleetError> {
        let args = [limit.to_string()];
        let r = self
            .fcall("FCALL", "tg_reap", project, std::iter::empty(), &args)
            .await?;
        match head(&r)? {
            (s, generation, n) if s == "reaped" && n.len() == 2 => Ok(Answer {
                generation,
                value: Reaped {
                    burned: unsigned(n[0], &r)?,
                    forgotten: unsigned(n[1], &r)?,
                },
            }),
            _ => Err(shape("tg_reap", &r)),
        }
    }

    /// Freeze (or unfreeze) the project; returns the new cfg version.
    pub async fn freeze(
        &self,
        project: &ProjectKeys,
        frozen: bool,
    ) -> Result<Answer<u64>, FleetError> {
        let args = [if frozen { "1" } else { "0" }.to_string()];
        let r = self
            .fcall("FCALL", "tg_freeze", project, std::iter::empty(), &args)
            .await?;
        match head(&r)? {
            (s, generation, n) if s == "ok" && n.len() == 1 => Ok(Answer {
                generation,
                value: unsigned(n[0], &r)?,
            }),
            _ => Err(shape("tg_freeze", &r)),
        }
    }

    /// Committed and held of each budget key, the freeze flag and the open holds. Read-only
    /// (`FCALL_RO`), so a replica could serve it.
    pub async fn status(
        &self,
        project: &ProjectKeys,
        budget_keys: &[String],
    ) -> Result<Answer<Status>, FleetError> {
        let keys = budget_keys.iter().map(String::as_str);
        let r = self
            .fcall("FCALL_RO", "tg_status", project, keys, &[])
            .await?;
        let (s, generation, n) = head(&r)?;
        if s != "status" || n.len() != 3 + 3 * budget_keys.len() {
            return Err(shape("tg_status", &r));
        }
        let accounts = n[3..]
            .chunks_exact(3)
            .map(|c| Balance {
                committed: c[0],
                held: c[1],
                leased: c[2],
            })
            .collect();
        Ok(Answer {
            generation,
            value: Status {
                frozen: n[0] == 1,
                version: unsigned(n[1], &r)?,
                open_holds: unsigned(n[2], &r)?,
                accounts,
            },
        })
    }

    /// One library call. If the library is missing (a `FUNCTION FLUSH`, a fresh server after
    /// failover) the call did not run: load it and try once more.
    async fn fcall<'a>(
        &self,
        verb: &str,
        function: &str,
        project: &ProjectKeys,
        budget_keys: impl Iterator<Item = &'a str>,
        args: &[String],
    ) -> Result<Value, FleetError> {
        let keys: Vec<String> = project
            .meta()
            .into_iter()
            .chain(budget_keys.map(str::to_string))
            .collect();
        let build = || {
            let mut c = redis::cmd(verb);
            c.arg(function).arg(keys.len()).arg(&keys).arg(args);
            c
        };
        let mut conn = self.conn.clone();
        match build().query_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if is_missing_function(&e) => {
                self.load_library().await?;
                build().query_async(&mut conn).await.map_err(classify)
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// The answers of an admission (`tg_reserve`, `tg_lease`) that admit nothing.
fn not_admitted(status: &str, n: &[i64], r: &Value, what: &str) -> Result<Reservation, FleetError> {
    Ok(match status {
        "refused" if n.len() == 5 => Reservation::Refused(Refused {
            account: unsigned(n[1], r)? as usize,
            committed: n[2],
            held: n[3],
            limit: Nanos(unsigned(n[4], r)?),
        }),
        "frozen" if n.len() == 1 => Reservation::Frozen {
            version: unsigned(n[0], r)?,
        },
        "limited" if n.len() == 4 => Reservation::Limited {
            rate: unsigned(n[1], r)? as usize,
            count: unsigned(n[2], r)?,
            limit: unsigned(n[3], r)?,
        },
        "void" if n.is_empty() => Reservation::Void,
        "nogen" if n.is_empty() => Reservation::NoGeneration,
        "rebuilding" if n.is_empty() => Reservation::Rebuilding,
        _ => return Err(shape(what, r)),
    })
}

fn checked(n: Nanos, what: &str) -> Result<u64, FleetError> {
    if n.0 > MAX_NANOS {
        return Err(FleetError::BadArgument(format!(
            "{what} {} nanos is above the fleet maximum {MAX_NANOS}",
            n.0
        )));
    }
    Ok(n.0)
}

/// A Redis string reply as text (also used by [`node`]).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn shape(what: &str, v: &Value) -> FleetError {
    FleetError::Protocol(format!("{what}: unexpected reply {v:?}"))
}

fn unsigned(x: i64, v: &Value) -> Result<u64, FleetError> {
    u64::try_from(x).map_err(|_| shape("negative where a count was expected", v))
}

/// `{ status, generation, integers… }` → its parts; generation "" → `None`.
fn head(v: &Value) -> Result<(String, Option<String>, Vec<i64>), FleetError> {
    let Value::Array(items) = v else {
        return Err(shape("reply", v));
    };
    let (Some(s), Some(g)) = (items.first().and_then(text), items.get(1).and_then(text)) else {
        return Err(shape("reply", v));
    };
    let mut n = Vec::with_capacity(items.len().saturating_sub(2));
    for i in items.iter().skip(2) {
        match i {
            Value::Int(x) => n.push(*x),
            _ => return Err(shape("reply", v)),
        }
    }
    Ok((s, (!g.is_empty()).then_some(g), n))
}
