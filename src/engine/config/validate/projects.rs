//! `[[projects]]`: ids, their team, keys (a string, plaintext or `sha256:`, or a table that
//! also names the key and gives it a budget and an expiry; every key unique across all
//! projects, every key name unique in its project), budget windows, end users' budget, rate
//! limit, model globs, output cap, prompt patterns, what to do with unpriced models. Also the
//! budget windows of any account (`windows`), which teams share.

use std::collections::HashMap;

use regex::Regex;
use toml::Spanned;

use super::{Names, Validator};
use crate::engine::auth::{hex, key_digest, KeyDigest};
use crate::engine::budget::{Budget, Period};
use crate::engine::config::file::{FileBudget, FileKey, FileProject, FileRateLimit};
use crate::engine::config::{Project, ProjectIdx, ProjectKey, RateLimit, Unpriced};
use crate::engine::policy::Glob;
use crate::engine::pricing::Nanos;
use crate::engine::time::parse_rfc3339;

const MAX_TOKENS: i64 = 100_000_000;
const MAX_KEY_NAME: usize = 64;

/// A project or team id appears in metric labels, logs and URLs: keep it to a safe alphabet.
pub(super) fn id_rule(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok)
        .then(|| format!("{id:?} must be non-empty and use only letters, digits, '-', '_' and '.'"))
}

/// A key's name goes on records and reports: the ids' alphabet, and short.
fn key_name_rule(name: &str) -> Option<String> {
    let ok = (1..=MAX_KEY_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok).then(|| {
        format!(
            "{name:?} must be 1 to {MAX_KEY_NAME} characters, each a letter, digit, '-', '_' or '.'"
        )
    })
}

