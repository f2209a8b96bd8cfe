//! Admission: every rule `request_filter` applies, as pure functions over the facts the shell
//! read from the request.
//!
//! Two stages, because the shell must act between them:
//! 1. [`before_body`]: the path and method, the key, the kill switch, the declared body size,
//!    and the answers Tollgate gives itself (`/healthz`, `/v1/models`). The shell then counts
//!    the request against the rate limit and reads the body (only for an authenticated
//!    project, and never a body larger than `max_body_bytes`).
//! 2. [`decide`]: the body's fields, the route, the model rules, the prompt rules, the price
//!    and the worst case, the upstream body, the attempt plan and its deadline. The shell then
//!    reserves the worst case in the ledger, atomically, and forwards.
//!
//! Both stages write what they learned into [`Seen`] as they go, so a blocked request's
//! decision record names everything known when it was blocked.
//!
//! Engine module: must not import pingora, tokio or any shell module, do I/O or read a clock.
//! What the shell knows of the world (a freeze, a provider's circuit) comes in as a function.

use std::time::Duration;

use crate::engine::accounts::{self, AccountRef};
use crate::engine::auth;
use crate::engine::config::{Config, ProjectIdx, Unpriced};
use crate::engine::error::{json_string, GatewayError, PolicyCode};
use crate::engine::policy;
use crate::engine::pricing::{Nanos, Price};
use crate::engine::provider::{Endpoint, ProviderKind};
use crate::engine::request::{self, Rewrite};
use crate::engine::route::ProviderIdx;

/// No new attempt starts later than this many times the longest read timeout of the request's
/// providers after it arrived: room for one slow try and a retry, but never an unbounded chain
/// of tries that keeps the client waiting long after one provider would have answered.
pub const DEADLINE_READ_TIMEOUTS: u32 = 2;

/// What the request has shown so far: the decision record's fields, also for a block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub endpoint: Option<Endpoint>,
    pub project: Option<ProjectIdx>,
    /// First 8 hex digits of the key's SHA-256: identifies the key in records, reveals nothing.
    pub key_id: Option<String>,
    /// The key's place in its project's `keys`, and its name (records and reports).
    pub key: Option<usize>,
    pub key_name: Option<String>,
    /// The end user (header, else body), once known.
    pub user: Option<String>,
    /// `x-tollgate-tags`, validated.
    pub tags: Vec<(String, String)>,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub stream: bool,
}

/// The request line and headers that admission reads before the body.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The project key, from whichever header carried it ([`auth::presented_key`]).
    pub key: Option<&'a [u8]>,
    /// `Content-Length`, when declared.
    pub content_length: Option<u64>,
    /// The client sent `anthropic-version`: `/v1/models` answers in Anthropic's shape.
    pub anthropic: bool,
    /// The client asked for a WebSocket (`Upgrade: websocket`).
    pub upgrade: bool,
    /// `x-tollgate-tags`, as sent.
    pub tags: Option<&'a [u8]>,
    /// Unix seconds now (a key past its `expires` is refused).
    pub now_unix: i64,
}

/// What to do after [`before_body`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Answer with this status and JSON body; nothing goes upstream.
    Answer(u16, String),
    /// Read the body (of at most `max_body_bytes`) and call [`decide`].
    ReadBody,
}

