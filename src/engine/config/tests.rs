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
    // Project 0's second key, the plaintext one; the sha256: entry is its first.
    assert_eq!(c.project_for_digest(&plain), Some((0, 1)));
    let listed = crate::engine::auth::parse_hex_digest(
        "7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c",
    )
    .unwrap();
    assert_eq!(c.project_for_digest(&listed), Some((0, 0)));
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

// ---- Budgets everywhere the money is: teams, windows, key tables, end users ----

use crate::engine::auth::{hex, key_digest, parse_hex_digest};
use crate::engine::budget::{Budget, Period};
use crate::engine::pricing::Nanos;

fn window(usd: f64, period: Period) -> Budget {
    Budget {
        limit: Nanos::from_usd(usd).unwrap(),
        period,
    }
}

/// What the default name of a plaintext key is: the first 8 hex digits of its SHA-256.
fn default_name(key: &str) -> String {
    hex(&key_digest(key.as_bytes())[..4])
}

/// The SPEC's example of "Budgets everywhere the money is", with a real digest for its `…`, and
/// a second team and project around it.
const BUDGETS_EXAMPLE: &str = r#"
[[teams]]
id = "payments"                                   # a budget shared by several projects
budget = { limit_usd = 500.0, period = "month" }
budgets = [{ limit_usd = 40.0, period = "day" }]

[[teams]]
id = "search"

