//! Test harness: the real `tollgate` binary and the mock provider, each a child process on an
//! ephemeral loopback port, plus a small HTTP client. Nothing global: every test starts its own.
//!
//! No port is ever picked for a child: each binds port 0 and reports the address it got on
//! stdout (`LISTENING <addr>`, and the gateway's `ADMIN_LISTENING <addr>`). No sleep stands in
//! for synchronisation: [`eventually`] polls the state that proves a condition.
#![allow(dead_code)]

pub mod fault_proxy;
mod prom;
pub mod redis;

pub use prom::*;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const KEY: &str = "tg_test_key_project_one_0001";
pub const KEY2: &str = "tg_test_key_project_two_0002";
pub const OPENAI_SECRET: &str = "sk-provider-openai-SECRET-123";
pub const ANTHROPIC_SECRET: &str = "sk-ant-provider-SECRET-456";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// The mock provider (`src/bin/mock-provider.rs`).
pub struct Mock {
    child: Child,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start() -> Mock {
        Mock::start_with(&[])
    }

    /// A mock with extra flags, e.g. `["--status", "500"]` or `["--fault", "hang"]`: the
    /// default for every request (a request's `x-mock-*` header still overrides it).
    pub fn start_with(args: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-provider"))
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mock-provider");
        let stdout = child.stdout.take().expect("mock stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("mock prints LISTENING");
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected mock output {line:?}"))
            .parse()
            .expect("mock address");
        Mock { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Value> {
        let r = get(&format!("{}/_mock/requests", self.url()), &[]);
        r.json()["requests"].as_array().cloned().unwrap_or_default()
    }

    pub fn count(&self) -> u64 {
        get(&format!("{}/_mock/count", self.url()), &[]).json()["count"]
            .as_u64()
            .expect("count")
    }

    /// The one request the mock received since the last reset.
    pub fn last_request(&self) -> Value {
        self.requests().pop().expect("the mock received a request")
    }

    pub fn reset(&self) {
        post(&format!("{}/_mock/reset", self.url()), &[], "");
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Header value of a recorded mock request (names compared case-insensitively).
pub fn req_header(req: &Value, name: &str) -> Option<String> {
    req["headers"].as_array()?.iter().find_map(|h| {
        let n = h[0].as_str()?;
        n.eq_ignore_ascii_case(name)
            .then(|| h[1].as_str().unwrap_or("").to_string())
    })
}

/// An address where nothing listens (a connection is refused) and that nothing else can bind
/// for the rest of the test process: the local end of a loopback connection held open.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server, _) = l.accept().expect("accept");
    let addr = client.local_addr().expect("local addr");
    // Held (leaked) so the port stays taken; a handful per test binary.
    std::mem::forget((client, server));
    addr
}

/// How long [`eventually`] waits: generous, for a loaded 2-core machine; polling ends as soon
/// as the condition holds, so a passing test never waits it out.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// Wait until `f` holds, polling every 20 ms, for at most [`EVENTUALLY`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The admin token every test's gateway reads from `TEST_ADMIN_TOKEN`.
pub const ADMIN: &str = "admin-token-for-tests";

/// `[server]` lines for an admin listener on port 0 with the token from `TEST_ADMIN_TOKEN`.
pub const ADMIN_EXTRA: &str =
    "admin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"TEST_ADMIN_TOKEN\"\n";

/// The provider credentials plus the admin token.
pub fn env_with_admin() -> Vec<(&'static str, &'static str)> {
    let mut e = provider_env();
    e.push(("TEST_ADMIN_TOKEN", ADMIN));
    e
}

/// A gateway with an admin listener and the token set (grace period 5 s); its admin port.
pub fn start_admin(body: &str) -> (Gateway, u16) {
    let gw = Gateway::start_with(
        body,
        &format!("{ADMIN_EXTRA}grace_period_s = 5"),
        &env_with_admin(),
    );
    let port = gw.admin_port();
    (gw, port)
}

pub fn admin_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

pub fn admin_get(port: u16, path: &str) -> Resp {
    let auth = format!("Bearer {ADMIN}");
    get(&admin_url(port, path), &[("authorization", &auth)])
}

/// The decision record of request `id` (its `x-tollgate-request-id`), once the store has it.
pub fn decision(admin_port: u16, id: &str) -> Value {
    let mut found = None;
    eventually("the decision record", || {
        let v = admin_get(admin_port, "/admin/decisions?limit=100").json();
        found = v["decisions"]
            .as_array()
            .and_then(|d| d.iter().find(|r| r["id"] == id).cloned());
        found.is_some()
    });
    found.unwrap_or_default()
}

pub fn admin_post(port: u16, path: &str) -> Resp {
    let auth = format!("Bearer {ADMIN}");
    post(&admin_url(port, path), &[("authorization", &auth)], "")
}

/// A project's entry in `/admin/projects`.
pub fn project(port: u16, id: &str) -> Value {
    let r = admin_get(port, "/admin/projects");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no project {id} in {}", r.body))
}

/// A chat completions body: one user message, `max_tokens`.
pub fn chat(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens})
        .to_string()
}

/// POST a [`chat`] body to the gateway's `/v1/chat/completions` with `key`.
pub fn chat_as(gw: &Gateway, key: &str, model: &str, max_tokens: u64) -> Resp {
    post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", key)],
        &chat(model, max_tokens),
    )
}

/// The standard config with its `[[projects]]` replaced.
pub fn body_with_projects(mock: &Mock, projects: &str) -> String {
    let std = standard_config(mock);
    let cut = std
        .find("[[projects]]")
        .expect("projects in the standard config");
    format!("{}{projects}", &std[..cut])
}

/// Replace a config file in one step (write a sibling, rename over it).
pub fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// A config the way [`Gateway::start_with`] writes one: gateway on port 0, `extra` in
/// `[server]`, the store in `dir`.
pub fn write_config(dir: &Path, extra: &str, body: &str) -> PathBuf {
    let path = dir.join("tollgate.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n{extra}\n[store]\npath = \"{}\"\n{body}",
        dir.join("ledger.db").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The standard test config: both providers on `mock`, two projects.
pub fn standard_config(mock: &Mock) -> String {
    let digest2 = tollgate::hex(&tollgate::key_digest(KEY2.as_bytes()));
    format!(
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}"
api_key_env = "TEST_OPENAI_KEY"
read_timeout_ms = 3000

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"
api_key_env = "TEST_ANTHROPIC_KEY"
read_timeout_ms = 3000

[[routes]]
prefix = "openai/"
provider = "openai"
strip_prefix = true

[[routes]]
prefix = "gpt-"
provider = "openai"

[[routes]]
prefix = "text-embedding-"
provider = "openai"

[[routes]]
prefix = "claude-"
provider = "anthropic"

[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
max_output_tokens = 16384

[prices."claude-sonnet-4"]
input = 3.0
output = 15.0
max_output_tokens = 64000

[prices."text-embedding-3-small"]
input = 0.02
output = 0.0

[[projects]]
id = "p1"
keys = ["{KEY}"]

[[projects]]
id = "p2"
keys = ["sha256:{digest2}"]
allow_models = ["claude-*"]
"#,
        mock = mock.url()
    )
}

pub struct Gateway {
    child: Child,
    /// The gateway listener's address, as the process reported it (see [`Gateway::url`]).
    pub addr: SocketAddr,
    admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// The process's stdout lines, read on a thread (to the end, so it never blocks on a
    /// full pipe).
    stdout: mpsc::Receiver<String>,
}

/// Read `out` line by line onto a channel until EOF.
fn read_lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Not yet reported (a process started with [`Gateway::spawn_on`]).
const UNKNOWN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

pub fn provider_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TEST_OPENAI_KEY", OPENAI_SECRET),
        ("TEST_ANTHROPIC_KEY", ANTHROPIC_SECRET),
    ]
}

impl Gateway {
    /// Start `tollgate serve` with `body` (everything but `[server]`/`[store]`, which are
    /// prepended: the gateway on port 0 and a private store path).
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with(body, "", &provider_env())
    }

