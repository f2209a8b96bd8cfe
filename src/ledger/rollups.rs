//! Hourly rollups of the decision log, kept by the store's writer in the same transaction as
//! the records they sum (so a report and the records can never disagree), and read by the
//! reports API (`GET /admin/spend`, the console's overview) instead of scanning the records.
//!
//! Four tables, one per grain and level of detail, all with the same columns:
//!
//! | table | one row per |
//! |---|---|
//! | `rollups` | hour × project, team, key name, user, model, provider, tags, decision, reason |
//! | `rollups_day` | the same per UTC day |
//! | `rollups_coarse` | hour × project, team, model, provider, decision, reason (key name, user and tags `''`) |
//! | `rollups_coarse_day` | the same per UTC day |
//!
//! each row with its counts, tokens and nano-dollars (`hour_ms` holds the start of the hour or
//! of the day). A report reads the least detailed table that has what it groups by: a month by
//! project and model by day reads `rollups_coarse_day` for the whole days and
//! `rollups_coarse` for the hours at either end, a few thousand rows however many millions of
//! records and users they sum. The four are written by the same UPSERT in the same transaction
//! as the records, so they always agree with them and with each other.
//!
//! Absent values (no team, no user, no tags) are stored as `''` (a primary key column cannot
//! be NULL) and read back as `None`. Tags are the record's JSON object, as sent: grouping by
//! one tag happens in [`crate::admin`], which parses them. A client that sends a different
//! tag value on every request makes one rollup row per request: still correct, only as slow
//! as the records themselves.

use foldhash::{HashMap, HashMapExt};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Transaction};

use super::store::{DecisionRecord, Reader};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// One rollup table: its name, its grain and whether it keeps key name, user and tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub grain_ms: i64,
    pub fine: bool,
}

pub const FINE_HOUR: Table = Table {
    name: "rollups",
    grain_ms: HOUR_MS,
    fine: true,
};
pub const FINE_DAY: Table = Table {
    name: "rollups_day",
    grain_ms: DAY_MS,
    fine: true,
};
pub const COARSE_HOUR: Table = Table {
    name: "rollups_coarse",
    grain_ms: HOUR_MS,
    fine: false,
};
pub const COARSE_DAY: Table = Table {
    name: "rollups_coarse_day",
    grain_ms: DAY_MS,
    fine: false,
};
pub const TABLES: [Table; 4] = [FINE_HOUR, FINE_DAY, COARSE_HOUR, COARSE_DAY];

/// Schema v7: the rollup tables.
pub fn create_v7() -> String {
    TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {}(
  hour_ms INTEGER NOT NULL,
  project TEXT NOT NULL, team TEXT NOT NULL, key_name TEXT NOT NULL, user TEXT NOT NULL,
  model TEXT NOT NULL, provider TEXT NOT NULL, tags TEXT NOT NULL,
  decision TEXT NOT NULL, reason TEXT NOT NULL,
  requests INTEGER NOT NULL, errors INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
  cost_nanos INTEGER NOT NULL, saved_nanos INTEGER NOT NULL,
  PRIMARY KEY(hour_ms, project, team, key_name, user, model, provider, tags, decision, reason)
) WITHOUT ROWID;
",
                t.name
            )
        })
        .collect()
}