impl Validator<'_> {
    /// The projects (each one, so indexes match the file) and every key's digest → project
    /// and the key's place in the project's `keys`. `teams` are the ids of `[[teams]]`, in
    /// file order (so their positions are `Config::teams` indexes).
    pub(super) fn projects(
        &mut self,
        list: &[Spanned<FileProject>],
        teams: &[&str],
    ) -> (
        Vec<Project>,
        foldhash::HashMap<KeyDigest, (ProjectIdx, usize)>,
    ) {
        let mut out = Vec::new();
        // Each digest with the field that first listed it, for the duplicate message.
        let mut keys: HashMap<KeyDigest, ((ProjectIdx, usize), String)> = HashMap::new();
        let mut ids = Names::new("projects", "id", "project id", id_rule);
        for (i, p) in list.iter().enumerate() {
            let p = p.get_ref();
            let at = format!("projects[{i}]");
            self.name(&mut ids, i, &p.id);
            let team = p.team.as_ref().and_then(|t| self.team_ref(teams, t, &at));
            let idx = out.len();
            let mut project_keys = Vec::new();
            // Each key name of this project with the entry that first had it.
            let mut names: HashMap<String, String> = HashMap::new();
            for (j, k) in p.keys.iter().enumerate() {
                let field = format!("{at}.keys[{j}]");
                if let Some((digest, key)) = self.key(&field, k, &keys, &mut names) {
                    keys.insert(digest, ((idx, project_keys.len()), field));
                    project_keys.push(key);
                }
            }
            let budgets = self.windows(&at, p.budget.as_ref(), &p.budgets);
            let user_budget = p
                .user_budget
                .as_ref()
                .and_then(|b| self.budget(&format!("{at}.user_budget"), b));
            let rate_limit = p.rate_limit.as_ref().and_then(|r| self.rate_limit(&at, r));
            let allow_models = p
                .allow_models
                .as_deref()
                .map(|l| self.globs(&at, l, "allow_models"));
            let deny_models = self.globs(&at, &p.deny_models, "deny_models");
            let max_tokens = p
                .max_tokens
                .as_ref()
                .and_then(|v| self.positive(v, &format!("{at}.max_tokens"), MAX_TOKENS));
            let block_patterns = self.patterns(&at, &p.block_patterns);
            let unpriced = match &p.unpriced {
                None => Unpriced::default(),
                Some(u) => match u.get_ref().as_str() {
                    "block" => Unpriced::Block,
                    "allow" => Unpriced::Allow,
                    other => {
                        self.err(
                            Some(u.span()),
                            format!("{at}.unpriced"),
                            format!("unknown value {other:?} (expected \"block\" or \"allow\")"),
                        );
                        Unpriced::default()
                    }
                },
            };
            out.push(Project {
                id: p.id.get_ref().clone(),
                budgets,
                team,
                keys: project_keys,
                user_budget,
                rate_limit,
                allow_models,
                deny_models,
                max_tokens,
                block_secrets: p.block_secrets,
                block_patterns,
                unpriced,
                cache_ttl: p.cache.as_ref().and_then(|c| {
                    self.positive(
                        &c.get_ref().ttl_s,
                        &format!("{at}.cache.ttl_s"),
                        crate::engine::config::CacheConfig::MAX_TTL_S,
                    )
                    .map(std::time::Duration::from_secs)
                }),
                report_cost: p.report_cost,
            });
        }
        (
            out,
            keys.into_iter().map(|(k, (idx, _))| (k, idx)).collect(),
        )
    }

    /// A project's `team`: the index of the first `[[teams]]` entry with that id.
    fn team_ref(&mut self, teams: &[&str], t: &Spanned<String>, at: &str) -> Option<usize> {
        let idx = teams.iter().position(|id| *id == t.get_ref().as_str());
        if idx.is_none() {
            let known = if teams.is_empty() {
                "none defined".to_string()
            } else {
                teams.join(", ")
            };
            self.err(
                Some(t.span()),
                format!("{at}.team"),
                format!("unknown team {:?} (known: {known})", t.get_ref()),
            );
        }
        idx
    }

    /// One `keys` entry, each of its problems reported in the order of the file: its key (bad,
    /// or already `listed`, by any project), its name (bad, or already one of this project's
    /// `names`, which it joins), its budget, its expiry. `None` when anything is wrong.
    fn key(
        &mut self,
        field: &str,
        k: &Spanned<FileKey>,
        listed: &HashMap<KeyDigest, ((ProjectIdx, usize), String)>,
        names: &mut HashMap<String, String>,
    ) -> Option<(KeyDigest, ProjectKey)> {
        // The table, if the entry is one, and the key with its place and field.
        let (table, key) = match k.get_ref() {
            FileKey::Plain(s) => (None, Some((s, k.span(), field.to_string()))),
            FileKey::Table(t) => match &t.key {
                Some(s) => (
                    Some(t),
                    Some((s.get_ref(), s.span(), format!("{field}.key"))),
                ),
                None => {
                    self.err(
                        Some(k.span()),
                        field,
                        "a key table needs `key` (the key itself, or its sha256: form)",
                    );
                    (Some(t), None)
                }
            },
        };
        let mut ok = key.is_some();
        let mut digest = None;
        if let Some((s, span, key_field)) = &key {
            match parse_key_entry(s) {
                Ok(d) => match listed.get(&d) {
                    Some((_, first)) => {
                        let m = format!("duplicate key: the same key is already listed at {first}");
                        self.err(Some(span.clone()), key_field.as_str(), m);
                    }
                    None => digest = Some(d),
                },
                Err(m) => self.err(Some(span.clone()), key_field.as_str(), m),
            }
            ok &= digest.is_some();
        }
        // The name it goes by: as configured, else the first 8 hex digits of its digest.
        let given = table.and_then(|t| t.name.as_ref());
        let name = match given {
            Some(n) => match key_name_rule(n.get_ref()) {
                None => Some((n.get_ref().clone(), n.span(), format!("{field}.name"))),
                Some(m) => {
                    self.err(Some(n.span()), format!("{field}.name"), m);
                    ok = false;
                    None
                }
            },
            None => digest
                .zip(key.as_ref())
                .map(|(d, (_, span, _))| (hex(&d[..4]), span.clone(), field.to_string())),
        };
        if let Some((name, span, name_field)) = &name {
            if let Some(first) = names.get(name) {
                let m = if given.is_some() {
                    format!("duplicate key name {name:?} (first at {first})")
                } else {
                    format!(
                        "duplicate key name {name:?}, this key's default name (first at \
                         {first}): give it a `name`"
                    )
                };
                self.err(Some(span.clone()), name_field.as_str(), m);
                ok = false;
            } else {
                names.insert(name.clone(), field.to_string());
            }
        }
        let (mut budget, mut expires) = (None, None);
        if let Some(t) = table {
            if let Some(b) = &t.budget {
                budget = self.budget(&format!("{field}.budget"), b);
                ok &= budget.is_some();
            }
            if let Some(e) = &t.expires {
                expires = self.expires(&format!("{field}.expires"), e);
                ok &= expires.is_some();
            }
        }
        match (ok, digest, name) {
            (true, Some(digest), Some((name, _, _))) => Some((
                digest,
                ProjectKey {
                    name,
                    budget,
                    expires,
                },
            )),
            _ => None,
        }
    }

    /// A key's `expires`: an RFC 3339 time with its offset, quoted or written as a TOML
    /// date-time, → Unix seconds.
    fn expires(&mut self, field: &str, v: &Spanned<toml::Value>) -> Option<i64> {
        const EXAMPLE: &str = "e.g. \"2027-03-31T00:00:00Z\" or \"2027-03-31T00:00:00+02:00\"";
        let message = match v.get_ref() {
            toml::Value::String(s) => match parse_rfc3339(s) {
                Some(t) => return Some(t),
                None => format!("{s:?} is not an RFC 3339 time ({EXAMPLE})"),
            },
            toml::Value::Datetime(d) => match parse_rfc3339(&d.to_string()) {
                Some(t) => return Some(t),
                None => format!(
                    "{d} is not an RFC 3339 time: it needs a date, a time and an offset, Z or \
                     ±HH:MM ({EXAMPLE})"
                ),
            },
            other => {
                let what = other.type_str();
                let article = if what.starts_with(['a', 'i']) {
                    "an"
                } else {
                    "a"
                };
                format!("{article} {what} is not an RFC 3339 time ({EXAMPLE})")
            }
        };
        self.err(Some(v.span()), field, message);
        None
    }

    /// The windows of one account (`at` is a project or a team): `budget` first, then
    /// `budgets` in order. A period may have one limit: a second window of a period is an
    /// error, and left out.
    pub(super) fn windows(
        &mut self,
        at: &str,
        one: Option<&Spanned<FileBudget>>,
        many: &[Spanned<FileBudget>],
    ) -> Vec<Budget> {
        let all = one.map(|b| (format!("{at}.budget"), b)).into_iter().chain(
            many.iter()
                .enumerate()
                .map(|(j, b)| (format!("{at}.budgets[{j}]"), b)),
        );
        let mut out = Vec::new();
        // Each period with the window that first had it.
        let mut seen: Vec<(Period, String)> = Vec::new();
        for (field, b) in all {
            let window = self.budget(&field, b);
            let period_value = &b.get_ref().period;
            let Some(period) = Period::parse(period_value.get_ref()) else {
                continue; // reported by `budget`
            };
            if let Some((_, first)) = seen.iter().find(|(p, _)| *p == period) {
                let m = format!(
                    "two windows of period {}: a period may have one limit (first at {first})",
                    period.as_str()
                );
                self.err(Some(period_value.span()), format!("{field}.period"), m);
                continue;
            }
            seen.push((period, field));
            out.extend(window);
        }
        out
    }

    /// One window; `field` is where it is (`projects[0].budget`, `teams[1].budgets[0]`, …).
    fn budget(&mut self, field: &str, b: &Spanned<FileBudget>) -> Option<Budget> {
        let span = b.span();
        let b = b.get_ref();
        let limit = Nanos::from_usd(b.limit_usd);
        if limit.is_none() {
            self.err(
                Some(span),
                format!("{field}.limit_usd"),
                format!(
                    "must be between 0 and 1000000000 dollars, got {}",
                    b.limit_usd
                ),
            );
        }
        let period = Period::parse(b.period.get_ref());
        if period.is_none() {
            self.err(
                Some(b.period.span()),
                format!("{field}.period"),
                format!(
                    "unknown period {:?} (expected day, week, month or total)",
                    b.period.get_ref()
                ),
            );
        }
        Some(Budget {
            limit: limit?,
            period: period?,
        })
    }

    fn rate_limit(&mut self, at: &str, r: &Spanned<FileRateLimit>) -> Option<RateLimit> {
        let span = r.span();
        let r = r.get_ref();
        let mut check = |v: Option<i64>, what: &str| match v {
            Some(n) if n <= 0 => {
                self.err(
                    Some(span.clone()),
                    format!("{at}.rate_limit.{what}"),
                    format!("must be positive, got {n}"),
                );
                Err(())
            }
            other => Ok(other.map(|n| n as u64)),
        };
        let rpm = check(r.rpm, "rpm");
        let tpm = check(r.tpm, "tpm");
        Some(RateLimit {
            rpm: rpm.ok()?,
            tpm: tpm.ok()?,
        })
    }

    /// A list of model globs; an empty entry is an error and left out.
    fn globs(&mut self, at: &str, list: &[Spanned<String>], what: &str) -> Vec<Glob> {
        let mut g = Vec::new();
        for (j, s) in list.iter().enumerate() {
            if s.get_ref().is_empty() {
                self.err(
                    Some(s.span()),
                    format!("{at}.{what}[{j}]"),
                    "must not be empty",
                );
            } else {
                g.push(Glob::new(s.get_ref()));
            }
        }
        g
    }

    /// `block_patterns` compiled into one regex, the alternation of all of them (each in its
    /// own group, so a pattern's flags stay its own): policy only asks whether any matches,
    /// and one regex keeps the literal prefilters a `RegexSet` loses, about 15x faster over a
    /// long prompt (load-tests/scan_bench.rs). `None` when there are none or one is bad (each
    /// bad one is reported).
    fn patterns(&mut self, at: &str, list: &[Spanned<String>]) -> Option<Regex> {
        if list.is_empty() {
            return None;
        }
        let mut bad = false;
        for (j, pat) in list.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pat.get_ref()) {
                bad = true;
                let msg = format!("bad regex: {}", e.to_string().replace('\n', " "));
                self.err(Some(pat.span()), format!("{at}.block_patterns[{j}]"), msg);
            }
        }
        if bad {
            return None;
        }
        let alternation: Vec<String> = list
            .iter()
            .map(|p| format!("(?:{})", p.get_ref()))
            .collect();
        match Regex::new(&alternation.join("|")) {
            Ok(r) => Some(r),
            Err(e) => {
                // Each compiles alone, but not all together (the size limit): never drop them.
                let msg = format!(
                    "the patterns together are too large to compile: {}",
                    e.to_string().replace('\n', " ")
                );
                self.err(
                    list.first().map(|p| p.span()),
                    format!("{at}.block_patterns"),
                    msg,
                );
                None
            }
        }
    }
}

/// A `keys` entry: `sha256:<64 hex>` is the digest of a key; anything else is the key itself.
fn parse_key_entry(s: &str) -> Result<KeyDigest, String> {
    if let Some(hex) = s.strip_prefix("sha256:") {
        return crate::engine::auth::parse_hex_digest(hex).ok_or_else(|| {
            "a sha256: entry needs exactly 64 hex digits (see `tollgate key new`)".to_string()
        });
    }
    if s.len() < 16 {
        return Err(format!(
            "a plaintext key must be at least 16 characters, this one has {}",
            s.len()
        ));
    }
    if s.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(
            "a key must be printable ASCII without spaces (it travels in an HTTP header)".into(),
        );
    }
    Ok(key_digest(s.as_bytes()))
}
