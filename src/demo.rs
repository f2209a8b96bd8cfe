//! `tollgate demo`: the gateway against the bundled mock provider, offline, for a first-time
//! user without provider keys. Part of the binary, not the library: it only composes what the
//! library offers (`serve`, `check`) with a child process and a few plain HTTP calls.
//!
//! It starts `mock-provider` (built beside `tollgate` by `cargo build --bins`) on a free
//! loopback port, writes a copy of the demo config (`conf/demo.toml`, or the copy compiled in
//! when that file is not there) whose providers point at the mock and whose ledger lives in a
//! fresh temporary directory (so every run starts at $0 spent), prints what to try, and serves
//! until stopped. With `--run` it makes the calls itself, prints what came back, checks each
//! answer is the one the demo promises, and exits: 0 when all were, 1 otherwise (a test runs
//! it that way, so the demo cannot rot).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The demo config compiled in, for a `tollgate` run away from the repository.
const BUNDLED: &str = include_str!("../conf/demo.toml");
const DEFAULT_CONFIG: &str = "conf/demo.toml";
/// Values for the demo config's variables, unless the environment already has them.
const PROVIDER_KEY_ENV: (&str, &str) = ("TOLLGATE_DEMO_PROVIDER_KEY", "mock-provider-key");
const ADMIN_TOKEN_ENV: (&str, &str) = ("TOLLGATE_DEMO_ADMIN_TOKEN", "demo-admin-token");
/// How long the gateway may take to answer `/healthz` after the start.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// A prompt with a (made-up, well-formed) AWS access key id in it.
const LEAKY_PROMPT: &str = "Deploy with access key AKIAQ7ZK3MX9P2WR8T5N please";

/// Output tokens of the calls that spend the budget: four fit in $0.01 at gpt-4o-mini's price.
const BIG_CALL_TOKENS: u32 = 4000;

/// The log filter when `RUST_LOG` is unset: with `--run` the demo prints everything itself;
/// without, the access log shows each request the user sends.
pub fn default_log_filter(run: bool) -> &'static str {
    if run {
        "warn"
    } else {
        "warn,tollgate::access=info"
    }
}

/// What the session needs to know of its config: the project's key and the listeners.
struct Session {
    config: PathBuf,
    dir: PathBuf,
    key: String,
    project: String,
    gateway: SocketAddr,
    admin: SocketAddr,
    admin_token: String,
}

