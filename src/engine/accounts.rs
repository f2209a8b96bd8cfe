//! Accounts: everyone a request is charged to (SPEC "Budgets everywhere the money is"), the
//! names the ledger keeps them under, the 402 each one answers, and the end-user and tag
//! facts a request brings.
//!
//! A request is charged to its project (each window), its project's team (each window), its
//! key and its end user. Admission reserves the worst case on all of them at once, all or
//! nothing; settlement charges the truth to all of them.
//!
//! Engine module: no pingora, no tokio, no I/O, no clock.

use std::sync::Arc;

use crate::engine::budget::{Budget, Period, Refusal};
use crate::engine::config::{Config, ProjectIdx};
use crate::engine::error::GatewayError;

/// Which kind of account (the 402's `code` tells them apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountKind {
    Project,
    Team,
    Key,
    User,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Project => "project",
            AccountKind::Team => "team",
            AccountKind::Key => "key",
            AccountKind::User => "user",
        }
    }

    /// The 402's `code` when this kind of account refused.
    pub fn code(self) -> &'static str {
        match self {
            AccountKind::Project => "budget_exceeded",
            AccountKind::Team => "team_budget_exceeded",
            AccountKind::Key => "key_budget_exceeded",
            AccountKind::User => "user_budget_exceeded",
        }
    }
}

/// One account of a request, in one window (or in none: spend is only recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRef {
    pub kind: AccountKind,
    /// The owner's id: the project id, team id, key name or end user.
    pub id: Arc<str>,
    /// The name the ledger keeps the account's spend under ([`ledger_name`]).
    pub name: Arc<str>,
    /// The limit and its period; `None`: no limit.
    pub window: Option<Budget>,
}

impl AccountRef {
    /// The period the account is kept in: its window's, else a calendar month.
    pub fn period(&self) -> Period {
        self.window.map_or(Period::Month, |w| w.period)
    }
}

/// The name an account's spend is kept under, in the ledger's `spend` table and its memory:
/// a project's own is its id (as before teams existed), the others are prefixed so no two
/// kinds collide (project ids never hold `:`): `team:payments`, `key:checkout-bot/ci`,
/// `user:checkout-bot/alice` (a key or user is named within its project).
pub fn ledger_name(kind: AccountKind, project: &str, id: &str) -> String {
    match kind {
        AccountKind::Project => id.to_string(),
        AccountKind::Team => format!("team:{id}"),
        AccountKind::Key => format!("key:{project}/{id}"),
        AccountKind::User => format!("user:{project}/{id}"),
    }
}

/// Every account a request of `project`, presented with key `key` (its index in the
/// project's keys), for end user `user`, is charged to, in a fixed order: the project's
/// windows, the team's windows, the key, the user. A project without a window still has its
/// own account (spend is recorded per month); a team, key or user without a budget has one
/// with no window (its spend is recorded for reports, nothing is checked).
///
/// All but the user's come from [`Charged`], built once per config: a request clones
/// reference counts, it does not build names.
pub fn accounts(
    cfg: &Config,
    project: ProjectIdx,
    key: Option<usize>,
    user: Option<&str>,
) -> Vec<AccountRef> {
    let p = &cfg.projects[project];
    let Some(charged) = cfg.charged(project) else {
        return Charged::of(cfg, project).all(key, user, &p.id, p.user_budget);
    };
    charged.all(key, user, &p.id, p.user_budget)
}

/// The accounts of one project that do not depend on the request's end user: the project's
/// and its team's windows, and each key's account, in [`accounts`]' order.
#[derive(Clone, Debug, Default)]
pub struct Charged {
    own: Vec<AccountRef>,
    /// One per key, in the project's `keys` order.
    keys: Vec<AccountRef>,
}