    /// [`Gateway::start`] with `server_extra` lines in `[server]` (an `admin_listen` there
    /// should say port 0: the harness reads the address the admin listener got).
    pub fn start_with(body: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = write_config(dir.path(), server_extra, body);
        let mut gw = Gateway::spawn_in(dir, &config_path, &[], env);
        gw.wait_ready();
        gw
    }

    /// Start `tollgate serve --config CONFIG EXTRA...` on an existing config file (say, a
    /// successor started with `--upgrade`, or a config a test wrote itself) without waiting for
    /// it: a successor binds nothing and reports its addresses only once the old process has
    /// handed its sockets over. Call [`Gateway::wait_listening`] before using its addresses.
    /// The log goes to a tempdir of its own.
    pub fn spawn_on(config_path: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        Gateway::spawn_in(dir, config_path, extra_args, env)
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        config_path: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        Gateway::spawn_with_stderr(dir, config_path, extra_args, env, log.into())
    }

    /// [`Gateway::start_with`], with the process's stderr a pipe the caller holds (and may
    /// leave unread): [`Gateway::log`] is then empty.
    pub fn start_with_stderr_pipe(
        body: &str,
        server_extra: &str,
        env: &[(&str, &str)],
    ) -> (Gateway, std::process::ChildStderr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = write_config(dir.path(), server_extra, body);
        let mut gw = Gateway::spawn_with_stderr(dir, &config_path, &[], env, Stdio::piped());
        let stderr = gw.child.stderr.take().expect("tollgate stderr");
        gw.wait_ready();
        (gw, stderr)
    }

