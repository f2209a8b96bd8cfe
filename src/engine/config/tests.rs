use super::*;

const SPEC_EXAMPLE: &str = include_str!("../../../tests/fixtures/spec-example.toml");

fn env_all(k: &str) -> Option<String> {
    match k {
        "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" | "OPENAI_BACKUP_KEY" => {
            Some(format!("secret-of-{k}"))
        }
        "TOLLGATE_ADMIN_TOKEN" => Some("admin".into()),
        _ => None,
    }
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(text, "t.toml", &env_all) {
        Ok(_) => panic!("config should have been rejected"),
        Err(e) => e.errors,
    }
}

#[test]
fn the_spec_example_loads_unchanged() {
    let c = parse(SPEC_EXAMPLE, "spec.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 4_194_304);
    assert_eq!(c.server.grace_period_s, 30);
    assert_eq!(c.providers.len(), 4);
    assert_eq!(c.routes.routes().len(), 4);
    assert_eq!(c.projects[0].id, "checkout-bot");
    assert_eq!(c.key_count(), 2);
    let ha = c.routes.lookup("openai-ha/gpt-4o").unwrap();
    assert_eq!(ha.targets.len(), 2);
    assert_eq!(
        ha.fallbacks,
        vec![c.provider_index("openai-backup").unwrap()]
    );
    assert_eq!(ha.retries, 1);
    assert_eq!(
        c.prices.lookup("gpt-4o-mini").unwrap().1.max_output_tokens,
        Some(16384)
    );
}

#[test]
fn the_sha256_form_and_the_plaintext_form_both_find_the_project() {
    let c = parse(SPEC_EXAMPLE, "spec.toml", &env_all).unwrap();
    let plain = crate::engine::auth::key_digest(b"tg_dev_plaintext_key_only_for_local_use");
    assert_eq!(c.project_for_digest(&plain), Some(0));
    let listed = crate::engine::auth::parse_hex_digest(
        "7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c",
    )
    .unwrap();
    assert_eq!(c.project_for_digest(&listed), Some(0));
    // The sha256:... string itself is not a key.
    let as_key = crate::engine::auth::key_digest(
        b"sha256:7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c",
    );
    assert_eq!(c.project_for_digest(&as_key), None);
}

#[test]
fn provider_secrets_come_from_the_environment_and_never_print() {
    let c = parse(SPEC_EXAMPLE, "spec.toml", &env_all).unwrap();
    let openai = &c.providers[c.provider_index("openai").unwrap()];
    assert_eq!(
        openai.credential.as_ref().unwrap().expose(),
        "secret-of-OPENAI_API_KEY"
    );
    assert!(
        !format!("{c:?}").contains("secret-of-"),
        "Debug must redact secrets"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let text = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com"
api_key_env = "NOT_SET_ANYWHERE"

[[routes]]
prefix = "gpt-"
provider = "opena"

[[projects]]
id = "p"
keys = ["tg_key_number_one_0001", "tg_key_number_one_0001"]
block_patterns = ["(unclosed"]
"#;
    let errs = errors_of(text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"providers[0].api_key_env"), "{errs:?}");
    assert!(fields.contains(&"routes[0].provider"), "{errs:?}");
    assert!(fields.contains(&"projects[0].keys[1]"), "{errs:?}");
    assert!(
        fields.contains(&"projects[0].block_patterns[0]"),
        "{errs:?}"
    );
    let route_err = errs
        .iter()
        .find(|e| e.field == "routes[0].provider")
        .unwrap();
    assert_eq!(
        route_err.line,
        Some(10),
        "the line of `provider = \"opena\"`"
    );
    assert!(route_err.message.contains("known: openai"));
}

#[test]
fn a_key_listed_in_plaintext_and_as_its_digest_is_a_duplicate() {
    let d = crate::engine::auth::hex(&crate::engine::auth::key_digest(b"tg_key_number_one_0001"));
    let text = format!(
        "[[projects]]\nid = \"a\"\nkeys = [\"tg_key_number_one_0001\"]\n[[projects]]\nid = \"b\"\nkeys = [\"sha256:{d}\"]\n"
    );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "projects[1].keys[0]");
    assert!(errs[0].message.contains("projects[0].keys[0]"));
}

#[test]
fn unknown_fields_are_errors_with_a_place() {
    let errs = errors_of("[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains("unknown field `listne`"),
        "{errs:?}"
    );
    assert_eq!(errs[0].line, Some(3));
}

#[test]
fn syntax_errors_have_a_place() {
    let errs = errors_of("[server\nlisten = 1\n");
    assert_eq!(errs[0].line, Some(1), "{errs:?}");
}