/// The rollups of the records a file already holds, summed as the writer sums them: `rollups`
/// from the records, the other three from `rollups`. `SUM` is exact but fails on an i64
/// overflow (only absurd records can cause one); with `saturating`, sums stop at i64::MAX
/// instead, so such a file still opens.
pub fn fill_v7(saturating: bool) -> String {
    let sum = |c: &str| {
        if saturating {
            format!("CAST(min(total({c}), 9.2e18) AS INTEGER)")
        } else {
            format!("sum({c})")
        }
    };
    // A failed exact fill may have filled some tables before it failed.
    let mut sql: String = if saturating {
        TABLES
            .iter()
            .map(|t| format!("DELETE FROM {};\n", t.name))
            .collect()
    } else {
        String::new()
    };
    sql.push_str(&format!(
        "INSERT INTO rollups
SELECT time_ms - (time_ms % 3600000), coalesce(project, ''), coalesce(team, ''),
       coalesce(key_name, ''), coalesce(user, ''), coalesce(model, ''), coalesce(provider, ''),
       coalesce(tags, ''), decision, reason,
       count(*), sum(status >= 500), {}, {}, {}, {}
FROM decisions GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
",
        sum("coalesce(prompt_tokens, 0)"),
        sum("coalesce(completion_tokens, 0)"),
        sum("coalesce(cost_nanos, 0)"),
        sum("saved_nanos"),
    ));
    for t in &TABLES[1..] {
        let fine = |c: &'static str| if t.fine { c } else { "''" };
        sql.push_str(&format!(
            "INSERT INTO {name}
SELECT hour_ms - (hour_ms % {grain}), project, team, {key_name}, {user}, model, provider, {tags},
       decision, reason, {requests}, {errors}, {prompt}, {completion}, {cost}, {saved}
FROM rollups GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
",
            name = t.name,
            grain = t.grain_ms,
            key_name = fine("key_name"),
            user = fine("user"),
            tags = fine("tags"),
            requests = sum("requests"),
            errors = sum("errors"),
            prompt = sum("prompt_tokens"),
            completion = sum("completion_tokens"),
            cost = sum("cost_nanos"),
            saved = sum("saved_nanos"),
        ));
    }
    sql
}

type Key<'a> = (
    i64,
    [&'a str; 8], // project, team, key_name, user, model, provider, tags, decision
    &'a str,      // reason
);

/// What one rollup row (or a group of them) adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: u64,
    pub blocked: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanos: u64,
    pub saved_nanos: u64,
}

