//! Admission, rule by rule, without a socket: a config text, a request's facts, the decision.

use super::*;
use crate::engine::config::parse;

const KEY: &[u8] = b"tg_admission_test_key_0001";

fn config(project_extra: &str) -> Config {
    let text = format!(
        r#"
[server]
max_body_bytes = 1000

[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9"
api_key_env = "K"
read_timeout_ms = 3000

[[providers]]
name = "backup"
kind = "openai"
base_url = "http://127.0.0.1:10"
api_key_env = "K"
read_timeout_ms = 7000

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:11"
api_key_env = "K"

[[routes]]
prefix = "gpt-"
provider = "openai"
fallbacks = ["backup"]

[[routes]]
prefix = "openai/"
provider = "openai"
strip_prefix = true

[[routes]]
prefix = "claude-"
provider = "anthropic"

[[routes]]
prefix = "llama-"
provider = "openai"

[prices."gpt-4o-mini"]
input = 1.0
output = 2.0
max_output_tokens = 1000

[prices."claude-sonnet-4"]
input = 3.0
output = 15.0

[[projects]]
id = "p"
keys = ["{key}"]
{project_extra}
"#,
        key = std::str::from_utf8(KEY).unwrap_or_default()
    );
    parse(&text, "t.toml", &|_| Some("secret".into())).unwrap_or_else(|e| panic!("{e}"))
}

fn head<'a>(method: &'a str, path: &'a str, key: Option<&'a [u8]>) -> Head<'a> {
    Head {
        tags: None,
        now_unix: 1_795_341_600,
        method,
        path,
        key,
        content_length: None,
        anthropic: false,
        upgrade: false,
    }
}

fn not_frozen(_: &str) -> bool {
    false
}

fn all_up(_: ProviderIdx) -> bool {
    true
}

fn stage1(cfg: &Config, h: &Head) -> Result<Next, GatewayError> {
    before_body(cfg, h, &not_frozen, &mut Seen::default())
}

fn decide_body(cfg: &Config, endpoint: Endpoint, body: &str) -> Result<Admission, GatewayError> {
    decide(
        cfg,
        &Facts {
            user_header: None,
            endpoint,
            project: 0,
            body: body.as_bytes(),
            pick: 0,
            usable: &all_up,
        },
        &mut Seen::default(),
    )
}

fn code(r: Result<impl std::fmt::Debug, GatewayError>) -> (u16, &'static str) {
    let e = r.expect_err("the rule should block");
    (e.status(), e.code())
}

#[test]
fn an_unknown_path_is_404_and_a_wrong_method_405() {
    let c = config("");
    assert_eq!(
        code(stage1(&c, &head("POST", "/v2/x", Some(KEY)))),
        (404, "not_found")
    );
    assert_eq!(
        code(stage1(&c, &head("GET", "/v1/chat/completions", Some(KEY)))),
        (405, "method_not_allowed")
    );
}

