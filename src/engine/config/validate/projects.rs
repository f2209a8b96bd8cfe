//! `[[projects]]`: ids, keys (plaintext or `sha256:`, unique across all projects), budget,
//! rate limit, model globs, output cap, prompt patterns, what to do with unpriced models.

use std::collections::HashMap;

use regex::Regex;
use toml::Spanned;

use super::{Names, Validator};
use crate::engine::auth::{key_digest, KeyDigest};
use crate::engine::budget::{Budget, Period};
use crate::engine::config::file::{FileBudget, FileProject, FileRateLimit};
use crate::engine::config::{Project, ProjectIdx, RateLimit, Unpriced};
use crate::engine::policy::Glob;
use crate::engine::pricing::Nanos;

const MAX_TOKENS: i64 = 100_000_000;

/// A project id appears in metric labels, logs and URLs: keep it to a safe alphabet.
fn id_rule(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok)
        .then(|| format!("{id:?} must be non-empty and use only letters, digits, '-', '_' and '.'"))
}

impl Validator<'_> {
    /// The projects (each one, so indexes match the file) and every key's digest → project.
    pub(super) fn projects(
        &mut self,
        list: &[Spanned<FileProject>],
    ) -> (Vec<Project>, HashMap<KeyDigest, (ProjectIdx, usize)>) {
        let mut out = Vec::new();
        // Each digest with the field that first listed it, for the duplicate message.
        let mut keys: HashMap<KeyDigest, ((ProjectIdx, usize), String)> = HashMap::new();
        let mut ids = Names::new("projects", "id", "project id", id_rule);
        for (i, p) in list.iter().enumerate() {
            let p = p.get_ref();
            let at = format!("projects[{i}]");
            self.name(&mut ids, i, &p.id);
            let idx = out.len();
            let mut project_keys = Vec::new();
            for (j, k) in p.keys.iter().enumerate() {
                let field = format!("{at}.keys[{j}]");
                let digest = match parse_key_entry(k.get_ref()) {
                    Ok(d) => d,
                    Err(m) => {
                        self.err(Some(k.span()), field, m);
                        continue;
                    }
                };
                if let Some((_, first)) = keys.get(&digest) {
                    let m = format!("duplicate key: the same key is already listed at {first}");
                    self.err(Some(k.span()), field, m);
                    continue;
                }
                keys.insert(digest, ((idx, project_keys.len()), field));
                project_keys.push(crate::engine::config::ProjectKey {
                    name: crate::engine::auth::hex(&digest[..4]),
                    budget: None,
                    expires: None,
                });
            }
            let budget = p.budget.as_ref().and_then(|b| self.budget(&at, b));
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
                budgets: budget.into_iter().collect(),
                team: None,
                keys: project_keys,
                user_budget: None,
                rate_limit,
                allow_models,
                deny_models,
                max_tokens,
                block_secrets: p.block_secrets,
                block_patterns,
                unpriced,
            });
        }
        (
            out,
            keys.into_iter().map(|(k, (idx, _))| (k, idx)).collect(),
        )
    }

    fn budget(&mut self, at: &str, b: &Spanned<FileBudget>) -> Option<Budget> {
        let span = b.span();
        let b = b.get_ref();
        let limit = Nanos::from_usd(b.limit_usd);
        if limit.is_none() {
            self.err(
                Some(span),
                format!("{at}.budget.limit_usd"),
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
                format!("{at}.budget.period"),
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
