//! TLS on the gateway listener (`server.tls_cert`, `server.tls_key`), through the real binary:
//! HTTPS to the mock provider with the test CA trusted, plain HTTP refused, `check` and
//! `serve` refusing a bad or incomplete pair with its place in the file, and a reload that
//! swaps in a renewed certificate (refusing a bad one) while the admin listener stays plain
//! HTTP. The certificates are made at test time with the `openssl` CLI (tests/run-all.sh
//! installs it): a CA and, signed by it, a leaf for 127.0.0.1, all ECDSA P-256 (fast).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;

use common::*;

/// Run `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed to make the test certificates (tests/run-all.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A test CA in `dir`: `NAME-ca.pem` and its key `NAME-ca.key`.
struct Ca {
    cert: PathBuf,
    key: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let (cert, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let subject = format!("/CN=Tollgate test CA {name}");
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subject];
    args.extend(P256);
    args.extend(["-keyout", &key, "-out", &cert]);
    openssl(dir, &args);
    Ca {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A server certificate for 127.0.0.1 signed by `ca`: `NAME.pem` holds the leaf and then the
/// CA (a chain, as a real deployment's file does), `NAME.key` its private key.
fn leaf(dir: &Path, ca: &Ca, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let mut args = vec!["req", "-nodes", "-subj", "/CN=localhost"];
    args.extend(P256);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &args);
    let (ca_cert, ca_key) = (ca.cert.display().to_string(), ca.key.display().to_string());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
    let chain = dir.join(format!("{name}.pem"));
    let text = [read(&dir.join(&crt)), read(&ca.cert)].concat();
    std::fs::write(&chain, text).unwrap();
    (chain, dir.join(key))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Put a copy of `src` in place of `dst` in one step (write a sibling, rename over it).
fn replace(dst: &Path, src: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// An HTTPS client that trusts only `ca` (each call a new agent: no pooled connection and no
/// TLS session carries over from an earlier certificate).
fn trusting(ca: &Path) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(30))
        .tls_config(Arc::new(config))
        .build()
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.addr.port())
}

fn toml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// `[server]` lines naming the TLS pair.
fn tls_lines(cert: &Path, key: &Path) -> String {
    format!(
        "tls_cert = {}\ntls_key = {}\n",
        toml_path(cert),
        toml_path(key)
    )
}

/// `tollgate serve` on the standard config with the TLS pair and `extra` in `[server]` (and
/// the admin token in the environment), once it answers `/healthz` over HTTPS trusting `ca`.
/// The config's directory is returned with it: it must outlive the gateway.
fn start_tls(
    mock: &Mock,
    cert: &Path,
    key: &Path,
    ca: &Path,
    extra: &str,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("{}{extra}", tls_lines(cert, key));
    let path = write_config(dir.path(), &server, &standard_config(mock));
    let mut gw = Gateway::spawn_on(&path, &[], &env_with_admin());
    gw.wait_listening();
    let r = try_request_with(&trusting(ca), "GET", &https(&gw, "/healthz"), &[], None)
        .unwrap_or_else(|e| panic!("GET /healthz over HTTPS: {e}\n{}", gw.log()));
    assert_eq!(r.status, 200, "{}", r.body);
    (gw, dir)
}