/// Stage 1. `frozen` tells whether the kill switch holds a project (by id).
pub fn before_body(
    cfg: &Config,
    head: &Head,
    frozen: &dyn Fn(&str) -> bool,
    seen: &mut Seen,
) -> Result<Next, GatewayError> {
    let endpoint = Endpoint::from_path(head.path).ok_or_else(|| {
        GatewayError::NotFound(format!("Unknown path {}", truncate(head.path, 200)))
    })?;
    seen.endpoint = Some(endpoint);
    if head.upgrade {
        // Codex tries a WebSocket on /v1/responses first and falls back to HTTP on a 426.
        return Err(GatewayError::UpgradeRequired(format!(
            "Tollgate does not proxy WebSockets; send {} {} over HTTP",
            endpoint.method(),
            truncate(head.path, 200)
        )));
    }
    if !endpoint.allows(head.method) {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} {} is not supported; use {}",
            head.method,
            truncate(head.path, 200),
            endpoint.method()
        )));
    }
    if matches!(endpoint, Endpoint::Healthz | Endpoint::Root) {
        return Ok(Next::Answer(200, r#"{"status":"ok"}"#.to_string()));
    }
    let key = head.key.ok_or_else(|| {
        GatewayError::Unauthorized(
            "Missing project key: send `Authorization: Bearer KEY`, `x-api-key` or `x-tollgate-key`"
                .into(),
        )
    })?;
    let digest = auth::key_digest(key);
    let (project_idx, key_idx) = cfg
        .project_for_digest(&digest)
        .ok_or_else(|| GatewayError::Unauthorized("Unknown project key".into()))?;
    seen.project = Some(project_idx);
    seen.key_id = Some(auth::hex(&digest[..4]));
    let project = &cfg.projects[project_idx];
    seen.key = Some(key_idx);
    if let Some(k) = project.keys.get(key_idx) {
        seen.key_name = Some(k.name.clone());
        if let Some(at) = k.expires.filter(|&e| head.now_unix >= e) {
            return Err(GatewayError::KeyExpired(format!(
                "Key {} of project {} expired at {}",
                k.name,
                project.id,
                crate::engine::time::rfc3339_millis(at.saturating_mul(1000))
            )));
        }
    }
    if let Some(t) = head.tags {
        seen.tags = crate::engine::accounts::parse_tags(t)?;
    }
    if frozen(&project.id) {
        return Err(GatewayError::PolicyBlocked(
            PolicyCode::ProjectFrozen,
            format!("Project {} is frozen by an operator", project.id),
        ));
    }
    let shape = if head.anthropic {
        ModelShape::Anthropic
    } else {
        ModelShape::OpenAi
    };
    match endpoint {
        Endpoint::Models => return Ok(Next::Answer(200, models_list(cfg, project_idx, shape))),
        Endpoint::Model => {
            let id = head.path.trim_end_matches('/');
            let id = id.strip_prefix("/v1/models/").unwrap_or(id);
            let id = percent_decode(id);
            return match model_info(cfg, project_idx, &id, shape) {
                Some(body) => Ok(Next::Answer(200, body)),
                None => Err(GatewayError::NotFound(format!(
                    "Model {} is not available to project {}",
                    truncate(&id, 200),
                    project.id
                ))),
            };
        }
        _ => {}
    }
    let max = cfg.server.max_body_bytes;
    if head.content_length.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    Ok(Next::ReadBody)
}

/// The 413 for a body over `max` bytes (declared, or found while reading).
pub fn too_large(max: usize) -> GatewayError {
    GatewayError::RequestTooLarge(format!(
        "The request body is larger than the limit of {max} bytes"
    ))
}

/// What stage 2 needs besides the config.
pub struct Facts<'a> {
    pub endpoint: Endpoint,
    pub project: ProjectIdx,
    /// `x-tollgate-user`, as sent.
    pub user_header: Option<&'a [u8]>,
    /// The whole request body as the client sent it.
    pub body: &'a [u8],
    /// Any number that varies from request to request: it spreads a route's weighted
    /// targets (the shell passes its request counter, which spreads them evenly).
    pub pick: u64,
    /// Whether a provider's circuit lets a request through now.
    pub usable: &'a dyn Fn(ProviderIdx) -> bool,
}

/// An admitted request: what to reserve, what to send, where to try.
#[derive(Clone, Debug)]
pub struct Admission {
    /// Reserve, settle and count tokens for it; false for token counting, which is free.
    pub charged: bool,
    /// Every account the request is charged to ([`accounts::accounts`]), in its order.
    pub accounts: Vec<AccountRef>,
    /// The matched price and its key (the bounded `model` label); `None`: unpriced.
    pub price: Option<(String, Price)>,
    /// The request's worst-case cost, to reserve before forwarding.
    pub worst: Nanos,
    /// The body to send upstream when it differs from the client's; `None`: forward the
    /// client's bytes as they are (no copy).
    pub rewritten: Option<Vec<u8>>,
    /// Remove the usage chunk Tollgate asked for from the stream the client sees.
    pub strip_usage_chunk: bool,
    /// The providers to try, in order (never empty).
    pub attempts: Vec<ProviderIdx>,
    /// No new attempt starts this long after the request arrived.
    pub deadline: Duration,
}