#[test]
fn healthz_needs_no_key() {
    let c = config("");
    assert_eq!(
        stage1(&c, &head("GET", "/healthz", None)).expect("liveness"),
        Next::Answer(200, r#"{"status":"ok"}"#.into())
    );
}

#[test]
fn a_missing_or_unknown_key_is_401_and_names_nothing_of_the_key() {
    let c = config("");
    assert_eq!(
        code(stage1(&c, &head("POST", "/v1/chat/completions", None))),
        (401, "unauthorized")
    );
    let e = stage1(&c, &head("POST", "/v1/chat/completions", Some(b"tg_wrong")))
        .expect_err("unknown key");
    assert_eq!(e.status(), 401);
    assert!(!e.message().contains("tg_wrong"), "{}", e.message());
}

#[test]
fn a_known_key_identifies_the_project_and_its_short_key_id() {
    let c = config("");
    let mut seen = Seen::default();
    let next = before_body(
        &c,
        &head("POST", "/v1/chat/completions", Some(KEY)),
        &not_frozen,
        &mut seen,
    );
    assert_eq!(next, Ok(Next::ReadBody));
    assert_eq!(seen.project, Some(0));
    assert_eq!(seen.endpoint, Some(Endpoint::ChatCompletions));
    let digest = auth::hex(&auth::key_digest(KEY));
    assert_eq!(seen.key_id.as_deref(), Some(&digest[..8]));
}

#[test]
fn a_frozen_project_is_blocked_before_its_body_is_read() {
    let c = config("");
    let mut seen = Seen::default();
    let r = before_body(
        &c,
        &head("POST", "/v1/chat/completions", Some(KEY)),
        &|p| p == "p",
        &mut seen,
    );
    assert_eq!(code(r), (403, "project_frozen"));
    assert_eq!(seen.project, Some(0), "the record still names the project");
}

#[test]
fn a_declared_body_over_the_limit_is_413_before_reading() {
    let c = config("");
    let mut h = head("POST", "/v1/chat/completions", Some(KEY));
    h.content_length = Some(1000);
    assert_eq!(stage1(&c, &h), Ok(Next::ReadBody), "at the limit is fine");
    h.content_length = Some(1001);
    assert_eq!(code(stage1(&c, &h)), (413, "request_too_large"));
}

#[test]
fn the_models_list_holds_the_allowed_priced_models_with_their_prefixed_names() {
    let c = config(r#"deny_models = ["claude-*"]"#);
    let Ok(Next::Answer(200, body)) = stage1(&c, &head("GET", "/v1/models", Some(KEY))) else {
        panic!("a local answer")
    };
    assert!(body.contains(r#""id":"gpt-4o-mini""#), "{body}");
    assert!(body.contains(r#""id":"openai/gpt-4o-mini""#), "{body}");
    assert!(
        !body.contains("claude"),
        "denied models are not listed: {body}"
    );
}

#[test]
fn a_body_that_is_not_json_or_has_no_model_is_400() {
    let c = config("");
    assert_eq!(
        code(decide_body(&c, Endpoint::ChatCompletions, "not json")),
        (400, "invalid_request")
    );
    assert_eq!(
        code(decide_body(
            &c,
            Endpoint::ChatCompletions,
            r#"{"messages":[]}"#
        )),
        (400, "invalid_request")
    );
}

#[test]
fn a_model_without_a_route_is_404() {
    let c = config("");
    assert_eq!(
        code(decide_body(
            &c,
            Endpoint::ChatCompletions,
            r#"{"model":"mistral-x"}"#
        )),
        (404, "not_found")
    );
}

#[test]
fn deny_wins_over_allow_and_the_record_names_the_model() {
    let c = config(
        r#"allow_models = ["gpt-*"]
deny_models = ["gpt-4o-mini"]"#,
    );
    let mut seen = Seen::default();
    let r = decide(
        &c,
        &Facts {
            user_header: None,
            endpoint: Endpoint::ChatCompletions,
            project: 0,
            body: br#"{"model":"gpt-4o-mini","messages":[]}"#,
            pick: 0,
            usable: &all_up,
        },
        &mut seen,
    );
    assert_eq!(code(r), (403, "model_not_allowed"));
    assert_eq!(seen.model.as_deref(), Some("gpt-4o-mini"));
}

#[test]
fn secrets_and_patterns_in_the_prompt_are_blocked() {
    let c = config(
        r#"block_secrets = true
block_patterns = ["(?i)internal use only"]"#,
    );
    let secret = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"key AKIAZ7Q4X9R2M6T8W3K5"}]}"#;
    assert_eq!(
        code(decide_body(&c, Endpoint::ChatCompletions, secret)),
        (403, "secret_detected")
    );
    let pattern =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"INTERNAL use only"}]}"#;
    assert_eq!(
        code(decide_body(&c, Endpoint::ChatCompletions, pattern)),
        (403, "pattern_blocked")
    );
}

