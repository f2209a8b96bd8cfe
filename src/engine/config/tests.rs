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
    assert_eq!(c.project_for_digest(&plain), Some((0, 0)));
    let listed = crate::engine::auth::parse_hex_digest(
        "7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c",
    )
    .unwrap();
    assert_eq!(c.project_for_digest(&listed), Some((0, 1)));
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
    let c = parse_with_files(text, "main.toml", &env_all, &read, &|_| Vec::new()).unwrap();
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
        &|_| Vec::new(),
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

/// Every message of every section, pinned as one report: the text users and scripts see.
#[test]
fn the_report_of_every_kind_of_problem_is_unchanged() {
    let text = r#"
[server]
listen = "nowhere"
admin_listen = "127.0.0.1"
admin_token_env = ""
max_body_bytes = 0
threads = 5000
grace_period_s = -1
circuit_failures = 1001
circuit_cooldown_ms = 0

[store]
path = ""
flush_interval_ms = 60001

[[providers]]
name = ""
kind = "azure"
base_url = "ftp://x"
api_key_env = "NOT_SET"
connect_timeout_ms = 0
read_timeout_ms = 3600001

[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1"

[[providers]]
name = "a"
kind = "anthropic"
base_url = "http://127.0.0.1:2"

[[routes]]
prefix = ""
provider = "a"

[[routes]]
prefix = "x"
provider = "a"
targets = [{ provider = "a" }]

[[routes]]
prefix = "x"
targets = []
retries = 11

[[routes]]
prefix = "y"
targets = [{ provider = "b", weight = 0 }]
fallbacks = ["c"]

[prices.""]
input = 1.0
output = 1.0

[prices."m"]
input = 1.0
output = 2000000.0
cache_read = -1.0
max_output_tokens = 0

[[projects]]
id = "bad id"
keys = ["short", "has a space in it!", "sha256:abc", "tg_valid_key_000001", "tg_valid_key_000001"]
budget = { limit_usd = -1.0, period = "year" }
rate_limit = { rpm = 0, tpm = -5 }
allow_models = [""]
deny_models = ["", "ok"]
max_tokens = 0
block_patterns = ["(", "[z-a]"]
unpriced = "sometimes"

[[projects]]
id = "bad id"

[[projects]]
id = ""
"#;
    let report = parse(text, "all.toml", &env_all).unwrap_err().to_string();
    assert_eq!(
        report, GOLDEN,
        "a split of the validator must not change what users read"
    );
}

const GOLDEN: &str = r#"all.toml: 47 errors in the configuration
  all.toml:3:10: server.listen: "nowhere" is not an IP:port address (e.g. "127.0.0.1:8080")
  all.toml:4:16: server.admin_listen: "127.0.0.1" is not an IP:port address (e.g. "127.0.0.1:8080")
  all.toml:5:19: server.admin_token_env: must name an environment variable
  all.toml:6:18: server.max_body_bytes: must be between 1 and 1073741824, got 0
  all.toml:7:11: server.threads: must be between 1 and 1024, got 5000
  all.toml:8:18: server.grace_period_s: must be between 1 and 86400, got -1
  all.toml:9:20: server.circuit_failures: must be between 1 and 1000, got 1001
  all.toml:10:23: server.circuit_cooldown_ms: must be between 1 and 3600000, got 0
  all.toml:13:8: store.path: must not be empty
  all.toml:14:21: store.flush_interval_ms: must be between 1 and 60000, got 60001
  all.toml:17:8: providers[0].name: must not be empty
  all.toml:18:8: providers[0].kind: unknown kind "azure" (expected "openai" or "anthropic")
  all.toml:19:12: providers[0].base_url: base_url "ftp://x" must start with http:// or https://
  all.toml:20:15: providers[0].api_key_env: environment variable NOT_SET is not set (provider "" needs its key there)
  all.toml:21:22: providers[0].connect_timeout_ms: must be between 1 and 600000, got 0
  all.toml:22:19: providers[0].read_timeout_ms: must be between 1 and 3600000, got 3600001
  all.toml:30:8: providers[2].name: duplicate provider name "a" (first at providers[1])
  all.toml:35:10: routes[0].prefix: must not be empty
  all.toml:40:12: routes[1]: give either `provider` or `targets`, not both
  all.toml:44:10: routes[2].prefix: duplicate prefix "x" (first at routes[1])
  all.toml:45:11: routes[2].targets: must name at least one provider
  all.toml:46:11: routes[2].retries: must be between 1 and 10, got 11
  all.toml:50:25: routes[3].targets[0].provider: unknown provider "b" (known: , a, a)
  all.toml:50:25: routes[3].targets[0].weight: must be between 1 and 1000000, got 0
  all.toml:51:14: routes[3].fallbacks[0]: unknown provider "c" (known: , a, a)
  all.toml:53:9: prices: a price needs a model name
  all.toml:57:1: prices."m".output: must be a price in USD per million tokens between 0 and 1000000, got 2000000
  all.toml:57:1: prices."m".cache_read: must be a price in USD per million tokens between 0 and 1000000, got -1
  all.toml:57:1: prices."m".max_output_tokens: must be between 1 and 100000000, got 0
  all.toml:64:6: projects[0].id: "bad id" must be non-empty and use only letters, digits, '-', '_' and '.'
  all.toml:65:9: projects[0].keys[0]: a plaintext key must be at least 16 characters, this one has 5
  all.toml:65:18: projects[0].keys[1]: a key must be printable ASCII without spaces (it travels in an HTTP header)
  all.toml:65:40: projects[0].keys[2]: a sha256: entry needs exactly 64 hex digits (see `tollgate key new`)
  all.toml:65:77: projects[0].keys[4]: duplicate key: the same key is already listed at projects[0].keys[3]
  all.toml:66:10: projects[0].budget.limit_usd: must be between 0 and 1000000000 dollars, got -1
  all.toml:66:39: projects[0].budget.period: unknown period "year" (expected day, week, month or total)
  all.toml:67:14: projects[0].rate_limit.rpm: must be positive, got 0
  all.toml:67:14: projects[0].rate_limit.tpm: must be positive, got -5
  all.toml:68:17: projects[0].allow_models[0]: must not be empty
  all.toml:69:16: projects[0].deny_models[0]: must not be empty
  all.toml:70:14: projects[0].max_tokens: must be between 1 and 100000000, got 0
  all.toml:71:19: projects[0].block_patterns[0]: bad regex: regex parse error:     (     ^ error: unclosed group
  all.toml:71:24: projects[0].block_patterns[1]: bad regex: regex parse error:     [z-a]      ^^^ error: invalid character class range, the start must be <= the end
  all.toml:72:12: projects[0].unpriced: unknown value "sometimes" (expected "block" or "allow")
  all.toml:75:6: projects[1].id: "bad id" must be non-empty and use only letters, digits, '-', '_' and '.'
  all.toml:75:6: projects[1].id: duplicate project id "bad id" (first at projects[0])
  all.toml:78:6: projects[2].id: "" must be non-empty and use only letters, digits, '-', '_' and '.'
"#;

#[test]
fn an_empty_file_gives_every_named_default() {
    let c = parse("", "t", &env_all).unwrap();
    let (s, d) = (&c.server, ServerConfig::default());
    assert_eq!(s.listen, ServerConfig::DEFAULT_LISTEN);
    assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(s.grace_period_s, 30, "SPEC: grace_period_s defaults to 30");
    assert_eq!(
        (s.upgrade_sock.as_str(), s.pid_file.as_str()),
        (d.upgrade_sock.as_str(), d.pid_file.as_str())
    );
    assert_eq!(s.circuit, d.circuit);
    assert!(s.admin_listen.is_none() && s.admin_token.is_none());
    assert_eq!(
        s.tls, None,
        "plain HTTP unless tls_cert and tls_key are set"
    );
    assert_eq!(c.store.flush_interval, StoreConfig::DEFAULT_FLUSH_INTERVAL);
    let p = parse(
        "[[providers]]\nname = \"a\"\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:1\"\n",
        "t",
        &env_all,
    )
    .unwrap();
    assert_eq!(p.providers[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(p.providers[0].read_timeout, DEFAULT_READ_TIMEOUT);
}

/// Validate with `check` standing in for the shell's reading of the TLS files.
fn parse_tls(text: &str, check: TlsCheck) -> Result<Config, ConfigErrors> {
    parse_with_files(
        text,
        "t.toml",
        &env_all,
        &|p| Err(format!("cannot read {p}")),
        check,
    )
}

#[test]
fn tls_files_both_set_are_checked_by_the_shell_and_kept_as_configured() {
    let asked = std::cell::RefCell::new(Vec::new());
    let check = |f: &TlsFiles| {
        asked.borrow_mut().push(f.clone());
        Vec::new()
    };
    let c = parse_tls(
        "[server]\ntls_cert = \"/etc/tollgate/cert.pem\"\ntls_key = \"key.pem\"\n",
        &check,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let want = TlsFiles {
        cert: "/etc/tollgate/cert.pem".into(),
        key: "key.pem".into(),
    };
    assert_eq!(c.server.tls.as_ref(), Some(&want));
    assert_eq!(*asked.borrow(), vec![want], "checked once, as configured");
}

#[test]
fn without_tls_files_nothing_is_read() {
    let check = |_: &TlsFiles| panic!("no TLS file is named, so none is read");
    let c = parse_tls("[server]\nlisten = \"127.0.0.1:0\"\n", &check).unwrap();
    assert_eq!(c.server.tls, None);
}

/// Every TLS message of the validator, pinned (the shell's own messages are tested with real
/// files in tests/tls.rs).
#[test]
fn a_tls_file_without_its_pair_or_without_a_name_is_an_error_naming_it() {
    let never = |_: &TlsFiles| panic!("an incomplete pair is not read");
    let report = |text: &str| parse_tls(text, &never).unwrap_err().to_string();
    assert_eq!(
        report("[server]\ntls_cert = \"cert.pem\"\n"),
        "t.toml: 1 error in the configuration\n  t.toml:2:12: server.tls_key: must be set too: \
         tls_cert is set, and the gateway listener also needs the certificate's private key \
         (a PEM file)\n"
    );
    assert_eq!(
        report("[server]\nthreads = 2\ntls_key = \"key.pem\"\n"),
        "t.toml: 1 error in the configuration\n  t.toml:3:11: server.tls_cert: must be set \
         too: tls_key is set, and the gateway listener also needs the certificate chain (a PEM \
         file)\n"
    );
    assert_eq!(
        report("[server]\ntls_cert = \"\"\ntls_key = \"\"\n"),
        "t.toml: 2 errors in the configuration\n  t.toml:2:12: server.tls_cert: must name a \
         PEM file\n  t.toml:3:11: server.tls_key: must name a PEM file\n"
    );
}

#[test]
fn each_problem_the_shell_finds_is_reported_at_its_files_key_with_the_others() {
    let check = |f: &TlsFiles| {
        vec![
            TlsProblem {
                part: TlsPart::Key,
                message: format!("cannot read {}: denied", f.key.display()),
            },
            TlsProblem {
                part: TlsPart::Cert,
                message: "holds no certificate".into(),
            },
        ]
    };
    let e = parse_tls(
        "[server]\ntls_key = \"k.pem\"\ntls_cert = \"c.pem\"\nthreads = 0\n",
        &check,
    )
    .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.errors.len(), 3, "{s}");
    assert!(
        s.contains("t.toml:2:11: server.tls_key: cannot read k.pem: denied"),
        "{s}"
    );
    assert!(
        s.contains("t.toml:3:12: server.tls_cert: holds no certificate"),
        "{s}"
    );
    assert!(
        s.contains("server.threads: must be between 1 and 1024"),
        "{s}"
    );
}

fn env_fleet(k: &str) -> Option<String> {
    match k {
        "TOLLGATE_REDIS_URL" => Some("redis://:s3cret-pass@10.0.0.5:6379/0".into()),
        "PLAIN_URL" => Some("http://:s3cret-pass@10.0.0.5:6379/".into()),
        "EMPTY_URL" => Some(String::new()),
        other => env_all(other),
    }
}

#[test]
fn a_fleet_section_takes_its_url_from_the_environment_and_has_defaults() {
    let c = parse("[fleet]\n", "t.toml", &env_fleet).unwrap_or_else(|e| panic!("{e}"));
    let f = c.fleet.expect("fleet mode on");
    assert_eq!(f.redis_url.expose(), "redis://:s3cret-pass@10.0.0.5:6379/0");
    assert_eq!(f.redis_url_env, "TOLLGATE_REDIS_URL");
    assert_eq!(f.instance, None, "the shell names it after host and port");
    assert_eq!(f.hold_ttl_s, FleetConfig::DEFAULT_HOLD_TTL_S);
    assert_eq!(f.timeout, FleetConfig::DEFAULT_TIMEOUT);
    assert_eq!(f.rebuild_grace, FleetConfig::DEFAULT_REBUILD_GRACE);
    assert_eq!(f.leases, FleetConfig::DEFAULT_LEASES);
    assert!(
        !format!("{f:?}").contains("s3cret"),
        "the URL may hold a password: Debug redacts it"
    );
    assert!(parse("", "t.toml", &env_fleet).unwrap().fleet.is_none());
    let c = parse(
        "[fleet]\ninstance = \"gw-a.eu_1\"\nhold_ttl_s = 60\ntimeout_ms = 5\nrebuild_grace_ms = 200\nleases = true\n",
        "t.toml",
        &env_fleet,
    )
    .unwrap();
    let f = c.fleet.unwrap();
    assert_eq!(f.instance.as_deref(), Some("gw-a.eu_1"));
    assert_eq!(
        (
            f.hold_ttl_s,
            f.timeout.as_millis(),
            f.rebuild_grace.as_millis(),
            f.leases
        ),
        (60, 5, 200, true)
    );
}

#[test]
fn fleet_problems_are_named_and_never_echo_the_url() {
    let errs = match parse(
        "[fleet]\nredis_url_env = \"PLAIN_URL\"\ninstance = \"gw a/1\"\nhold_ttl_s = 0\ntimeout_ms = 0\n",
        "t.toml",
        &env_fleet,
    ) {
        Ok(_) => panic!("rejected"),
        Err(e) => e.errors,
    };
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "fleet.redis_url_env",
        "fleet.instance",
        "fleet.hold_ttl_s",
        "fleet.timeout_ms",
    ] {
        assert!(fields.contains(&f), "{f} missing from {errs:?}");
    }
    assert!(
        errs.iter().all(|e| !e.message.contains("s3cret")),
        "a URL is never echoed: {errs:?}"
    );
    let url = errs
        .iter()
        .find(|e| e.field == "fleet.redis_url_env")
        .unwrap();
    assert_eq!(url.line, Some(2), "{url:?}");
    for (text, want) in [
        ("[fleet]\nredis_url_env = \"NOT_SET\"\n", "is not set"),
        ("[fleet]\nredis_url_env = \"EMPTY_URL\"\n", "is empty"),
        ("[fleet]\nhold_ttl_s = 604801\n", "between 1 and 604800"),
        ("[fleet]\nlease = true\n", "unknown field"),
    ] {
        let e = match parse(text, "t.toml", &env_fleet) {
            Ok(_) => panic!("{text} must be rejected"),
            Err(e) => e.errors,
        };
        assert!(
            e.iter().any(|x| x.message.contains(want)),
            "{text}: want {want:?} in {e:?}"
        );
    }
}