impl Charged {
    /// Built from the config (at load, for every project).
    pub fn of(cfg: &Config, project: ProjectIdx) -> Charged {
        let p = &cfg.projects[project];
        let mut own = windows(AccountKind::Project, &p.id, &p.id, &p.budgets);
        if let Some(t) = p.team.and_then(|t| cfg.teams.get(t)) {
            own.extend(windows(AccountKind::Team, &p.id, &t.id, &t.budgets));
        }
        let keys = p
            .keys
            .iter()
            .map(|k| AccountRef {
                kind: AccountKind::Key,
                id: Arc::from(k.name.as_str()),
                name: Arc::from(ledger_name(AccountKind::Key, &p.id, &k.name)),
                window: k.budget,
            })
            .collect();
        Charged { own, keys }
    }

    fn all(
        &self,
        key: Option<usize>,
        user: Option<&str>,
        project: &str,
        user_budget: Option<Budget>,
    ) -> Vec<AccountRef> {
        let mut out = Vec::with_capacity(self.own.len() + 2);
        out.extend(self.own.iter().cloned());
        if let Some(k) = key.and_then(|k| self.keys.get(k)) {
            out.push(k.clone());
        }
        if let Some(u) = user {
            out.push(AccountRef {
                kind: AccountKind::User,
                id: Arc::from(u),
                name: Arc::from(ledger_name(AccountKind::User, project, u)),
                window: user_budget,
            });
        }
        out
    }
}

/// One account (of project `project`) in each of `budgets`, or in none (no limit: its spend
/// is recorded per month) when there are none.
pub fn windows(kind: AccountKind, project: &str, id: &str, budgets: &[Budget]) -> Vec<AccountRef> {
    let id: Arc<str> = Arc::from(id);
    let name: Arc<str> = Arc::from(ledger_name(kind, project, &id));
    let one = |window: Option<Budget>| AccountRef {
        kind,
        id: id.clone(),
        name: name.clone(),
        window,
    };
    if budgets.is_empty() {
        vec![one(None)]
    } else {
        budgets.iter().map(|w| one(Some(*w))).collect()
    }
}

/// Who an account is, in a 402's message: `Project checkout-bot`, `Team payments`,
/// `Key ci of project checkout-bot`, `User alice of project checkout-bot`.
pub fn who(kind: AccountKind, id: &str, project: &str) -> String {
    match kind {
        AccountKind::Project => format!("Project {id}"),
        AccountKind::Team => format!("Team {id}"),
        AccountKind::Key => format!("Key {id} of project {project}"),
        AccountKind::User => format!("User {id} of project {project}"),
    }
}

/// The 402 for `account` refusing: its kind's code, and a message naming the account, its
/// period, its limit and what it has spent.
pub fn refused(account: &AccountRef, project: &str, period: Period, r: &Refusal) -> GatewayError {
    let who = who(account.kind, &account.id, project);
    GatewayError::BudgetExceeded(
        account.kind,
        crate::engine::budget::refusal_message(&who, period, r),
    )
}

/// At most this many bytes of an end user's id (a longer one is a 400, not a silent cut:
/// two users must never share an account because their ids share a prefix).
pub const MAX_USER_BYTES: usize = 256;

/// The end user named by the `x-tollgate-user` header (`header`), else the body's `user`
/// (OpenAI) or `metadata.user_id` (Anthropic), as [`crate::engine::request::parse`] found
/// them. Blank is none; control characters or more than [`MAX_USER_BYTES`] are a 400 that
/// says where the id came from.
pub fn end_user<'a>(
    header: Option<&'a [u8]>,
    body_user: Option<&'a str>,
) -> Result<Option<&'a str>, GatewayError> {
    let (from, raw) = match header {
        Some(h) => (
            "The x-tollgate-user header",
            std::str::from_utf8(h).map_err(|_| {
                GatewayError::InvalidRequest("The x-tollgate-user header must be UTF-8".into())
            })?,
        ),
        None => match body_user {
            Some(u) => ("The request's end user (`user` or `metadata.user_id`)", u),
            None => return Ok(None),
        },
    };
    let u = raw.trim();
    if u.is_empty() {
        return Ok(None);
    }
    if u.len() > MAX_USER_BYTES {
        return Err(GatewayError::InvalidRequest(format!(
            "{from} is {} bytes long; at most {MAX_USER_BYTES} are accepted",
            u.len()
        )));
    }
    if u.chars().any(char::is_control) {
        return Err(GatewayError::InvalidRequest(format!(
            "{from} must not contain control characters"
        )));
    }
    Ok(Some(u))
}