[[projects]]
id = "checkout-bot"
team = "payments"
budgets = [{ limit_usd = 50.0, period = "month" }, { limit_usd = 5.0, period = "day" }]   # several windows at once
keys = [
  "sha256:7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c",
  { key = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", name = "ci", budget = { limit_usd = 10.0, period = "week" }, expires = "2027-03-31T00:00:00Z" },
  { key = "tg_unquoted_expiry_01", expires = 2027-03-31T02:00:00.250+02:00 },
]
user_budget = { limit_usd = 2.0, period = "day" } # each end user of this project, separately

[[projects]]
id = "search-bot"
team = "search"
budget = { limit_usd = 1.0, period = "total" }
budgets = [{ limit_usd = 0.5, period = "week" }]
keys = [{ key = "tg_search_key_000001", name = "ci" }]    # a key name is unique in its project only

[[projects]]
id = "alone"
keys = ["tg_alone_key_0000001"]
"#;

#[test]
fn teams_windows_key_tables_and_user_budgets_load_into_the_runtime_values() {
    let c = parse(BUDGETS_EXAMPLE, "b.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.teams,
        vec![
            Team {
                id: "payments".into(),
                budgets: vec![window(500.0, Period::Month), window(40.0, Period::Day)],
            },
            Team {
                id: "search".into(),
                budgets: vec![],
            },
        ]
    );
    assert_eq!(c.teams.iter().position(|t| t.id == "search"), Some(1));

    let p = &c.projects[0];
    assert_eq!(p.team, Some(0));
    assert_eq!(
        p.budgets,
        vec![window(50.0, Period::Month), window(5.0, Period::Day)]
    );
    assert_eq!(p.user_budget, Some(window(2.0, Period::Day)));
    let expires = Some(1_806_451_200); // 2027-03-31T00:00:00Z
    assert_eq!(
        p.keys,
        vec![
            ProjectKey {
                name: "7b04a5b5".into(),
                budget: None,
                expires: None,
            },
            ProjectKey {
                name: "ci".into(),
                budget: Some(window(10.0, Period::Week)),
                expires,
            },
            ProjectKey {
                name: default_name("tg_unquoted_expiry_01"),
                budget: None,
                expires, // an unquoted TOML date-time, its fraction of a second dropped
            },
        ]
    );
    let digest = |hex: &str| parse_hex_digest(hex).unwrap();
    assert_eq!(
        c.project_for_digest(&digest(
            "7b04a5b57435cbc665da4ac338096b9f1040b0882887f54e0e21451b3edb0e0c"
        )),
        Some((0, 0))
    );
    assert_eq!(
        c.project_for_digest(&digest(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )),
        Some((0, 1))
    );
    assert_eq!(
        c.project_for_digest(&key_digest(b"tg_unquoted_expiry_01")),
        Some((0, 2))
    );

    let s = &c.projects[1];
    assert_eq!(s.team, Some(1));
    assert_eq!(
        s.budgets,
        vec![window(1.0, Period::Total), window(0.5, Period::Week)],
        "`budget` first, then `budgets` in order"
    );
    assert_eq!(s.keys[0].name, "ci");
    assert_eq!(
        c.project_for_digest(&key_digest(b"tg_search_key_000001")),
        Some((1, 0))
    );

    let a = &c.projects[2];
    assert_eq!((a.team, a.user_budget), (None, None));
    assert!(a.budgets.is_empty());
    assert_eq!(a.keys[0].name, default_name("tg_alone_key_0000001"));
    assert_eq!(c.key_count(), 5);
}

#[test]
fn the_old_single_budget_is_one_window_and_string_keys_get_default_names() {
    let c = parse(SPEC_EXAMPLE, "spec.toml", &env_all).unwrap();
    assert!(c.teams.is_empty());
    let p = &c.projects[0];
    assert_eq!(p.budgets, vec![window(50.0, Period::Month)]);
    assert_eq!((p.team, p.user_budget), (None, None));
    let names: Vec<&str> = p.keys.iter().map(|k| k.name.as_str()).collect();
    let plain = default_name("tg_dev_plaintext_key_only_for_local_use");
    assert_eq!(names, ["7b04a5b5", plain.as_str()]);
    assert!(p
        .keys
        .iter()
        .all(|k| k.budget.is_none() && k.expires.is_none()));
}

#[test]
fn keys_may_be_written_as_an_array_of_tables() {
    let text = r#"
[[projects]]
id = "p"
[[projects.keys]]
key = "tg_table_key_0000001"
name = "batch"
[[projects.keys]]
key = "tg_table_key_0000002"
expires = 2027-03-31T00:00:00Z
"#;
    let c = parse(text, "t.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.projects[0].keys[0].name, "batch");
    assert_eq!(c.projects[0].keys[1].expires, Some(1_806_451_200));
}

#[test]
fn a_fresh_key_from_key_new_is_accepted_in_both_forms() {
    let (key, sha) = crate::new_key().unwrap();
    let text = format!(
        "[[projects]]\nid = \"a\"\nkeys = [\"{key}\"]\n[[projects]]\nid = \"b\"\nkeys = [{{ key = \"{}\", name = \"ci\" }}]\n",
        // Another fresh key's digest form, in a key table.
        crate::new_key().unwrap().1
    );
    let c = parse(&text, "t.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.project_for_digest(&key_digest(key.as_bytes())),
        Some((0, 0))
    );
    let hex_part = sha.strip_prefix("sha256:").unwrap();
    assert_eq!(c.projects[0].keys[0].name, hex_part[..8]);
    assert_eq!(c.projects[1].keys[0].name, "ci");
}

/// The one error of `text`, as `line:col: field: message`.
fn only_error(text: &str) -> String {
    let errs = errors_of(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    format!(
        "{}:{}: {}: {}",
        e.line.unwrap(),
        e.col.unwrap(),
        e.field,
        e.message
    )
}

#[test]
fn an_unknown_team_is_named_at_its_value() {
    let text = "[[teams]]\nid = \"payments\"\n[[teams]]\nid = \"search\"\n\n[[projects]]\nid = \"p\"\nteam = \"paymnts\"\n";
    assert_eq!(
        only_error(text),
        "8:8: projects[0].team: unknown team \"paymnts\" (known: payments, search)"
    );
    assert_eq!(
        only_error("[[projects]]\nid = \"p\"\nteam = \"x\"\n"),
        "3:8: projects[0].team: unknown team \"x\" (known: none defined)"
    );
}

#[test]
fn team_ids_follow_the_project_id_rule_and_are_unique() {
    let text = "[[teams]]\nid = \"payments\"\n[[teams]]\nid = \"payments\"\n[[teams]]\nid = \"has space\"\n";
    let errs = errors_of(text);
    let got: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}: {}", e.line.unwrap(), e.field, e.message))
        .collect();
    assert_eq!(
        got,
        [
            "4: teams[1].id: duplicate team id \"payments\" (first at teams[0])",
            "6: teams[2].id: \"has space\" must be non-empty and use only letters, digits, '-', '_' and '.'",
        ]
    );
}

#[test]
fn a_period_may_have_one_window_per_project_and_per_team() {
    let text = r#"
[[teams]]
id = "t"
budget = { limit_usd = 5.0, period = "day" }
budgets = [{ limit_usd = 50.0, period = "month" }, { limit_usd = 6.0, period = "day" }]

[[projects]]
id = "p"
budget = { limit_usd = 5.0, period = "week" }
budgets = [{ limit_usd = 4.0, period = "week" }, { limit_usd = 1.0, period = "year" }]
"#;
    let errs = errors_of(text);
    let got: Vec<String> = errs
        .iter()
        .map(|e| {
            format!(
                "{}:{}: {}: {}",
                e.line.unwrap(),
                e.col.unwrap(),
                e.field,
                e.message
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "5:80: teams[0].budgets[1].period: two windows of period day: a period may have one limit (first at teams[0].budget)",
            "10:40: projects[0].budgets[0].period: two windows of period week: a period may have one limit (first at projects[0].budget)",
            "10:78: projects[0].budgets[1].period: unknown period \"year\" (expected day, week, month or total)",
        ]
    );
    // The same period in a project and in its team, or in a key's budget, is no conflict.
    let ok = "[[teams]]\nid = \"t\"\nbudget = { limit_usd = 5.0, period = \"day\" }\n[[projects]]\nid = \"p\"\nteam = \"t\"\nbudget = { limit_usd = 1.0, period = \"day\" }\nuser_budget = { limit_usd = 1.0, period = \"day\" }\nkeys = [{ key = \"tg_some_key_00000001\", budget = { limit_usd = 1.0, period = \"day\" } }]\n";
    parse(ok, "t.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_key_table_without_key_is_reported_at_the_table() {
    let text = "[[projects]]\nid = \"p\"\nkeys = [\"tg_some_key_00000001\", { name = \"ci\" }]\n";
    assert_eq!(
        only_error(text),
        "3:33: projects[0].keys[1]: a key table needs `key` (the key itself, or its sha256: form)"
    );
}

#[test]
fn a_key_tables_own_values_are_checked_at_their_places() {
    let text = r#"
[[projects]]
id = "p"
keys = [
  { key = "short", name = "has space", budget = { limit_usd = -1.0, period = "fortnight" } },
  { key = "sha256:abc" },
  { key = "tg_name_too_long_0001", name = "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" },
]
user_budget = { limit_usd = 1.0, period = "hour" }
"#;
    let report = parse(text, "k.toml", &env_all).unwrap_err().to_string();
    assert_eq!(
        report,
        r#"k.toml: 7 errors in the configuration
  k.toml:5:11: projects[0].keys[0].key: a plaintext key must be at least 16 characters, this one has 5
  k.toml:5:27: projects[0].keys[0].name: "has space" must be 1 to 64 characters, each a letter, digit, '-', '_' or '.'
  k.toml:5:49: projects[0].keys[0].budget.limit_usd: must be between 0 and 1000000000 dollars, got -1
  k.toml:5:78: projects[0].keys[0].budget.period: unknown period "fortnight" (expected day, week, month or total)
  k.toml:6:11: projects[0].keys[1].key: a sha256: entry needs exactly 64 hex digits (see `tollgate key new`)
  k.toml:7:43: projects[0].keys[2].name: "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" must be 1 to 64 characters, each a letter, digit, '-', '_' or '.'
  k.toml:9:43: projects[0].user_budget.period: unknown period "hour" (expected day, week, month or total)
"#
    );
    // 64 characters is the longest name.
    let ok = format!(
        "[[projects]]\nid = \"p\"\nkeys = [{{ key = \"tg_name_64_long_0001\", name = \"{}\" }}]\n",
        "n".repeat(64)
    );
    parse(&ok, "t.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_fields_of_a_key_table_and_of_a_team_are_refused() {
    let errs = errors_of(
        "[[projects]]\nid = \"p\"\nkeys = [{ key = \"tg_some_key_00000001\", nmae = \"ci\" }]\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].message.contains("unknown field `nmae`"), "{errs:?}");
    assert_eq!(errs[0].line, Some(3));
    let errs = errors_of("[[teams]]\nid = \"t\"\nlimit_usd = 5.0\n");
    assert!(
        errs[0].message.contains("unknown field `limit_usd`"),
        "{errs:?}"
    );
    assert_eq!(errs[0].line, Some(3));
    let errs = errors_of("[[projects]]\nid = \"p\"\nkeys = [5]\n");
    assert!(
        errs[0].message.contains("a key string, or a table"),
        "{errs:?}"
    );
}

#[test]
fn key_names_are_unique_in_a_project_whether_given_or_default() {
    let plain = "tg_some_key_00000001";
    let text = format!(
        r#"[[projects]]
id = "p"
keys = [
  {{ key = "tg_first_key_0000001", name = "ci" }},
  {{ key = "tg_second_key_000001", name = "ci" }},
  "{plain}",
  {{ key = "tg_third_key_0000001", name = "{d}" }},
]
"#,
        d = default_name(plain)
    );
    let errs = errors_of(&text);
    let got: Vec<String> = errs
        .iter()
        .map(|e| {
            format!(
                "{}:{}: {}: {}",
                e.line.unwrap(),
                e.col.unwrap(),
                e.field,
                e.message
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "5:42: projects[0].keys[1].name: duplicate key name \"ci\" (first at projects[0].keys[0])".to_string(),
            format!(
                "7:42: projects[0].keys[3].name: duplicate key name \"{}\" (first at projects[0].keys[2])",
                default_name(plain)
            ),
        ]
    );
    // A default name repeating an earlier given name is reported at the key.
    let text = format!(
        "[[projects]]\nid = \"p\"\nkeys = [{{ key = \"tg_third_key_0000001\", name = \"{}\" }}, \"{plain}\"]\n",
        default_name(plain)
    );
    let e = only_error(&text);
    assert!(
        e.starts_with("3:62: projects[0].keys[1]: duplicate key name")
            && e.ends_with("give it a `name`"),
        "{e}"
    );
}

#[test]
fn the_same_key_twice_is_one_duplicate_key_error_whatever_its_form() {
    let d = hex(&key_digest(b"tg_key_number_one_0001"));
    let text = format!(
        "[[projects]]\nid = \"a\"\nkeys = [{{ key = \"tg_key_number_one_0001\", name = \"x\" }}]\n[[projects]]\nid = \"b\"\nkeys = [{{ key = \"sha256:{d}\", name = \"y\" }}, \"tg_key_number_one_0001\"]\n"
    );
    let errs = errors_of(&text);
    let got: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}: {}", e.line.unwrap(), e.field, e.message))
        .collect();
    assert_eq!(
        got,
        [
            "6: projects[1].keys[0].key: duplicate key: the same key is already listed at projects[0].keys[0]",
            "6: projects[1].keys[1]: duplicate key: the same key is already listed at projects[0].keys[0]",
        ],
        "a repeated key is not also reported as a repeated default name"
    );
}

#[test]
fn expires_must_be_an_rfc3339_time_with_an_offset() {
    let at = |v: &str| {
        format!("[[projects]]\nid = \"p\"\nkeys = [{{ key = \"tg_some_key_00000001\", expires = {v} }}]\n")
    };
    for (v, secs) in [
        ("\"2027-03-31T00:00:00Z\"", 1_806_451_200),
        ("\"2027-03-31T01:00:00.5+01:00\"", 1_806_451_200),
        ("\"2027-03-30T20:00:00-04:00\"", 1_806_451_200),
        ("2027-03-31T00:00:00Z", 1_806_451_200),
        ("2027-03-31 00:00:00z", 1_806_451_200),
    ] {
        let c = parse(&at(v), "t.toml", &env_all).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(c.projects[0].keys[0].expires, Some(secs), "{v}");
    }
    let example = "(e.g. \"2027-03-31T00:00:00Z\" or \"2027-03-31T00:00:00+02:00\")";
    for (v, message) in [
        (
            "\"2027-03-31\"",
            format!("\"2027-03-31\" is not an RFC 3339 time {example}"),
        ),
        (
            "\"2027-03-31T00:00:00\"",
            format!("\"2027-03-31T00:00:00\" is not an RFC 3339 time {example}"),
        ),
        (
            "\"31/03/2027\"",
            format!("\"31/03/2027\" is not an RFC 3339 time {example}"),
        ),
        (
            "\"2027-02-30T00:00:00Z\"",
            format!("\"2027-02-30T00:00:00Z\" is not an RFC 3339 time {example}"),
        ),
        (
            "2027-03-31T00:00:00",
            format!("2027-03-31T00:00:00 is not an RFC 3339 time: it needs a date, a time and an offset, Z or ±HH:MM {example}"),
        ),
        (
            "2027-03-31",
            format!("2027-03-31 is not an RFC 3339 time: it needs a date, a time and an offset, Z or ±HH:MM {example}"),
        ),
        (
            "1806451200",
            format!("an integer is not an RFC 3339 time {example}"),
        ),
    ] {
        assert_eq!(
            only_error(&at(v)),
            format!("3:51: projects[0].keys[0].expires: {message}"),
            "{v}"
        );
    }
}

/// SPEC: `tollgate check` reports every mistake with its place, all in one run.
#[test]
fn every_mistake_of_teams_and_keys_is_reported_at_once_with_its_place() {
    let text = r#"
[[teams]]
id = "payments"
budgets = [{ limit_usd = 500.0, period = "month" }, { limit_usd = 600.0, period = "month" }]

[[teams]]
id = "payments"

[[projects]]
id = "checkout-bot"
team = "paymnts"
keys = [
  { name = "no-key", budget = { limit_usd = 10.0, period = "week" } },
  { key = "tg_ci_key_0123456789", name = "ci", expires = "2027-03-31" },
  { key = "tg_other_key_0123456", name = "ci" },
]
budget = { limit_usd = 50.0, period = "day" }
budgets = [{ limit_usd = 5.0, period = "day" }]
"#;
    let report = parse(text, "many.toml", &env_all).unwrap_err().to_string();
    assert_eq!(
        report,
        r#"many.toml: 7 errors in the configuration
  many.toml:4:83: teams[0].budgets[1].period: two windows of period month: a period may have one limit (first at teams[0].budgets[0])
  many.toml:7:6: teams[1].id: duplicate team id "payments" (first at teams[0])
  many.toml:11:8: projects[0].team: unknown team "paymnts" (known: payments, payments)
  many.toml:13:3: projects[0].keys[0]: a key table needs `key` (the key itself, or its sha256: form)
  many.toml:14:58: projects[0].keys[1].expires: "2027-03-31" is not an RFC 3339 time (e.g. "2027-03-31T00:00:00Z" or "2027-03-31T00:00:00+02:00")
  many.toml:15:42: projects[0].keys[2].name: duplicate key name "ci" (first at projects[0].keys[1])
  many.toml:18:40: projects[0].budgets[0].period: two windows of period day: a period may have one limit (first at projects[0].budget)
"#
    );
}

/// Issue 16: `report_cost` is an opt-in boolean of a project; anything but a boolean is an
/// error at its place.
#[test]
fn report_cost_is_off_unless_a_project_turns_it_on_and_must_be_a_boolean() {
    let two = "[[projects]]\nid = \"a\"\nkeys = [\"tg_key_a_0123456789\"]\nreport_cost = true\n\
               [[projects]]\nid = \"b\"\nkeys = [\"tg_key_b_0123456789\"]\n";
    let cfg = parse(two, "t.toml", &env_all).expect("valid");
    assert!(cfg.projects[0].report_cost, "turned on");
    assert!(!cfg.projects[1].report_cost, "off by default");
    let errs = errors_of(
        "[[projects]]\nid = \"a\"\nkeys = [\"tg_key_a_0123456789\"]\nreport_cost = \"yes\"\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, Some(4), "{errs:?}");
    assert!(errs[0].message.contains("bool"), "{errs:?}");
}