impl Sums {
    pub fn add(&mut self, o: &Sums) {
        self.requests = self.requests.saturating_add(o.requests);
        self.blocked = self.blocked.saturating_add(o.blocked);
        self.errors = self.errors.saturating_add(o.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(o.cost_nanos);
        self.saved_nanos = self.saved_nanos.saturating_add(o.saved_nanos);
    }

    fn of(d: &DecisionRecord) -> Sums {
        Sums {
            requests: 1,
            blocked: u64::from(d.decision == "block"),
            errors: u64::from(d.status >= 500),
            prompt_tokens: d.prompt_tokens.unwrap_or(0),
            completion_tokens: d.completion_tokens.unwrap_or(0),
            cost_nanos: d.cost_nanos.unwrap_or(0),
            saved_nanos: d.saved_nanos,
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The writer's UPSERT; every sum saturates at i64::MAX rather than failing the batch (as the
/// spend rows do).
fn upsert(table: &str) -> String {
    let sat = |c: &str| {
        format!(
            "CASE WHEN {c} > 9223372036854775807 - excluded.{c} THEN 9223372036854775807 \
             ELSE {c} + excluded.{c} END"
        )
    };
    format!(
        "INSERT INTO {table}(hour_ms, project, team, key_name, user, model, provider, tags,
           decision, reason, requests, errors, prompt_tokens, completion_tokens, cost_nanos,
           saved_nanos)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT(hour_ms, project, team, key_name, user, model, provider, tags, decision,
           reason) DO UPDATE SET
           requests = {requests}, errors = {errors}, prompt_tokens = {prompt_tokens},
           completion_tokens = {completion_tokens}, cost_nanos = {cost_nanos},
           saved_nanos = {saved_nanos}",
        requests = sat("requests"),
        errors = sat("errors"),
        prompt_tokens = sat("prompt_tokens"),
        completion_tokens = sat("completion_tokens"),
        cost_nanos = sat("cost_nanos"),
        saved_nanos = sat("saved_nanos"),
    )
}

static UPSERTS: once_cell::sync::Lazy<[String; 4]> =
    once_cell::sync::Lazy::new(|| TABLES.map(|t| upsert(t.name)));

/// Adds a batch's records to the rollups, inside the batch's transaction: summed in memory
/// first, so a busy hour costs one UPSERT per distinct row per flush.
fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

pub fn write(tx: &Transaction<'_>, decisions: &[DecisionRecord]) -> rusqlite::Result<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let mut sums: HashMap<Key<'_>, Sums> = HashMap::with_capacity(16);
    for d in decisions {
        let key = (
            d.time_ms.div_euclid(HOUR_MS).saturating_mul(HOUR_MS),
            [
                s(&d.project),
                s(&d.team),
                s(&d.key_name),
                s(&d.user),
                s(&d.model),
                s(&d.provider),
                s(&d.tags),
                d.decision.as_str(),
            ],
            d.reason.as_str(),
        );
        sums.entry(key).or_default().add(&Sums::of(d));
    }
    for (i, t) in TABLES.iter().enumerate() {
        let mut up = tx.prepare_cached(&UPSERTS[i])?;
        let mut coarser: HashMap<Key<'_>, Sums>;
        let rows = if *t == FINE_HOUR {
            &sums
        } else {
            coarser = HashMap::with_capacity(sums.len());
            for ((hour, dims, reason), v) in &sums {
                let mut dims = *dims;
                if !t.fine {
                    dims[2] = "";
                    dims[3] = "";
                    dims[6] = "";
                }
                let start = hour.div_euclid(t.grain_ms).saturating_mul(t.grain_ms);
                coarser.entry((start, dims, *reason)).or_default().add(v);
            }
            &coarser
        };
        for ((start, dims, reason), v) in rows {
            up.execute(rusqlite::params![
                start,
                dims[0],
                dims[1],
                dims[2],
                dims[3],
                dims[4],
                dims[5],
                dims[6],
                dims[7],
                reason,
                clamp(v.requests),
                clamp(v.errors),
                clamp(v.prompt_tokens),
                clamp(v.completion_tokens),
                clamp(v.cost_nanos),
                clamp(v.saved_nanos),
            ])?;
        }
    }
    Ok(())
}

/// A column a report can group the rollups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    Project,
    Team,
    Key,
    User,
    Model,
    Provider,
    Tags,
    Decision,
    Reason,
}

impl Dim {
    /// Kept only by the detailed tables.
    fn fine(self) -> bool {
        matches!(self, Dim::Key | Dim::User | Dim::Tags)
    }

    fn column(self) -> &'static str {
        match self {
            Dim::Project => "project",
            Dim::Team => "team",
            Dim::Key => "key_name",
            Dim::User => "user",
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::Tags => "tags",
            Dim::Decision => "decision",
            Dim::Reason => "reason",
        }
    }
}

/// One grouped row: the values of the asked dimensions (in their order; `None` when absent),
/// the bucket's start (unix ms) when a bucket was asked, and the sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub dims: Vec<Option<String>>,
    pub bucket_ms: Option<i64>,
    pub sums: Sums,
}

/// What to sum: rows of hours in `[from_ms, to_ms)`, grouped by `dims` and, with a bucket,
/// by `bucket_ms`-sized slices of UTC time (an hour or a day; months are folded from days by
/// the caller), optionally only one project's.
pub struct Query<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    pub dims: &'a [Dim],
    pub bucket_ms: Option<i64>,
    pub project: Option<&'a str>,
}