/// Run the demo; the process exit code.
pub fn run(config: Option<PathBuf>, run: bool) -> Result<i32, String> {
    let (text, shown) = match &config {
        Some(p) => (read(p)?, p.display().to_string()),
        None if Path::new(DEFAULT_CONFIG).is_file() => {
            (read(Path::new(DEFAULT_CONFIG))?, DEFAULT_CONFIG.to_string())
        }
        None => (BUNDLED.to_string(), "the bundled demo config".to_string()),
    };
    for (var, value) in [PROVIDER_KEY_ENV, ADMIN_TOKEN_ENV] {
        if std::env::var_os(var).is_none() {
            // Still single-threaded here: nothing else reads the environment yet.
            std::env::set_var(var, value);
        }
    }
    if let Some(p) = &config {
        tollgate::check(p)?;
    }
    let (mock, mock_addr) = start_mock()?;
    let mock = Arc::new(Mutex::new(Some(mock)));
    let session = match prepare(&text, mock_addr) {
        Ok(s) => s,
        Err(e) => {
            stop(&mock, None);
            return Err(format!("{shown}: {e}"));
        }
    };
    println!(
        "Tollgate demo: gateway http://{}, admin http://{}, mock provider http://{mock_addr} (config: {shown})",
        session.gateway, session.admin
    );
    let session = Arc::new(session);
    {
        let (session, mock) = (session.clone(), mock.clone());
        std::thread::spawn(move || {
            let ready = wait_ready(session.gateway);
            if !run {
                match ready {
                    Ok(()) => print_try(&session),
                    Err(e) => eprintln!("{e}"),
                }
                return;
            }
            let code = match ready.and_then(|()| scenario(&session)) {
                Ok(()) => {
                    println!("\nEvery answer was the expected one.");
                    0
                }
                Err(e) => {
                    eprintln!("\ndemo failed: {e}");
                    1
                }
            };
            stop(&mock, Some(&session.dir));
            std::process::exit(code);
        });
    }
    let code = tollgate::serve(session.config.clone(), false);
    stop(&mock, Some(&session.dir));
    code
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Start `mock-provider` from beside this binary on a free port; it and its address.
fn start_mock() -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let bin = exe.with_file_name(format!("mock-provider{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        return Err(format!(
            "the demo needs the mock provider built beside tollgate ({} is missing): run `cargo build --release --bins` (or `cargo build --bins` for a debug build) first",
            bin.display()
        ));
    }
    let mut child = Command::new(&bin)
        // Replies as long as each call allows, so the budget is really spent: the mock's own
        // default is a short reply, whatever `max_tokens` says.
        .args(["--listen", "127.0.0.1:0", "--tokens", "4096"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let addr = child
        .stdout
        .take()
        .ok_or_else(|| "the mock provider has no stdout".to_string())
        .and_then(listening);
    match addr {
        Ok(a) => Ok((child, a)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The mock's one line of output, `LISTENING <addr>`.
fn listening(out: ChildStdout) -> Result<SocketAddr, String> {
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading the mock provider's address: {e}"))?;
    line.trim()
        .strip_prefix("LISTENING ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the mock provider did not report its address (said {line:?})"))
}

/// Write the session's config (providers → the mock, ledger → a fresh temporary directory)
/// and read back what the demo prints and calls.
fn prepare(text: &str, mock: SocketAddr) -> Result<Session, String> {
    let mut doc: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if let Some(toml::Value::Array(providers)) = doc.get_mut("providers") {
        for p in providers.iter_mut().filter_map(toml::Value::as_table_mut) {
            p.insert("base_url".into(), format!("http://{mock}").into());
        }
    }
    let store = doc
        .entry("store")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(store) = store.as_table_mut() {
        store.insert(
            "path".into(),
            dir.join("demo.db").display().to_string().into(),
        );
    }
    let get = |path: &[&str]| -> Option<&toml::Value> {
        let mut v = doc.get(path[0])?;
        for k in &path[1..] {
            v = match k.parse::<usize>() {
                Ok(i) => v.get(i)?,
                Err(_) => v.get(k)?,
            };
        }
        Some(v)
    };
    let str_at = |path: &[&str]| get(path).and_then(toml::Value::as_str).map(str::to_string);
    let addr_at = |path: &[&str]| -> Result<SocketAddr, String> {
        str_at(path)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("the demo needs {} set to an IP:port", path.join(".")))
    };
    let project = str_at(&["projects", "0", "id"])
        .ok_or_else(|| "the demo needs a [[projects]] entry".to_string())?;
    let key = str_at(&["projects", "0", "keys", "0"])
        .filter(|k| !k.starts_with("sha256:"))
        .ok_or_else(|| "the demo's first project needs a plaintext key first".to_string())?;
    let token_env = str_at(&["server", "admin_token_env"]).unwrap_or_default();
    let session = Session {
        gateway: addr_at(&["server", "listen"])?,
        admin: addr_at(&["server", "admin_listen"])?,
        admin_token: std::env::var(&token_env).unwrap_or_default(),
        config: dir.join("demo.toml"),
        dir,
        key,
        project,
    };
    // Pingora cannot report a listener it failed to bind; say it here instead, plainly.
    for addr in [session.gateway, session.admin] {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{addr} is not free ({e}): is another demo running?"))?;
    }
    let out = toml::to_string(&doc).map_err(|e| format!("{e}"))?;
    std::fs::write(&session.config, out)
        .map_err(|e| format!("cannot write {}: {e}", session.config.display()))?;
    Ok(session)
}

/// Stop the mock (once) and remove the session's directory.
fn stop(mock: &Mutex<Option<Child>>, dir: Option<&Path>) {
    if let Some(mut child) = mock.lock().ok().and_then(|mut m| m.take()) {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn wait_ready(gateway: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if matches!(http(gateway, "GET", "/healthz", &[], None), Ok(r) if r.status == 200) {
            return Ok(());
        }
        if start.elapsed() > READY_WITHIN {
            return Err(format!(
                "the gateway did not answer http://{gateway}/healthz within {READY_WITHIN:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A chat request body, fields in the order people write them (it is printed for copying).
fn chat(model: &str, prompt: &str, max_tokens: u32) -> String {
    let prompt = Value::from(prompt);
    format!(
        r#"{{"model": "{model}", "max_tokens": {max_tokens}, "messages": [{{"role": "user", "content": {prompt}}}]}}"#
    )
}

fn print_try(s: &Session) {
    let g = s.gateway;
    let call = |body: &str| {
        format!(
            "curl -s http://{g}/v1/chat/completions -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\\n    -d '{body}'",
            s.key
        )
    };
    println!(
        "\nReady. Project {:?}, key {}: a $0.01 budget, secrets blocked, models gpt-4o-mini and claude-*.\n",
        s.project, s.key
    );
    println!(
        "A proxied call (answered by the mock provider):\n  {}\n",
        call(&chat("gpt-4o-mini", "Hello", 16))
    );
    println!(
        "403 secret_detected (the prompt never leaves):\n  {}\n",
        call(&chat("gpt-4o-mini", LEAKY_PROMPT, 16))
    );
    println!(
        "403 model_not_allowed:\n  {}\n",
        call(&chat("gpt-4o", "Hello", 16))
    );
    let big = chat("gpt-4o-mini", "Write a long story", BIG_CALL_TOKENS);
    println!(
        "402 budget_exceeded: a call reserves its worst case first; at {BIG_CALL_TOKENS} output tokens (about $0.0024) the fifth no longer fits in $0.01:\n  for i in 1 2 3 4 5; do {} -o /dev/null -w '%{{http_code}}\\n'; done\n  (send it once more to read the 402's message)\n",
        call(&big)
    );
    println!(
        "The decision records, newest first:\n  curl -s 'http://{}/admin/decisions?project={}&limit=10' -H 'Authorization: Bearer {}'\n",
        s.admin, s.project, s.admin_token
    );
    println!("Or run `tollgate demo --run` to have these made for you. Ctrl-C stops the demo.");
}

/// The calls of `--run`, each checked against what the demo promises.
fn scenario(s: &Session) -> Result<(), String> {
    let auth = format!("Bearer {}", s.key);
    let post = |body: &str| -> Result<Reply, String> {
        http(
            s.gateway,
            "POST",
            "/v1/chat/completions",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
    };
    let expect = |what: &str, r: &Reply, status: u16, code: Option<&str>| -> Result<(), String> {
        let got = r.error_code();
        if r.status == status && got.as_deref() == code {
            Ok(())
        } else {
            Err(format!(
                "{what}: expected {status} {}, got {} {}",
                code.unwrap_or(""),
                r.status,
                r.body
            ))
        }
    };

    println!("\n1. A proxied call: gpt-4o-mini, answered by the mock provider.");
    let r = post(&chat("gpt-4o-mini", "Hello", 16))?;
    let reply = r.json().and_then(|v| {
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    println!(
        "   -> {} from provider {}; budget left ${}; reply: {:?}",
        r.status,
        r.header("x-tollgate-provider").unwrap_or("?"),
        r.header("x-tollgate-budget-remaining-usd").unwrap_or("?"),
        reply.unwrap_or_default()
    );
    expect("the proxied call", &r, 200, None)?;

    println!("\n2. A prompt carrying an AWS access key: blocked before any byte leaves.");
    let r = post(&chat("gpt-4o-mini", LEAKY_PROMPT, 16))?;
    println!("   -> {} {}", r.status, r.error_line());
    expect("the secret", &r, 403, Some("secret_detected"))?;

    println!("\n3. A model the project may not use.");
    let r = post(&chat("gpt-4o", "Hello", 16))?;
    println!("   -> {} {}", r.status, r.error_line());
    expect("the model", &r, 403, Some("model_not_allowed"))?;

    println!("\n4. Spending the $0.01 budget, {BIG_CALL_TOKENS} output tokens a call (each call first reserves its worst case).");
    let big = chat("gpt-4o-mini", "Write a long story", BIG_CALL_TOKENS);
    let mut refused = None;
    for i in 1..=20 {
        let r = post(&big)?;
        match r.status {
            200 => println!(
                "   call {i} -> 200, budget left ${}",
                r.header("x-tollgate-budget-remaining-usd").unwrap_or("?")
            ),
            _ => {
                println!("   call {i} -> {} {}", r.status, r.error_line());
                refused = Some(r);
                break;
            }
        }
    }
    let r = refused.ok_or_else(|| {
        format!("20 calls of {BIG_CALL_TOKENS} tokens fit in $0.01: the budget is not enforced")
    })?;
    expect("the budget", &r, 402, Some("budget_exceeded"))?;

    println!(
        "\n5. The decision records (GET /admin/decisions?project={}), newest first.",
        s.project
    );
    let bearer = format!("Bearer {}", s.admin_token);
    let path = format!("/admin/decisions?project={}&limit=10", s.project);
    // Records reach the ledger on its next flush (every 200 ms by default).
    let start = Instant::now();
    let records = loop {
        let r = http(s.admin, "GET", &path, &[("authorization", &bearer)], None)?;
        if r.status != 200 {
            return Err(format!("the decision records: {} {}", r.status, r.body));
        }
        let list = r
            .json()
            .and_then(|v| v.get("decisions").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let has = |reason: &str| list.iter().any(|d| d["reason"] == reason);
        if has("budget_exceeded") && has("secret_detected") {
            break list;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("the decision records lack the blocks: {}", r.body));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for d in &records {
        let cost = d["cost_usd"]
            .as_f64()
            .map_or("-".to_string(), |c| format!("${c}"));
        println!(
            "   {} {:<5} {:<18} {} {:<12} {cost}",
            d["time"].as_str().unwrap_or("?"),
            d["decision"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("?"),
            d["status"],
            d["model"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

/// One HTTP/1.1 answer, read whole.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// Tollgate's error `code` (OpenAI shape), if this is one of its errors.
    fn error_code(&self) -> Option<String> {
        let v = self.json()?;
        v.pointer("/error/code")?.as_str().map(str::to_string)
    }

    fn error_line(&self) -> String {
        let msg = self
            .json()
            .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_string));
        format!(
            "{}: {}",
            self.error_code().unwrap_or_default(),
            msg.unwrap_or_else(|| self.body.clone())
        )
    }
}

/// A plain HTTP/1.1 request on a fresh connection (`Connection: close`), so the demo needs no
/// HTTP client library.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, String> {
    let fail = |e: std::io::Error| format!("{method} http://{addr}{path}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} http://{addr}{path}: no complete response"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} http://{addr}{path}: bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    reply.body = match reply.header("transfer-encoding") {
        Some(te) if te.eq_ignore_ascii_case("chunked") => dechunk(rest),
        _ => rest.to_string(),
    };
    Ok(reply)
}

/// A chunked body's data (the demo reads whole responses, so no chunk is split).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let (Some(data), Some(next)) = (after.get(..n), after.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(data);
        rest = next.strip_prefix("\r\n").unwrap_or(next);
    }
    out
}
