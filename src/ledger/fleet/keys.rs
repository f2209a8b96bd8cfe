//! Key naming for the fleet ledger: the one place that spells a Redis key.
//!
//! Every key of a project carries the hash tag `{p:ID}`, so all of them hash to one slot and
//! one library call over them is atomic, also on Redis Cluster. Ids are escaped so that an id
//! holding `{`, `}` or `:` cannot move the tag or collide with another account's key.
//! Pure: no I/O, no clock (callers pass `now`).

use crate::engine::budget::Period;

pub use crate::engine::accounts::AccountKind;

/// The global generation id: random, set if absent when a client loads the library.
#[cfg(test)]
pub const GENERATION: &str = "tg:gen";

/// `%`-escape the bytes that are structural in a key (`{`, `}`, `:`, `%`) and any control or
/// space byte, so an id is one opaque segment.
pub fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c <= ' ' || c == '\u{7f}' || matches!(c, '{' | '}' | ':' | '%') {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The keys of one project: `tg:{p:ID}:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectKeys {
    prefix: String,
}

impl ProjectKeys {
    pub fn new(project: &str) -> ProjectKeys {
        ProjectKeys {
            prefix: format!("tg:{{p:{}}}:", escape(project)),
        }
    }

    /// `frozen` and `version`.
    pub fn cfg(&self) -> String {
        format!("{}cfg", self.prefix)
    }

    /// The five keys every library call takes first, in the library's order:
    /// cfg, holds, hexp, done, dexp.
    pub fn meta(&self) -> [String; 5] {
        ["cfg", "holds", "hexp", "done", "dexp"].map(|s| format!("{}{s}", self.prefix))
    }

    /// A response cache entry of the project (its key in hex).
    pub fn cache(&self, key_hex: &str) -> String {
        format!("{}cache:{key_hex}", self.prefix)
    }

    /// A rate window of the project: `tg:{p:P}:r:<what>:<minute>` (`what`: `rpm`, `tpm`;
    /// `minute`: Unix seconds / 60).
    pub fn rate(&self, what: &str, minute: i64) -> String {
        format!("{}r:{what}:{minute}", self.prefix)
    }

    /// The budget key of one account in one window: `tg:{p:P}:b:<kind>:<id>:<period>:<key>`,
    /// e.g. `tg:{p:bot}:b:project:bot:day:2026-09-22` or `…:b:user:alice:month:2026-09`.
    pub fn budget(&self, kind: AccountKind, id: &str, period: Period, now_unix: i64) -> String {
        format!(
            "{}b:{}:{}:{}:{}",
            self.prefix,
            kind.as_str(),
            escape(id),
            period.as_str(),
            period.key(now_unix)
        )
    }
}

/// A team's budget key: `tg:{t:TEAM}:b:team:TEAM:<period>:<key>`. Its own hash tag, because
/// several projects share it (the library accepts a team's budget keys beside a project's).
pub fn team_budget(team: &str, period: Period, now_unix: i64) -> String {
    let t = escape(team);
    format!(
        "tg:{{t:{t}}}:b:team:{t}:{}:{}",
        period.as_str(),
        period.key(now_unix)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_project_shares_one_hash_tag() {
        let k = ProjectKeys::new("checkout-bot");
        assert_eq!(k.cfg(), "tg:{p:checkout-bot}:cfg");
        assert_eq!(k.meta()[4], "tg:{p:checkout-bot}:dexp");
        let day = k.budget(AccountKind::User, "alice", Period::Day, 1_790_000_000);
        assert_eq!(day, "tg:{p:checkout-bot}:b:user:alice:day:2026-09-21");
    }

    #[test]
    fn a_team_key_has_the_teams_own_tag() {
        assert_eq!(
            team_budget("pay", Period::Month, 1_790_000_000),
            "tg:{t:pay}:b:team:pay:month:2026-09"
        );
    }

    #[test]
    fn ids_cannot_move_the_tag_or_add_a_segment() {
        let k = ProjectKeys::new("a}b{c:d");
        assert_eq!(k.cfg(), "tg:{p:a%7Db%7Bc%3Ad}:cfg");
        assert_eq!(escape("x y%é"), "x%20y%25é");
        let u = k.budget(AccountKind::User, "u:1", Period::Total, 0);
        assert!(u.ends_with(":b:user:u%3A1:total:total"), "{u}");
    }
}