impl Reader {
    /// Sums of the rollups as `q` asks, ordered by bucket, then by the dimensions: from the
    /// least detailed tables that have `q`'s dimensions; whole days from the daily one when
    /// the bucket is a day or longer (or none), the hours at either end from the hourly one.
    pub fn rollups(&self, q: &Query<'_>) -> Result<Vec<Row>, String> {
        let fine = q.dims.iter().any(|d| d.fine());
        let (hourly, daily) = if fine {
            (FINE_HOUR, FINE_DAY)
        } else {
            (COARSE_HOUR, COARSE_DAY)
        };
        let by_days = q.bucket_ms.is_none_or(|b| b >= DAY_MS && b % DAY_MS == 0);
        let first_day = q
            .from_ms
            .div_euclid(DAY_MS)
            .saturating_add(1)
            .saturating_mul(DAY_MS);
        let first_day = if q.from_ms.rem_euclid(DAY_MS) == 0 {
            q.from_ms
        } else {
            first_day
        };
        let last_day = q.to_ms.div_euclid(DAY_MS).saturating_mul(DAY_MS);
        if !by_days || first_day >= last_day {
            return self.rollups_of(hourly, q.from_ms, q.to_ms, q);
        }
        let parts = [
            (hourly, q.from_ms, first_day),
            (daily, first_day, last_day),
            (hourly, last_day, q.to_ms),
        ];
        let mut merged: std::collections::BTreeMap<(Option<i64>, Vec<Option<String>>), Sums> =
            std::collections::BTreeMap::new();
        for (table, from, to) in parts {
            if from >= to {
                continue;
            }
            for row in self.rollups_of(table, from, to, q)? {
                merged
                    .entry((row.bucket_ms, row.dims))
                    .or_default()
                    .add(&row.sums);
            }
        }
        Ok(merged
            .into_iter()
            .map(|((bucket_ms, dims), sums)| Row {
                dims,
                bucket_ms,
                sums,
            })
            .collect())
    }

    /// [`Reader::rollups`] from one table, over `[from_ms, to_ms)` (aligned to its grain).
    fn rollups_of(
        &self,
        table: Table,
        from_ms: i64,
        to_ms: i64,
        q: &Query<'_>,
    ) -> Result<Vec<Row>, String> {
        let err = |e: rusqlite::Error| format!("ledger store: read rollups: {e}");
        let cols: Vec<&str> = q.dims.iter().map(|d| d.column()).collect();
        let mut select = cols.join(", ");
        let bucket = match q.bucket_ms {
            Some(b) if b > 0 => format!("hour_ms - (hour_ms % {b})"),
            _ => "0".to_string(),
        };
        if !select.is_empty() {
            select.push_str(", ");
        }
        let group = {
            let mut g = cols.clone();
            g.push("b");
            g.join(", ")
        };
        let mut sql = format!(
            "SELECT {select}{bucket} AS b, sum(requests),
               sum(CASE WHEN decision = 'block' THEN requests ELSE 0 END), sum(errors),
               sum(prompt_tokens), sum(completion_tokens), sum(cost_nanos), sum(saved_nanos)
             FROM {table} WHERE hour_ms >= ? AND hour_ms < ?",
            table = table.name
        );
        let mut args = vec![Value::Integer(from_ms), Value::Integer(to_ms)];
        if let Some(p) = q.project {
            sql.push_str(" AND project = ?");
            args.push(Value::Text(p.to_string()));
        }
        let mut order = vec!["b"];
        order.extend(&cols);
        sql.push_str(&format!(" GROUP BY {group} ORDER BY {}", order.join(", ")));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
        let n = cols.len();
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                let mut dims = Vec::with_capacity(n);
                for i in 0..n {
                    let v: String = r.get(i)?;
                    dims.push((!v.is_empty()).then_some(v));
                }
                let u = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                };
                Ok(Row {
                    dims,
                    bucket_ms: q.bucket_ms.map(|_| r.get::<_, i64>(n)).transpose()?,
                    sums: Sums {
                        requests: u(n + 1)?,
                        blocked: u(n + 2)?,
                        errors: u(n + 3)?,
                        prompt_tokens: u(n + 4)?,
                        completion_tokens: u(n + 5)?,
                        cost_nanos: u(n + 6)?,
                        saved_nanos: u(n + 7)?,
                    },
                })
            })
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }

    /// The distinct tag objects (JSON, as sent) of the days that overlap `[from_ms, to_ms)`, at
    /// most `limit` of them: the console lists the tag names found in them.
    pub fn rollup_tags(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        let err = |e: rusqlite::Error| format!("ledger store: read rollup tags: {e}");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT tags FROM rollups_day
                 WHERE hour_ms >= ?1 AND hour_ms < ?2 AND tags <> '' LIMIT ?3",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(
                rusqlite::params![
                    from_ms.div_euclid(DAY_MS).saturating_mul(DAY_MS),
                    to_ms,
                    clamp(limit as u64)
                ],
                |r| r.get::<_, String>(0),
            )
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }
}