#[test]
fn bad_values_are_named() {
    let text = r#"
[server]
listen = "localhost"
max_body_bytes = 0
[[providers]]
name = "x"
kind = "azure"
base_url = "api.example.com"
[[routes]]
prefix = "a"
[[routes]]
prefix = "b"
targets = [{ provider = "x", weight = 0 }]
fallbacks = ["nope"]
[prices."m"]
input = -1.0
output = 1.0
[[projects]]
id = "bad id"
keys = ["short"]
budget = { limit_usd = 5.0, period = "year" }
unpriced = "maybe"
"#;
    let errs = errors_of(text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "server.listen",
        "server.max_body_bytes",
        "providers[0].kind",
        "providers[0].base_url",
        "routes[0]",
        "routes[1].targets[0].weight",
        "routes[1].fallbacks[0]",
        "prices.\"m\".input",
        "projects[0].id",
        "projects[0].keys[0]",
        "projects[0].budget.period",
        "projects[0].unpriced",
    ] {
        assert!(fields.contains(&f), "missing {f} in {fields:?}");
    }
    assert!(
        errs.iter().all(|e| e.line.is_some()),
        "every error has a line: {errs:?}"
    );
}

#[test]
fn an_unset_admin_token_variable_disables_admin_instead_of_failing() {
    let c = parse("[server]\nadmin_token_env = \"NOPE\"\n", "t", &env_all).unwrap();
    assert!(c.server.admin_token.is_none());
    let c = parse(
        "[server]\nadmin_token_env = \"TOLLGATE_ADMIN_TOKEN\"\n",
        "t",
        &env_all,
    )
    .unwrap();
    assert_eq!(c.server.admin_token.unwrap().expose(), "admin");
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let c = parse("", "t", &env_all).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.threads, 2);
    assert_eq!(c.store.path, std::path::PathBuf::from("data/tollgate.db"));
}

#[test]
fn the_error_report_names_file_line_and_field() {
    let e = parse(
        "[[routes]]\nprefix = \"x\"\nprovider = \"y\"\n",
        "conf.toml",
        &env_all,
    )
    .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("conf.toml:3:12: routes[0].provider: unknown provider \"y\""),
        "{s}"
    );
}

#[test]
fn price_files_are_merged_under_the_files_own_prices() {
    let read = |p: &str| -> Result<(String, String), String> {
        match p {
            "prices.toml" => Ok((
                "prices.toml".into(),
                "[prices.\"gpt-4o-mini\"]\ninput = 0.15\noutput = 0.6\n[prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n".into(),
            )),
            "bad.toml" => Ok(("bad.toml".into(), "\n[prices.\"x\"]\ninput = -1.0\noutput = 1.0\n".into())),
            other => Err(format!("cannot read {other}")),
        }
    };
    let text = "price_files = [\"prices.toml\"]\n[prices.\"gpt-4o\"]\ninput = 5.0\noutput = 20.0\n";
    let c = parse_with_files(text, "main.toml", &env_all, &read).unwrap();
    assert_eq!(
        c.prices.lookup("gpt-4o-mini").unwrap().1.input,
        150_000,
        "from the price file"
    );
    assert_eq!(
        c.prices.lookup("gpt-4o").unwrap().1.input,
        5_000_000,
        "the main file wins"
    );

    let e = parse_with_files(
        "price_files = [\"bad.toml\", \"missing.toml\"]\n",
        "main.toml",
        &env_all,
        &read,
    )
    .unwrap_err();
    let s = e.to_string();
    assert!(s.contains("bad.toml:2:1: prices.\"x\".input"), "{s}");
    assert!(
        s.contains("main.toml:1:28: price_files[1]: cannot read missing.toml"),
        "{s}"
    );
}

#[test]
fn circuit_settings_default_and_are_validated() {
    let c = parse(SPEC_EXAMPLE, "spec.toml", &env_all).unwrap();
    assert_eq!(
        c.server.circuit,
        crate::engine::circuit::CircuitParams::default()
    );
    let text = SPEC_EXAMPLE.replacen(
        "[server]\n",
        "[server]\ncircuit_failures = 2\ncircuit_cooldown_ms = 500\n",
        1,
    );
    let c = parse(&text, "t.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.circuit.failures, 2);
    assert_eq!(c.server.circuit.cooldown_ms, 500);
    let bad = SPEC_EXAMPLE.replacen(
        "[server]\n",
        "[server]\ncircuit_failures = 0\ncircuit_cooldown_ms = -1\n",
        1,
    );
    let fields: Vec<String> = errors_of(&bad).into_iter().map(|e| e.field).collect();
    assert!(
        fields.contains(&"server.circuit_failures".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"server.circuit_cooldown_ms".to_string()),
        "{fields:?}"
    );
}
