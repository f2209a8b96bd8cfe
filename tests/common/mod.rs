//! Test harness: the real `tollgate` binary and the mock provider, each a child process on an
//! ephemeral loopback port, plus a small HTTP client. Nothing global: every test starts its own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

pub fn provider_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TEST_OPENAI_KEY", OPENAI_SECRET),
        ("TEST_ANTHROPIC_KEY", ANTHROPIC_SECRET),
    ]
}

impl Gateway {
    /// Start `tollgate serve` with `body` (everything but `[server]`/`[store]`, which are
    /// prepended with a free port and a private store path).
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with(body, "", &provider_env())
    }

    pub fn start_with(body: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config_path = dir.path().join("tollgate.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n{server_extra}\n[store]\npath = \"{}\"\n{body}",
            dir.path().join("ledger.db").display()
        );
        std::fs::write(&config_path, text).expect("write config");
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tollgate");
        let mut gw = Gateway {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            dir,
            config_path,
            log_path,
        };
        gw.wait_ready();
        gw
    }

    /// Start `tollgate serve --config CONFIG EXTRA...` on an existing config file (say, a
    /// successor started with `--upgrade`, or a config a test wrote itself) without waiting for
    /// it: a successor answers only once the old process has handed its sockets over. `addr` is
    /// the config's `server.listen`. The log goes to a tempdir of its own.
    pub fn spawn_on(
        config_path: &std::path::Path,
        addr: SocketAddr,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(config_path)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tollgate");
        Gateway {
            child,
            addr,
            dir,
            config_path: config_path.to_path_buf(),
            log_path,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tollgate exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = try_request("GET", &self.url("/healthz"), &[], None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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
    let mut req = agent().request(method, url);
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
