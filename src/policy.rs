//! Policy controls evaluated before any byte goes upstream: model allow/deny globs, the output
//! cap, prompt patterns and secrets, the kill switch. Each block carries its SPEC reason code.
//!
//! Core module: no pingora, no tokio, no I/O.

use crate::config::Project;
use crate::error::{GatewayError, PolicyCode};

/// A model-name glob: `*` matches any run of characters, `?` one character; everything else is
/// literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(s: &str) -> Glob {
        Glob(s.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }
}

/// Iterative wildcard match with single backtrack point: linear-ish, no recursion, so a hostile
/// pattern cannot blow the stack.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether the project may use a model. Globs see the name the client sent and the name the
/// provider will see (prefix stripped), so `gpt-4o-mini` also allows `openai/gpt-4o-mini`.
pub fn model_allowed(project: &Project, client_model: &str, upstream_model: &str) -> bool {
    let hit = |g: &Glob| g.matches(client_model) || g.matches(upstream_model);
    if project.deny_models.iter().any(hit) {
        return false;
    }
    match &project.allow_models {
        None => true,
        Some(list) => list.iter().any(hit),
    }
}

pub fn check_model(
    project: &Project,
    client_model: &str,
    upstream_model: &str,
) -> Result<(), GatewayError> {
    if model_allowed(project, client_model, upstream_model) {
        Ok(())
    } else {
        Err(GatewayError::PolicyBlocked(
            PolicyCode::ModelNotAllowed,
            format!("Project {} may not use model {client_model}", project.id),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_wildcards() {
        let g = Glob::new("claude-*");
        assert!(g.matches("claude-sonnet-4"));
        assert!(g.matches("claude-"));
        assert!(!g.matches("gpt-4o"));
        assert!(Glob::new("gpt-4?-mini").matches("gpt-4o-mini"));
        assert!(Glob::new("*mini*").matches("gpt-4o-mini-2024"));
        assert!(Glob::new("gpt-4o-mini").matches("gpt-4o-mini"));
        assert!(!Glob::new("gpt-4o-mini").matches("gpt-4o-mini-2024"));
        assert!(Glob::new("a*b*c").matches("aXXbYYc"));
        assert!(!Glob::new("a*b*c").matches("aXXbYY"));
    }

    #[test]
    fn pathological_globs_finish_quickly() {
        let p = Glob::new(&"*a".repeat(50));
        assert!(!p.matches(&"a".repeat(49)));
    }
}
