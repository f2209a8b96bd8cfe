//! The command line: check, serve's refusal of a bad config, key new, --version.

mod common;

use std::process::Command;

fn tollgate(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(common::bin());
    c.args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const KEYS: [(&str, &str); 3] = [
    ("OPENAI_API_KEY", "sk-x"),
    ("ANTHROPIC_API_KEY", "sk-ant-x"),
    ("OPENAI_BACKUP_KEY", "sk-b"),
];

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_example_config_passes_check() {
    let (code, out, err) = tollgate(&["check", "--config", &repo("conf/tollgate.toml")], &KEYS);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn the_demo_config_passes_check() {
    let (code, out, err) = tollgate(
        &["check", "--config", &repo("conf/demo.toml")],
        &[("TOLLGATE_DEMO_PROVIDER_KEY", "mock-provider-key")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
}

/// README's first command, on the debug build: the demo makes its calls, checks each answer
/// (200, 403 secret_detected, 403 model_not_allowed, 402 budget_exceeded, the decision
/// records) and exits 0 only when all were as promised. It listens on the demo config's fixed
/// ports (127.0.0.1:8787 and 9797), outside the ephemeral range the other tests draw from.
#[test]
fn the_demo_shows_a_proxied_call_both_blocks_and_the_records() {
    let (code, out, err) = tollgate(&["demo", "--run"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for shown in [
        "-> 200 from provider openai",
        "-> 403 secret_detected",
        "-> 403 model_not_allowed",
        "-> 402 budget_exceeded",
        "Every answer was the expected one",
    ] {
        assert!(out.contains(shown), "the demo shows {shown:?}:\n{out}");
    }
}

#[test]
fn the_spec_example_passes_check_unchanged() {
    let (code, out, err) = tollgate(
        &[
            "check",
            "--config",
            &repo("tests/fixtures/spec-example.toml"),
        ],
        &KEYS,
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_reports_every_error_with_its_place_and_serve_refuses_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com\"\napi_key_env = \"OPENAI_API_KEY\"\n\n[[routes]]\nprefix = \"gpt-\"\nprovider = \"opena\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = tollgate(&["check", "--config", p], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad.toml:5:15: providers[0].api_key_env: environment variable OPENAI_API_KEY is not set"), "{err}");
    assert!(
        err.contains("bad.toml:9:12: routes[0].provider: unknown provider \"opena\""),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    let (scode, _, serr) = tollgate(&["serve", "--config", p], &[]);
    assert_eq!(scode, 1);
    assert_eq!(serr, err, "serve gives the message check gives");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, _, err) = tollgate(&["check", "--config", "/nonexistent/tollgate.toml"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn key_new_prints_a_key_and_its_matching_digest() {
    let (code, out, _) = tollgate(&["key", "new"], &[]);
    assert_eq!(code, 0);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let cfg = out
        .lines()
        .find_map(|l| l.strip_prefix("config:"))
        .unwrap()
        .trim();
    let digest = tollgate::hex(&tollgate::key_digest(key.as_bytes()));
    assert_eq!(cfg, format!("\"sha256:{digest}\""));
    let (_, again, _) = tollgate(&["key", "new"], &[]);
    assert_ne!(out, again, "keys are random");
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = tollgate(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

/// A config that passes `check` (with `OPENAI_API_KEY` set), with `fleet` as its `[fleet]`
/// section body; the check's exit code and stderr.
fn check_fleet(fleet: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com\"\napi_key_env = \"OPENAI_API_KEY\"\n\n[[routes]]\nprefix = \"gpt-\"\nprovider = \"openai\"\n\n[fleet]\n{fleet}"
        ),
    )
    .unwrap();
    let mut all = vec![("OPENAI_API_KEY", "sk-x")];
    all.extend_from_slice(env);
    let (code, out, err) = tollgate(&["check", "--config", path.to_str().unwrap()], &all);
    (code, format!("{out}{err}"))
}

const FLEET_URL_ENV: &str = "TG_CHECK_REDIS_URL";

#[test]
fn check_accepts_a_fleet_section_and_names_each_bad_fleet_key() {
    let good = format!(
        "redis_url_env = \"{FLEET_URL_ENV}\"\ninstance = \"gw-a\"\nhold_ttl_s = 30\ntimeout_ms = 50\nrebuild_grace_ms = 1500\nleases = false\n"
    );
    let url = [(FLEET_URL_ENV, "redis://127.0.0.1:6379/")];
    let (code, out) = check_fleet(&good, &url);
    assert_eq!(code, 0, "a valid [fleet] passes: {out}");
    assert!(out.contains("OK"), "{out}");
    assert!(
        out.contains("fleet: instance gw-a") && out.contains("a Redis hold per request"),
        "check summarises the fleet settings: {out}"
    );

    // The variable is not set.
    let (code, out) = check_fleet(&good, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fleet.redis_url_env") && out.contains(FLEET_URL_ENV),
        "names the key and the variable: {out}"
    );
    assert!(!out.contains("panicked"), "{out}");

    // Not a Redis URL, and it holds a password: named, never echoed.
    let secret = "http://admin:hunter2-s3cret@redis.internal:6379/";
    let (code, out) = check_fleet(&good, &[(FLEET_URL_ENV, secret)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fleet.redis_url_env"), "{out}");
    assert!(
        out.contains("redis://"),
        "says what it must look like: {out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("redis.internal"),
        "the value is not echoed: {out}"
    );

    for (bad, key, says) in [
        (
            good.replace("instance = \"gw-a\"", "instance = \"gw a/1\""),
            "fleet.instance",
            "letters, digits",
        ),
        (
            good.replace("hold_ttl_s = 30", "hold_ttl_s = 0"),
            "fleet.hold_ttl_s",
            "between 1 and",
        ),
        (
            good.replace("rebuild_grace_ms = 1500", "rebuild_grace_ms = 0"),
            "fleet.rebuild_grace_ms",
            "between 1 and",
        ),
    ] {
        let (code, out) = check_fleet(&bad, &url);
        assert_eq!(code, 1, "{key}: {out}");
        assert!(out.contains(key), "names {key}: {out}");
        assert!(out.contains(says), "{key}: says {says:?}: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}