    fn spawn_with_stderr(
        dir: tempfile::TempDir,
        config_path: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Gateway {
        let log_path = dir.path().join("tollgate.log");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(config_path)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tollgate");
        let stdout = read_lines(child.stdout.take().expect("tollgate stdout"));
        Gateway {
            child,
            addr: UNKNOWN,
            admin: None,
            dir,
            config_path: config_path.to_path_buf(),
            log_path,
            stdout,
        }
    }

    /// Wait for the process to report its listeners (`LISTENING`, and `ADMIN_LISTENING` when
    /// its config has an admin listener): from then on they queue connections.
    pub fn wait_listening(&mut self) {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        let want_admin = config
            .lines()
            .any(|l| l.trim_start().starts_with("admin_listen"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.addr == UNKNOWN || (want_admin && self.admin.is_none()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tollgate exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not report its listeners:\n{}",
                self.log()
            );
            let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            let parse = |a: &str| {
                a.parse::<SocketAddr>()
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            };
            if let Some(a) = line.strip_prefix("LISTENING ") {
                self.addr = parse(a);
            } else if let Some(a) = line.strip_prefix("ADMIN_LISTENING ") {
                self.admin = Some(parse(a));
            }
        }
    }

    /// Listening, and the gateway answers `/healthz` (the proxy's accept loop runs).
    fn wait_ready(&mut self) {
        self.wait_listening();
        let r = get(&self.url("/healthz"), &[]);
        assert_eq!(r.status, 200, "{}\n{}", r.body, self.log());
    }

    pub fn url(&self, path: &str) -> String {
        assert_ne!(self.addr, UNKNOWN, "wait_listening() first");
        format!("http://{}{path}", self.addr)
    }

    /// The admin listener's address (the config must have one).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .unwrap_or_else(|| panic!("no admin listener reported (wait_listening() first?)"))
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_addr().port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access-log line of a request, waiting for `logging` to have run.
    pub fn access_line(&self, request_id: &str) -> String {
        let needle = format!("id={request_id} ");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(&needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no access line for {request_id}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGKILL the process and reap it: no graceful stop, no last flush of its store. Its
    /// temp dir (config, SQLite file) stays until the `Gateway` is dropped.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of an access-log line (`key=value`).
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!(" {key}=");
    line.find(&pat)
        .map(|i| {
            let rest = &line[i + pat.len()..];
            rest.split(' ').next().unwrap_or("")
        })
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn request_id(&self) -> String {
        self.header("x-tollgate-request-id")
            .unwrap_or_else(|| panic!("no x-tollgate-request-id on {self:?}"))
            .to_string()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    try_request_with(&agent(), method, url, headers, body)
}

/// [`try_request`] through `agent` (say, one that trusts a test CA for `https://`).
pub fn try_request_with(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let mut body = String::new();
    resp.into_reader()
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_request("POST", url, headers, Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    try_request("GET", url, headers, None).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `Authorization: Bearer KEY`.
pub fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

/// A route to a provider that does not exist: `check` rejects the file.
pub const BAD_ROUTE: &str = "\n[[routes]]\nprefix = \"zzz-\"\nprovider = \"no-such-provider\"\n";

/// `tollgate_config_reloads_total{result}`, scraped now.
pub fn reloads(admin_port: u16, result: &str) -> f64 {
    metric(
        admin_port,
        "tollgate_config_reloads_total",
        &[("result", result)],
    )
}