#[test]
fn an_unpriced_model_is_blocked_unless_the_project_allows_it() {
    let body = r#"{"model":"llama-3","messages":[]}"#;
    assert_eq!(
        code(decide_body(&config(""), Endpoint::ChatCompletions, body)),
        (403, "unpriced_model"),
        "block is the default"
    );
    let a = decide_body(
        &config(r#"unpriced = "allow""#),
        Endpoint::ChatCompletions,
        body,
    )
    .expect("allowed");
    assert!(a.price.is_none());
    assert_eq!(a.worst, Nanos::ZERO, "nothing to reserve without a price");
}

#[test]
fn an_output_ask_over_the_project_cap_is_blocked_and_no_ask_gets_the_cap() {
    let c = config("max_tokens = 100");
    assert_eq!(
        code(decide_body(
            &c,
            Endpoint::ChatCompletions,
            r#"{"model":"gpt-4o-mini","max_tokens":101}"#
        )),
        (403, "max_tokens_exceeded")
    );
    let a =
        decide_body(&c, Endpoint::ChatCompletions, r#"{"model":"gpt-4o-mini"}"#).expect("admitted");
    let body = String::from_utf8(a.rewritten.expect("rewritten")).expect("utf-8");
    assert!(
        body.contains(r#""max_completion_tokens":100"#),
        "the cap is written in: {body}"
    );
}

#[test]
fn the_worst_case_is_the_prompt_bound_at_input_price_plus_every_output_token() {
    let c = config("");
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let a = decide_body(&c, Endpoint::ChatCompletions, body).expect("admitted");
    let (key, price) = a.price.expect("priced");
    assert_eq!(key, "gpt-4o-mini");
    let prompt = crate::engine::prompt::prompt_tokens_upper_bound(
        crate::engine::prompt::Format::Chat,
        body.as_bytes(),
    );
    assert_eq!(a.worst, price.worst_case(prompt, 10));
    assert!(a.worst > Nanos::ZERO);
}

#[test]
fn a_stripped_prefix_is_rewritten_and_usage_is_asked_for_and_hidden_in_streams() {
    let c = config("");
    let a = decide_body(
        &c,
        Endpoint::ChatCompletions,
        r#"{"model":"openai/gpt-4o-mini","stream":true,"max_tokens":5}"#,
    )
    .expect("admitted");
    let body = String::from_utf8(a.rewritten.expect("rewritten")).expect("utf-8");
    assert!(body.contains(r#""model":"gpt-4o-mini""#), "{body}");
    assert!(body.contains(r#""include_usage":true"#), "{body}");
    assert!(a.strip_usage_chunk, "the client did not ask for usage");
    let asked = decide_body(
        &c,
        Endpoint::ChatCompletions,
        r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":5,"stream_options":{"include_usage":true}}"#,
    )
    .expect("admitted");
    assert!(
        !asked.strip_usage_chunk,
        "the client asked: it sees the chunk"
    );
}

#[test]
fn an_unchanged_body_is_forwarded_byte_for_byte() {
    let c = config("");
    let body = r#"{ "model" : "gpt-4o-mini", "max_tokens": 5, "x": [1,2] }"#;
    let a = decide_body(&c, Endpoint::ChatCompletions, body).expect("admitted");
    assert_eq!(a.rewritten, None, "the client's bytes go as they are");
}

#[test]
fn open_circuits_are_left_out_unless_every_provider_is_open() {
    let c = config("");
    let openai = c.provider_index("openai").expect("openai");
    let backup = c.provider_index("backup").expect("backup");
    let body = br#"{"model":"gpt-4o-mini","max_tokens":5}"#;
    let with = |usable: &dyn Fn(ProviderIdx) -> bool| {
        decide(
            &c,
            &Facts {
                user_header: None,
                endpoint: Endpoint::ChatCompletions,
                project: 0,
                body,
                pick: 0,
                usable,
            },
            &mut Seen::default(),
        )
        .expect("admitted")
    };
    assert_eq!(with(&all_up).attempts, vec![openai, backup]);
    assert_eq!(with(&|p| p != openai).attempts, vec![backup]);
    assert_eq!(
        with(&|_| false).attempts,
        vec![openai, backup],
        "with every circuit open the plan is tried as it is"
    );
}

#[test]
fn the_deadline_is_twice_the_longest_read_timeout_of_the_plan() {
    let c = config("");
    let a = decide_body(
        &c,
        Endpoint::ChatCompletions,
        r#"{"model":"gpt-4o-mini","max_tokens":5}"#,
    )
    .expect("admitted");
    assert_eq!(
        a.deadline,
        Duration::from_millis(7000) * 2,
        "backup reads for 7 s"
    );
}

#[test]
fn embeddings_reserve_no_output() {
    let c = config("");
    let body = r#"{"model":"gpt-4o-mini","input":"hello"}"#;
    let a = decide_body(&c, Endpoint::Embeddings, body).expect("admitted");
    let (_, price) = a.price.expect("priced");
    let prompt = crate::engine::prompt::prompt_tokens_upper_bound(
        crate::engine::prompt::Format::Embeddings,
        body.as_bytes(),
    );
    assert_eq!(a.worst, price.worst_case(prompt, 0));
}

#[test]
fn the_base_url_answers_get_and_head_without_a_key() {
    let c = config("");
    for method in ["GET", "HEAD"] {
        assert!(
            matches!(
                stage1(&c, &head(method, "/", None)),
                Ok(Next::Answer(200, _))
            ),
            "{method} /"
        );
    }
    assert_eq!(
        code(stage1(&c, &head("POST", "/", None))),
        (405, "method_not_allowed")
    );
}

#[test]
fn a_websocket_upgrade_gets_426_at_once() {
    let c = config("");
    let mut h = head("GET", "/v1/responses", None);
    h.upgrade = true;
    assert_eq!(code(stage1(&c, &h)), (426, "upgrade_required"));
}

#[test]
fn models_come_in_anthropic_shape_when_the_client_speaks_anthropic() {
    let c = config("");
    let mut h = head("GET", "/v1/models", Some(KEY));
    h.anthropic = true;
    let Ok(Next::Answer(200, body)) = stage1(&c, &h) else {
        panic!("a local answer")
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["has_more"], false, "{v}");
    assert_eq!(v["first_id"], v["data"][0]["id"], "{v}");
    assert_eq!(v["data"][0]["type"], "model", "{v}");
    assert!(v["data"][0]["display_name"].is_string(), "{v}");
    assert!(v["data"][0]["created_at"].is_string(), "{v}");
    let last = v["data"].as_array().map_or(0, |d| d.len()) - 1;
    assert_eq!(v["last_id"], v["data"][last]["id"], "{v}");
}

#[test]
fn one_model_is_served_in_the_callers_shape_and_others_are_404() {
    let c = config(r#"deny_models = ["claude-*"]"#);
    let Ok(Next::Answer(200, body)) = stage1(
        &c,
        &head("GET", "/v1/models/openai%2Fgpt-4o-mini", Some(KEY)),
    ) else {
        panic!("the model is served")
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["id"], "openai/gpt-4o-mini");
    assert_eq!(v["object"], "model");
    let mut h = head("GET", "/v1/models/gpt-4o-mini", Some(KEY));
    h.anthropic = true;
    let Ok(Next::Answer(200, body)) = stage1(&c, &h) else {
        panic!("the model is served")
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("model"), Some("gpt-4o-mini"))
    );
    assert_eq!(
        code(stage1(
            &c,
            &head("GET", "/v1/models/claude-sonnet-4", Some(KEY))
        )),
        (404, "not_found"),
        "a denied model is not there"
    );
}

#[test]
fn count_tokens_is_free_and_goes_only_to_a_provider_that_counts() {
    let c = config("");
    let a = decide_body(
        &c,
        Endpoint::CountTokens,
        r#"{"model":"claude-sonnet-4","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .expect("admitted");
    assert!(!a.charged, "nothing is reserved or charged");
    assert_eq!(a.worst, Nanos::ZERO);
    assert_eq!(
        a.attempts,
        vec![c.provider_index("anthropic").expect("anthropic")]
    );
    assert_eq!(a.rewritten, None, "forwarded byte for byte");
    let e = decide_body(
        &c,
        Endpoint::CountTokens,
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .expect_err("openai has no token counting");
    assert_eq!((e.status(), e.code()), (400, "invalid_request"));
    assert!(
        e.message().contains("gpt-4o-mini") && e.message().contains("openai"),
        "names the model and its provider: {}",
        e.message()
    );
}

#[test]
fn count_tokens_obeys_the_model_rules_and_the_prompt_rules() {
    let c = config(r#"deny_models = ["claude-*"]"#);
    assert_eq!(
        code(decide_body(
            &c,
            Endpoint::CountTokens,
            r#"{"model":"claude-sonnet-4","messages":[]}"#
        )),
        (403, "model_not_allowed")
    );
    let c = config("block_secrets = true");
    let secret = r#"{"model":"claude-sonnet-4","messages":[{"role":"user","content":"AKIAZ7Q4X9R2M6T8W3K5"}]}"#;
    assert_eq!(
        code(decide_body(&c, Endpoint::CountTokens, secret)),
        (403, "secret_detected"),
        "a prompt with a credential never leaves, counted or not"
    );
}

#[test]
fn each_block_pattern_keeps_its_own_flags_in_the_combined_regex() {
    let c = config(r#"block_patterns = ["(?i)alpha", "Beta", "^start"]"#);
    let ask = |text: &str| {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","max_tokens":5,"messages":[{{"role":"user","content":"{text}"}}]}}"#
        );
        decide_body(&c, Endpoint::ChatCompletions, &body).map(|_| ())
    };
    assert_eq!(code(ask("say ALPHA now")), (403, "pattern_blocked"));
    assert_eq!(code(ask("say Beta now")), (403, "pattern_blocked"));
    assert!(
        ask("say beta now").is_ok(),
        "(?i) of the first pattern does not reach the second"
    );
    assert_eq!(code(ask("start here")), (403, "pattern_blocked"));
    assert!(
        ask("do not start here").is_ok(),
        "^ anchors its own pattern only"
    );
}

#[test]
fn tags_are_checked_before_the_body_and_kept_for_the_record() {
    let c = config("");
    let mut h = head("POST", "/v1/chat/completions", Some(KEY));
    h.tags = Some(b"team=search, feature=summarize");
    let mut seen = Seen::default();
    assert_eq!(
        before_body(&c, &h, &not_frozen, &mut seen),
        Ok(Next::ReadBody)
    );
    assert_eq!(
        seen.tags,
        vec![
            ("team".to_string(), "search".to_string()),
            ("feature".to_string(), "summarize".to_string())
        ]
    );
    h.tags = Some(b"team=search,bad tag=1");
    let e = stage1(&c, &h).unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "invalid_request"));
    assert!(e.message().contains("\"bad tag=1\""), "{}", e.message());
}

#[test]
fn the_end_user_comes_from_the_header_else_the_body_and_is_charged() {
    let c = config("user_budget = { limit_usd = 1.0, period = \"day\" }");
    let body_user = r#"{"model":"gpt-4o-mini","user":"bob","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let run = |header: Option<&'static [u8]>, body: &str, endpoint: Endpoint| {
        let mut seen = Seen::default();
        let a = decide(
            &c,
            &Facts {
                user_header: header,
                endpoint,
                project: 0,
                body: body.as_bytes(),
                pick: 0,
                usable: &all_up,
            },
            &mut seen,
        );
        (a, seen.user)
    };
    let (a, user) = run(None, body_user, Endpoint::ChatCompletions);
    assert_eq!(user.as_deref(), Some("bob"));
    let a = a.unwrap();
    let u = a
        .accounts
        .iter()
        .find(|x| x.kind == crate::engine::accounts::AccountKind::User)
        .expect("the user is charged");
    assert_eq!(
        (&*u.name, u.window.map(|w| w.period)),
        ("user:p/bob", Some(crate::engine::budget::Period::Day))
    );
    let (_, user) = run(Some(b"carol"), body_user, Endpoint::ChatCompletions);
    assert_eq!(user.as_deref(), Some("carol"), "the header wins");
    let anthropic = r#"{"model":"claude-sonnet-4","max_tokens":10,"metadata":{"user_id":"dave"},"messages":[{"role":"user","content":"hi"}]}"#;
    let (a, user) = run(None, anthropic, Endpoint::Messages);
    assert_eq!(user.as_deref(), Some("dave"));
    assert!(a.is_ok());
    let odd = r#"{"model":"gpt-4o-mini","user":{"id":1},"max_tokens":10,"messages":[]}"#;
    let (a, user) = run(None, odd, Endpoint::ChatCompletions);
    assert_eq!(user, None, "a user that is not a string is no user");
    assert!(a
        .unwrap()
        .accounts
        .iter()
        .all(|x| x.kind != crate::engine::accounts::AccountKind::User));
    let (a, _) = run(Some(b"a\x01b"), body_user, Endpoint::ChatCompletions);
    assert_eq!(a.unwrap_err().status(), 400);
}