/// At most this many tags on a request.
pub const MAX_TAGS: usize = 10;
/// At most this many characters in a tag's key or value.
pub const MAX_TAG_CHARS: usize = 64;

/// `x-tollgate-tags: team=search,feature=summarize` → the pairs, in the order sent. Spaces
/// around entries are ignored; an empty header is no tags. Anything else (a missing `=`, an
/// empty or too long key or value, a character outside `[A-Za-z0-9_.:-]`, a key given twice,
/// more than [`MAX_TAGS`]) is a 400 that names the bad tag.
pub fn parse_tags(header: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    let bad = |m: String| GatewayError::InvalidRequest(format!("x-tollgate-tags: {m}"));
    let text = std::str::from_utf8(header).map_err(|_| bad("the header must be UTF-8".into()))?;
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() && text.trim().is_empty() {
            continue;
        }
        let shown = crate::engine::admission::truncate(entry, 80);
        let Some((k, v)) = entry.split_once('=') else {
            return Err(bad(format!(
                "tag {shown:?} is not key=value (tags look like team=search,feature=summarize)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        for (what, s) in [("key", k), ("value", v)] {
            let n = s.chars().count();
            if n == 0 || n > MAX_TAG_CHARS {
                return Err(bad(format!(
                    "tag {shown:?}: its {what} must be 1 to {MAX_TAG_CHARS} characters, it has {n}"
                )));
            }
            if let Some(c) = s
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
            {
                return Err(bad(format!(
                    "tag {shown:?}: {c:?} is not allowed in its {what} (use letters, digits, '_', '.', ':' and '-')"
                )));
            }
        }
        if out.iter().any(|(have, _)| have == k) {
            return Err(bad(format!("tag {k:?} is given twice")));
        }
        if out.len() == MAX_TAGS {
            return Err(bad(format!("at most {MAX_TAGS} tags are accepted")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Tags as the JSON object records keep (`{}` for none).
pub fn tags_json(tags: &[(String, String)]) -> String {
    let mut o = String::from("{");
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        crate::engine::error::push_json_string(&mut o, k);
        o.push(':');
        crate::engine::error::push_json_string(&mut o, v);
    }
    o.push('}');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_in_order_and_bad_ones_are_named() {
        let t = parse_tags(b" team=search , feature=summarize:v2").unwrap();
        assert_eq!(
            t,
            vec![
                ("team".to_string(), "search".to_string()),
                ("feature".to_string(), "summarize:v2".to_string())
            ]
        );
        assert_eq!(
            tags_json(&t),
            r#"{"team":"search","feature":"summarize:v2"}"#
        );
        assert!(parse_tags(b"").unwrap().is_empty());
        assert!(parse_tags(b"  ").unwrap().is_empty());
        for (h, names) in [
            (&b"team"[..], "\"team\""),
            (b"a=1,,b=2", "\"\""),
            (b"a b=1", "' '"),
            (b"a=1,a=2", "\"a\" is given twice"),
            (b"x=", "its value must be 1 to 64"),
            (b"=x", "its key must be 1 to 64"),
            (b"ok=1,bad=v/1", "\"bad=v/1\""),
        ] {
            let e = parse_tags(h).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(
                e.message().contains(names),
                "{:?}: {}",
                String::from_utf8_lossy(h),
                e.message()
            );
        }
        let long = format!("k={}", "v".repeat(65));
        assert!(parse_tags(long.as_bytes()).is_err());
        let ok = format!("k={}", "v".repeat(64));
        assert!(parse_tags(ok.as_bytes()).is_ok());
        let ten: Vec<String> = (0..10).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tags(ten.join(",").as_bytes()).unwrap().len(), 10);
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tags(eleven.join(",").as_bytes())
            .unwrap_err()
            .message()
            .contains("at most 10"));
    }

    #[test]
    fn the_header_names_the_user_before_the_body() {
        assert_eq!(
            end_user(Some(b" alice "), Some("bob")).unwrap(),
            Some("alice")
        );
        assert_eq!(end_user(None, Some("bob")).unwrap(), Some("bob"));
        assert_eq!(end_user(Some(b""), Some("bob")).unwrap(), None);
        assert_eq!(end_user(None, None).unwrap(), None);
        let long = "u".repeat(MAX_USER_BYTES + 1);
        assert_eq!(end_user(None, Some(&long)).unwrap_err().status(), 400);
        assert!(end_user(Some(b"a\x01b"), None)
            .unwrap_err()
            .message()
            .contains("x-tollgate-user"));
    }

    #[test]
    fn a_request_is_charged_to_its_project_team_key_and_user_in_that_order() {
        let text = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9"
api_key_env = "K"
[[routes]]
prefix = "gpt-"
provider = "openai"
[[teams]]
id = "pay"
budgets = [{ limit_usd = 5, period = "month" }, { limit_usd = 1, period = "day" }]
[[projects]]
id = "bot"
team = "pay"
budget = { limit_usd = 2, period = "month" }
user_budget = { limit_usd = 0.5, period = "day" }
keys = [{ key = "tg_accounts_test_key_00001", name = "ci", budget = { limit_usd = 0.25, period = "week" } },
        { key = "tg_accounts_test_key_00002", name = "prod" }]
[[projects]]
id = "free"
keys = ["tg_accounts_test_key_00003"]
"#;
        let cfg = crate::engine::config::parse(text, "t.toml", &|_| Some("x".into())).unwrap();
        type Row = (AccountKind, String, String, Option<(u64, Period)>);
        let list = |p, k, u| -> Vec<Row> {
            accounts(&cfg, p, k, u)
                .into_iter()
                .map(|a| {
                    let w = a.window.map(|w| (w.limit.0, w.period));
                    (a.kind, a.id.to_string(), a.name.to_string(), w)
                })
                .collect()
        };
        let usd = |d: f64| (d * 1e9) as u64;
        use AccountKind::*;
        let own = vec![
            (
                Project,
                "bot".into(),
                "bot".into(),
                Some((usd(2.0), Period::Month)),
            ),
            (
                Team,
                "pay".into(),
                "team:pay".into(),
                Some((usd(5.0), Period::Month)),
            ),
            (
                Team,
                "pay".into(),
                "team:pay".into(),
                Some((usd(1.0), Period::Day)),
            ),
        ];
        let mut want = own.clone();
        want.push((
            Key,
            "ci".into(),
            "key:bot/ci".into(),
            Some((usd(0.25), Period::Week)),
        ));
        want.push((
            User,
            "al/ice".into(),
            "user:bot/al/ice".into(),
            Some((usd(0.5), Period::Day)),
        ));
        assert_eq!(list(0, Some(0), Some("al/ice")), want);
        let mut want = own.clone();
        want.push((Key, "prod".into(), "key:bot/prod".into(), None));
        assert_eq!(list(0, Some(1), None), want);
        assert_eq!(list(0, None, None), own);
        assert_eq!(
            list(0, Some(7), None),
            own,
            "a key index the project lacks adds nothing"
        );
        let free = list(1, Some(0), None);
        assert_eq!(free[0], (Project, "free".into(), "free".into(), None));
        assert_eq!(free[1].0, Key);
        assert_eq!(free.len(), 2);
        // Built once with the config: what a request gets is what the config's tables say.
        for p in 0..2 {
            let fresh = Charged::of(&cfg, p).all(
                Some(0),
                Some("u"),
                &cfg.projects[p].id,
                cfg.projects[p].user_budget,
            );
            assert_eq!(accounts(&cfg, p, Some(0), Some("u")), fresh);
        }
    }

    #[test]
    fn ledger_names_never_collide_across_kinds() {
        assert_eq!(ledger_name(AccountKind::Project, "bot", "bot"), "bot");
        assert_eq!(ledger_name(AccountKind::Team, "bot", "pay"), "team:pay");
        assert_eq!(ledger_name(AccountKind::Key, "bot", "ci"), "key:bot/ci");
        assert_eq!(ledger_name(AccountKind::User, "bot", "a/b"), "user:bot/a/b");
    }
}
