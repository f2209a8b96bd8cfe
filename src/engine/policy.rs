//! Policy controls evaluated before any byte goes upstream: model allow/deny globs, the output
//! cap, prompt patterns and secrets, the kill switch. Each block carries its SPEC reason code.
//!
//! Core module: no pingora, no tokio, no I/O.

use crate::engine::config::Project;
use crate::engine::error::{GatewayError, PolicyCode};

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

/// What one walk of a body found: the prompt rules' verdict and, when the body read as one
/// valid JSON object, the request's fields.
pub struct PromptScan {
    /// The prompt's token upper bound, or the block.
    pub verdict: Result<u64, GatewayError>,
    /// [`crate::engine::request::parse`]'s result when the walk could tell it (see
    /// [`crate::engine::request::Members::facts`]); `None`: parse the body.
    pub facts: Option<crate::engine::request::RequestFacts>,
}

/// Scan the prompt text for credentials (`block_secrets`) and the project's `block_patterns`.
/// Texts are visited one by one, so a pattern never matches across two messages. The same walk
/// gives the prompt's token upper bound ([`crate::engine::prompt::prompt_tokens_upper_bound`]),
/// which is what an `Ok` verdict carries, and the body's top-level members, from which the
/// request's fields are read without parsing the body again.
pub fn scan_prompt(
    project: &Project,
    format: crate::engine::prompt::Format,
    body: &[u8],
) -> PromptScan {
    let scanning = project.block_secrets || project.block_patterns.is_some();
    let mut hit: Option<GatewayError> = None;
    let mut members = crate::engine::request::Members::default();
    let scanned = crate::engine::prompt::scan_body(
        format,
        body,
        &mut |text, _at| {
            if hit.is_some() || !scanning {
                return;
            }
            if project.block_secrets {
                if let Some(kind) = crate::engine::secrets::find_secret(text) {
                    hit = Some(GatewayError::PolicyBlocked(
                        PolicyCode::SecretDetected,
                        format!(
                            "The prompt contains {}; project {} blocks credentials in prompts",
                            kind.description(),
                            project.id
                        ),
                    ));
                    return;
                }
            }
            if let Some(set) = &project.block_patterns {
                if set.is_match(text) {
                    hit = Some(GatewayError::PolicyBlocked(
                        PolicyCode::PatternBlocked,
                        format!("The prompt matches a pattern project {} blocks", project.id),
                    ));
                }
            }
        },
        &mut |key, value| members.see(key, value),
    );
    PromptScan {
        verdict: hit.map_or(Ok(scanned.bound), Err),
        facts: scanned.whole.then(|| members.facts(body)).flatten(),
    }
}

/// When nothing bounds a request's output (no `max_tokens` from the client, no project cap,
/// no `max_output_tokens` in the price) a budgeted request gets this cap injected, so its
/// worst case is known. Set `max_output_tokens` in the price to allow more.
pub const DEFAULT_OUTPUT_CAP: u64 = 4096;

/// How many output tokens a request may produce, and whether Tollgate must write that cap into
/// the body for it to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputBound {
    pub tokens: u64,
    pub inject: bool,
}

/// The output bound of a request: the client's ask, checked against the project's cap, or the
/// cap (injected), or the model's maximum.
pub fn output_bound(
    project: &Project,
    requested: Option<u64>,
    model_max: Option<u64>,
    produces_output: bool,
    budgeted: bool,
) -> Result<OutputBound, GatewayError> {
    if !produces_output {
        return Ok(OutputBound {
            tokens: 0,
            inject: false,
        });
    }
    let clamp = |n: u64| model_max.map_or(n, |m| n.min(m));
    match (requested, project.max_tokens) {
        (Some(n), Some(cap)) if n > cap => Err(GatewayError::PolicyBlocked(
            PolicyCode::MaxTokensExceeded,
            format!(
                "Project {} allows at most {cap} output tokens per request; this one asks for {n}",
                project.id
            ),
        )),
        (Some(n), _) => Ok(OutputBound {
            tokens: clamp(n),
            inject: false,
        }),
        (None, Some(cap)) => Ok(OutputBound {
            tokens: clamp(cap),
            inject: true,
        }),
        (None, None) => match model_max {
            Some(m) => Ok(OutputBound {
                tokens: m,
                inject: false,
            }),
            None => Ok(OutputBound {
                tokens: DEFAULT_OUTPUT_CAP,
                inject: budgeted,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Unpriced;

    fn project(max_tokens: Option<u64>) -> Project {
        Project {
            id: "p".into(),
            budgets: vec![],
            team: None,
            keys: vec![],
            user_budget: None,
            rate_limit: None,
            allow_models: Some(vec![Glob::new("gpt-4o-mini"), Glob::new("claude-*")]),
            deny_models: vec![Glob::new("claude-opus-*")],
            max_tokens,
            block_secrets: false,
            block_patterns: None,
            unpriced: Unpriced::Block,
            cache_ttl: None,
            report_cost: false,
        }
    }

    #[test]
    fn deny_wins_over_allow_and_either_name_form_matches() {
        let p = project(None);
        assert!(model_allowed(&p, "openai/gpt-4o-mini", "gpt-4o-mini"));
        assert!(model_allowed(&p, "claude-sonnet-4", "claude-sonnet-4"));
        assert!(
            !model_allowed(&p, "claude-opus-4", "claude-opus-4"),
            "deny wins"
        );
        assert!(!model_allowed(&p, "gpt-4o", "gpt-4o"));
        let e = check_model(&p, "gpt-4o", "gpt-4o").unwrap_err();
        assert_eq!(e.code(), "model_not_allowed");
    }

    #[test]
    fn asking_for_more_than_the_cap_is_blocked_and_asking_for_nothing_gets_the_cap() {
        let p = project(Some(100));
        let e = output_bound(&p, Some(101), None, true, true).unwrap_err();
        assert_eq!(e.code(), "max_tokens_exceeded");
        assert_eq!(
            output_bound(&p, Some(100), None, true, true).unwrap(),
            OutputBound {
                tokens: 100,
                inject: false
            }
        );
        assert_eq!(
            output_bound(&p, None, None, true, true).unwrap(),
            OutputBound {
                tokens: 100,
                inject: true
            }
        );
    }

    #[test]
    fn without_a_cap_the_model_maximum_bounds_the_output() {
        let p = project(None);
        assert_eq!(
            output_bound(&p, None, Some(16384), true, true).unwrap(),
            OutputBound {
                tokens: 16384,
                inject: false
            }
        );
        assert_eq!(
            output_bound(&p, Some(50_000), Some(16384), true, true)
                .unwrap()
                .tokens,
            16384
        );
        assert_eq!(
            output_bound(&p, None, None, true, true).unwrap(),
            OutputBound {
                tokens: DEFAULT_OUTPUT_CAP,
                inject: true
            },
            "a budget needs a bound: one is injected"
        );
        assert!(
            !output_bound(&p, None, None, true, false).unwrap().inject,
            "no budget, no rewrite"
        );
        assert_eq!(
            output_bound(&p, Some(5), None, false, true).unwrap().tokens,
            0,
            "embeddings"
        );
    }

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