#[test]
fn an_https_chat_request_reaches_the_provider_with_the_ca_trusted() {
    let pki = tempfile::tempdir().unwrap();
    let ca = ca(pki.path(), "a");
    let (cert, key) = leaf(pki.path(), &ca, "gw");
    let mock = Mock::start();
    let (gw, _config) = start_tls(&mock, &cert, &key, &ca.cert, "");
    let client = trusting(&ca.cert);

    let r = try_request_with(
        &client,
        "POST",
        &https(&gw, "/v1/chat/completions"),
        &[("x-api-key", KEY)],
        Some(chat("gpt-4o-mini", 5).as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST over HTTPS: {e}\n{}", gw.log()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["choices"].is_array(), "{}", r.body);
    assert_eq!(mock.count(), 1);
    assert_eq!(
        req_header(&mock.last_request(), "authorization"),
        Some(format!("Bearer {OPENAI_SECRET}")),
        "the provider gets its own credential, as over HTTP"
    );
    let line = gw.access_line(&r.request_id());
    assert_eq!(field(&line, "status"), "200", "{line}");

    // Streamed, on the same (kept-alive) connection.
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "stream": true, "max_tokens": 6})
    .to_string();
    let r = try_request_with(
        &client,
        "POST",
        &https(&gw, "/v1/chat/completions"),
        &[("x-api-key", KEY)],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    assert_eq!(mock.count(), 2);

    // Another TLS stack (curl on OpenSSL) offering h2 and http/1.1 gets HTTP/1.1: the
    // listener's ALPN offers only http/1.1.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}"])
        .arg("--cacert")
        .arg(&ca.cert)
        .arg(https(&gw, "/healthz"))
        .output()
        .expect("curl is needed (tests/run-all.sh installs it)");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(version, "1.1");
}

#[test]
fn plain_http_and_an_untrusted_client_get_nothing_from_the_tls_port() {
    let pki = tempfile::tempdir().unwrap();
    let ca_a = ca(pki.path(), "a");
    let (cert, key) = leaf(pki.path(), &ca_a, "gw");
    let mock = Mock::start();
    let (gw, _config) = start_tls(&mock, &cert, &key, &ca_a.cert, "");

    // `gw.url` is http://: the port speaks TLS only, so a plain request gets no HTTP answer.
    let plain = try_request(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", KEY)],
        Some(chat("gpt-4o-mini", 5).as_bytes()),
    );
    assert!(plain.is_err(), "plain HTTP must fail: {plain:?}");
    assert!(try_request("GET", &gw.url("/healthz"), &[], None).is_err());

    // A client that trusts another CA refuses the gateway's certificate.
    let ca_b = ca(pki.path(), "b");
    let untrusted = try_request_with(
        &trusting(&ca_b.cert),
        "POST",
        &https(&gw, "/v1/chat/completions"),
        &[("x-api-key", KEY)],
        Some(chat("gpt-4o-mini", 5).as_bytes()),
    );
    let e = untrusted.expect_err("an untrusted certificate must be refused");
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert_eq!(mock.count(), 0, "nothing reached the provider");
}

/// A `check` case: its name, `tls_cert`, `tls_key`, and each error line it must print as
/// (`line:col: field: `, what the message says).
type Case<'a> = (&'a str, &'a Path, &'a Path, Vec<(&'a str, String)>);

/// `tollgate check` on a config whose `[server]` has `lines` (from line 4 on): exit code,
/// stderr and the config's path.
fn check(dir: &Path, name: &str, lines: &str) -> (i32, String, PathBuf) {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap();
    let path = write_config(&sub, lines, "");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let code = out.status.code().unwrap_or(-1);
    if code == 0 {
        assert!(stdout.contains("OK"), "{stdout}");
    }
    (code, stderr, path)
}

#[test]
fn check_names_each_bad_file_of_the_pair_at_its_line_and_never_its_contents() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let ca = ca(d, "a");
    let (cert, key) = leaf(d, &ca, "gw");
    let (_other_cert, other_key) = leaf(d, &ca, "other");
    let (code, err, _) = check(d, "good", &tls_lines(&cert, &key));
    assert_eq!(code, 0, "a good pair passes: {err}");

    // The files the cases use: nothing PEM, a BEGIN with no END, a key whose body is not
    // base64 (and must never be echoed), the chain in the wrong order.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "hello, not a certificate\n").unwrap();
    let cut = d.join("cut.pem");
    let chain = read(&cert);
    let first_lines: Vec<&str> = chain.lines().take(3).collect();
    std::fs::write(&cut, first_lines.join("\n") + "\n").unwrap();
    let bad_key = d.join("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let reversed = d.join("reversed.pem");
    let leaf_only = read(&cert);
    let leaf_end = leaf_only.find("-----END CERTIFICATE-----").unwrap() + 26;
    std::fs::write(
        &reversed,
        format!("{}{}", read(&ca.cert), &leaf_only[..leaf_end]),
    )
    .unwrap();
    let missing = d.join("no-such-file.pem");

    let cert_at = "4:12: server.tls_cert: ";
    let key_at = "5:11: server.tls_key: ";
    let cases: Vec<Case> = vec![
        (
            "mismatch",
            &cert,
            &other_key,
            vec![(
                key_at,
                format!(
                    "{} does not belong to the first certificate in {}",
                    other_key.display(),
                    cert.display()
                ),
            )],
        ),
        (
            "swapped",
            &key,
            &cert,
            vec![
                (cert_at, format!("{} holds no certificate", key.display())),
                (cert_at, "are tls_cert and tls_key swapped?".into()),
                (key_at, format!("{} holds no private key", cert.display())),
            ],
        ),
        (
            "junk",
            &junk,
            &key,
            vec![(cert_at, format!("{} holds no certificate", junk.display()))],
        ),
        (
            "cut",
            &cut,
            &key,
            vec![(
                cert_at,
                format!(
                    "{} is not valid PEM: a BEGIN line has no matching END line",
                    cut.display()
                ),
            )],
        ),
        (
            "bad-key",
            &cert,
            &bad_key,
            vec![(
                key_at,
                format!(
                    "{} is not valid PEM: a block is not valid base64",
                    bad_key.display()
                ),
            )],
        ),
        (
            "reversed",
            &reversed,
            &key,
            vec![(key_at, "(the server's own certificate comes first".into())],
        ),
        (
            "missing",
            &missing,
            &key,
            vec![(
                cert_at,
                format!(
                    "cannot read {}: No such file or directory",
                    missing.display()
                ),
            )],
        ),
    ];
    for (name, c, k, want) in cases {
        let (code, err, path) = check(d, name, &tls_lines(c, k));
        assert_eq!(code, 1, "{name}: {err}");
        for (at, says) in want {
            let line = err
                .lines()
                .find(|l| l.contains(&format!("{}:{at}", path.display())) && l.contains(&says))
                .unwrap_or_else(|| panic!("{name}: no {at}...{says:?} in:\n{err}"));
            assert!(line.starts_with("  "), "{line}");
        }
        let keys = [read(&key), read(&other_key), "SECRET-KEY-MATERIAL".into()];
        for secret in keys.iter().flat_map(|k| k.lines()) {
            if !secret.starts_with("-----") {
                assert!(!err.contains(secret), "{name}: key material in {err}");
            }
        }
    }

    // Half a pair names the missing half, at the other's line.
    let (code, err, path) = check(
        d,
        "only-cert",
        &format!("tls_cert = {}\n", toml_path(&cert)),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:4:12: server.tls_key: must be set too: tls_cert is set",
            path.display()
        )),
        "{err}"
    );
    let (code, err, path) = check(d, "only-key", &format!("tls_key = {}\n", toml_path(&key)));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:4:11: server.tls_cert: must be set too: tls_key is set",
            path.display()
        )),
        "{err}"
    );

    // `serve` refuses the same file with the same message, and binds nothing.
    let sub = d.join("serve");
    std::fs::create_dir(&sub).unwrap();
    let path = write_config(&sub, &tls_lines(&cert, &other_key), "");
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("server.tls_key: "), "{err}");
    assert!(
        err.contains("does not belong to the first certificate"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("LISTENING"),
        "nothing was bound"
    );
}