/// Stage 2: the body rules, in the order the SPEC's codes are checked.
pub fn decide(cfg: &Config, f: &Facts, seen: &mut Seen) -> Result<Admission, GatewayError> {
    let project = &cfg.projects[f.project];
    // One walk of the body gives the prompt rules' verdict and, for a valid body, its fields;
    // the verdict is applied in its SPEC order below.
    let (verdict, facts) = match f.endpoint.prompt_format() {
        Some(format) => {
            let scan = policy::scan_prompt(project, format, f.body);
            (Some(scan.verdict), scan.facts)
        }
        None => (None, None),
    };
    let facts = match facts {
        Some(facts) => facts,
        None => request::parse(f.body)?,
    };
    seen.model = Some(truncate(&facts.model, 200).to_string());
    seen.stream = facts.stream;
    let user = accounts::end_user(f.user_header, facts.user.as_deref())?;
    seen.user = user.map(str::to_string);
    let route = cfg.routes.lookup(&facts.model).ok_or_else(|| {
        GatewayError::NotFound(format!(
            "No route for model {}",
            truncate(&facts.model, 200)
        ))
    })?;
    let upstream_model = route.upstream_model(&facts.model);
    seen.upstream_model = Some(upstream_model.to_string());
    policy::check_model(project, &facts.model, upstream_model)?;
    let prompt_bound = verdict.transpose()?;
    if f.endpoint == Endpoint::CountTokens {
        return count_tokens(cfg, f, route, &facts.model, upstream_model);
    }
    let charged_to = accounts::accounts(cfg, f.project, seen.key, user);

    let price = cfg.prices.lookup(upstream_model);
    if price.is_none() && project.unpriced == Unpriced::Block {
        return Err(GatewayError::PolicyBlocked(
            PolicyCode::UnpricedModel,
            format!(
                "Model {} has no price, and project {} blocks unpriced models",
                truncate(upstream_model, 200),
                project.id
            ),
        ));
    }
    let bound = policy::output_bound(
        project,
        facts.max_output_tokens,
        price.and_then(|(_, p)| p.max_output_tokens),
        f.endpoint != Endpoint::Embeddings,
        charged_to.iter().any(|a| a.window.is_some()),
    )?;
    let worst = match (price, prompt_bound) {
        (Some((_, p)), Some(prompt)) => p.worst_case(prompt, bound.tokens),
        _ => Nanos::ZERO,
    };

    let (inject, strip) = request::usage_injection(f.endpoint, &facts);
    let rw = Rewrite {
        model: (upstream_model != facts.model).then_some(upstream_model),
        include_usage: inject,
        max_tokens: f
            .endpoint
            .max_tokens_field()
            .filter(|_| bound.inject)
            .map(|field| (field, bound.tokens)),
    };
    let rewritten = request::rewrite(f.body, &rw);

    let planned = route.attempt_plan(f.pick);
    // Providers whose circuit is open are left out, as long as another one is left in.
    let usable: Vec<ProviderIdx> = planned.iter().copied().filter(|&p| (f.usable)(p)).collect();
    let attempts = if usable.is_empty() { planned } else { usable };
    let longest = attempts
        .iter()
        .map(|&p| cfg.providers[p].read_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    Ok(Admission {
        charged: true,
        accounts: charged_to,
        price: price.map(|(k, p)| (k.to_string(), p.clone())),
        worst,
        rewritten,
        strip_usage_chunk: strip,
        attempts,
        deadline: longest * DEADLINE_READ_TIMEOUTS,
    })
}

/// `POST /v1/messages/count_tokens`: the model rules and prompt rules have passed; only a
/// provider that counts tokens (kind `anthropic`) can answer it. Nothing is reserved.
fn count_tokens(
    cfg: &Config,
    f: &Facts,
    route: &crate::engine::route::Route,
    model: &str,
    upstream_model: &str,
) -> Result<Admission, GatewayError> {
    let planned = route.attempt_plan(f.pick);
    let counting: Vec<ProviderIdx> = planned
        .iter()
        .copied()
        .filter(|&p| cfg.providers[p].kind == ProviderKind::Anthropic)
        .collect();
    let Some(&first) = counting.first() else {
        let provider = planned
            .first()
            .map_or("-", |&p| cfg.providers[p].name.as_str());
        return Err(GatewayError::InvalidRequest(format!(
            "Model {} is served by provider {provider} (kind openai), which has no token counting; count_tokens needs a provider of kind anthropic",
            truncate(model, 200)
        )));
    };
    let usable: Vec<ProviderIdx> = counting
        .iter()
        .copied()
        .filter(|&p| (f.usable)(p))
        .collect();
    let attempts = if usable.is_empty() { counting } else { usable };
    let rw = Rewrite {
        model: (upstream_model != model).then_some(upstream_model),
        ..Rewrite::default()
    };
    Ok(Admission {
        charged: false,
        accounts: Vec::new(),
        price: None,
        worst: Nanos::ZERO,
        rewritten: request::rewrite(f.body, &rw),
        strip_usage_chunk: false,
        deadline: cfg.providers[first].read_timeout * DEADLINE_READ_TIMEOUTS,
        attempts,
    })
}

/// `%2F` and friends in a model id of a path (`/v1/models/openai%2Fgpt-4o-mini`); anything
/// that does not decode to UTF-8 is kept as it was.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// At most `n` characters of `s`, for messages and records that quote what a client sent.
pub fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The shape a models answer comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelShape {
    OpenAi,
    Anthropic,
}

/// The priced models this project may use and that have a route, in the names a client would
/// send (bare, and with each stripping route's prefix), sorted, each with its provider.
fn allowed_models(cfg: &Config, project: ProjectIdx) -> Vec<(String, String)> {
    let p = &cfg.projects[project];
    let mut names: Vec<String> = Vec::new();
    let mut consider = |name: String| {
        if let Some(route) = cfg.routes.lookup(&name) {
            if policy::model_allowed(p, &name, route.upstream_model(&name))
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    };
    for model in cfg.prices.keys() {
        consider(model.to_string());
        // `openai/gpt-4o-mini` is listed when the bare name would not reach the same
        // provider anyway; `openai/claude-sonnet-4` is not a model anyone serves.
        let bare_provider = cfg
            .routes
            .lookup(model)
            .and_then(|r| r.targets.first())
            .map(|t| t.provider);
        for r in cfg.routes.routes().iter().filter(|r| r.strip_prefix) {
            let via = r.targets.first().map(|t| t.provider);
            if bare_provider.is_none() || bare_provider == via {
                consider(format!("{}{model}", r.prefix));
            }
        }
    }
    if let Some(allow) = &p.allow_models {
        for g in allow.iter().filter(|g| !g.as_str().contains(['*', '?'])) {
            consider(g.as_str().to_string());
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let owner = cfg
                .routes
                .lookup(&n)
                .and_then(|r| r.targets.first())
                .map_or("tollgate", |t| cfg.providers[t.provider].name.as_str())
                .to_string();
            (n, owner)
        })
        .collect()
}

/// Tollgate knows no release dates; Anthropic's shape requires one.
const MODEL_CREATED_AT: &str = "1970-01-01T00:00:00Z";

fn model_json(name: &str, owner: &str, shape: ModelShape) -> String {
    match shape {
        ModelShape::OpenAi => format!(
            r#"{{"id":{},"object":"model","created":0,"owned_by":{}}}"#,
            json_string(name),
            json_string(owner)
        ),
        ModelShape::Anthropic => format!(
            r#"{{"type":"model","id":{n},"display_name":{n},"created_at":"{MODEL_CREATED_AT}"}}"#,
            n = json_string(name)
        ),
    }
}

/// `GET /v1/models`, in the caller's shape.
pub fn models_list(cfg: &Config, project: ProjectIdx, shape: ModelShape) -> String {
    let models = allowed_models(cfg, project);
    let data: Vec<String> = models
        .iter()
        .map(|(n, o)| model_json(n, o, shape))
        .collect();
    match shape {
        ModelShape::OpenAi => format!(r#"{{"object":"list","data":[{}]}}"#, data.join(",")),
        ModelShape::Anthropic => {
            let id = |m: Option<&(String, String)>| {
                m.map_or("null".to_string(), |(n, _)| json_string(n))
            };
            format!(
                r#"{{"data":[{}],"has_more":false,"first_id":{},"last_id":{}}}"#,
                data.join(","),
                id(models.first()),
                id(models.last())
            )
        }
    }
}

/// `GET /v1/models/{id}`: the model, if this project may use it.
pub fn model_info(
    cfg: &Config,
    project: ProjectIdx,
    id: &str,
    shape: ModelShape,
) -> Option<String> {
    allowed_models(cfg, project)
        .iter()
        .find(|(n, _)| n == id)
        .map(|(n, o)| model_json(n, o, shape))
}

#[cfg(test)]
mod tests;