#[test]
fn a_reload_swaps_in_a_renewed_certificate_and_refuses_a_bad_pair() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let ca_a = ca(d, "a");
    let ca_b = ca(d, "b");
    // The gateway reads these two paths; the test replaces their contents.
    let (cert, key) = leaf(d, &ca_a, "live");
    let (cert_b, key_b) = leaf(d, &ca_b, "renewed");
    let mock = Mock::start();
    let (gw, _config) = start_tls(&mock, &cert, &key, &ca_a.cert, ADMIN_EXTRA);
    let healthz =
        |ca: &Path| try_request_with(&trusting(ca), "GET", &https(&gw, "/healthz"), &[], None);

    // The admin listener stays plain HTTP (admin_post speaks http://).
    // A key that does not belong to the certificate: rejected, the old pair keeps serving.
    replace(&key, &key_b);
    let r = admin_post(gw.admin_port(), "/admin/reload");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("does not belong to the first certificate"),
        "{}",
        r.body
    );
    assert_eq!(healthz(&ca_a.cert).map(|r| r.status), Ok(200));

    // The renewed pair in the same files: new handshakes get it.
    replace(&cert, &cert_b);
    let r = admin_post(gw.admin_port(), "/admin/reload");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        healthz(&ca_b.cert).map(|r| r.status),
        Ok(200),
        "{}",
        gw.log()
    );
    let old = healthz(&ca_a.cert);
    assert!(
        old.is_err(),
        "the old certificate is no longer served: {old:?}"
    );
    assert!(
        gw.log().contains("gateway TLS certificate re-read from"),
        "{}",
        gw.log()
    );
}
