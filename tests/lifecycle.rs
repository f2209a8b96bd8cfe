//! Tollgate's lifecycle against the real binary and the mock provider: config reloads (SIGHUP
//! and the admin API), graceful stop on SIGTERM, systemd's readiness protocol and the
//! zero-downtime binary upgrade (SIGQUIT, `serve --upgrade`).

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY3: &str = "tg_test_key_project_three_0003";

fn p3_project() -> String {
    format!("\n[[projects]]\nid = \"p3\"\nkeys = [\"{KEY3}\"]\n")
}

#[test]
fn sighup_applies_a_valid_config_rejects_an_invalid_one_and_keeps_the_spend() {
    let mock = Mock::start();
    let body = body_with_projects(
        &mock,
        &format!("[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = 5.0, period = \"month\" }}\n"),
    );
    let (mut gw, admin) = start_admin(&body);
    for n in [3, 4] {
        assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", n).status, 200);
    }
    eventually("settled", || project(admin, "p1")["reserved_usd"] == 0.0);
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 401);

    // A valid new file: p3's key works afterwards, p1's spend is untouched.
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    gw.signal("HUP");
    eventually("reload ok", || reloads(admin, "ok") == 1.0);
    let r = chat_as(&gw, KEY3, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200, "the new project's key: {}", r.body);
    let s = project(admin, "p1");
    assert_eq!(
        s["spent_usd"].as_f64().unwrap(),
        spent,
        "a reload never resets spend"
    );
    assert_eq!(s["limit_usd"], 5.0);
    assert!(gw.log().contains("configuration reloaded"), "{}", gw.log());

    // An invalid file: rejected, logged with the reason, the previous config keeps serving.
    let valid = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{valid}{BAD_ROUTE}"));
    gw.signal("HUP");
    eventually("reload error counted", || reloads(admin, "error") == 1.0);
    let log = gw.log();
    assert!(log.contains("reload rejected"), "{log}");
    assert!(
        log.contains("no-such-provider"),
        "the log names the error: {log}"
    );
    assert_eq!(reloads(admin, "ok"), 1.0);
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 200);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
    eventually("settled", || project(admin, "p1")["reserved_usd"] == 0.0);
    assert!(
        project(admin, "p1")["spent_usd"].as_f64().unwrap() > spent,
        "spend adds up"
    );
    assert_eq!(
        gw.wait_exit(Duration::ZERO),
        None,
        "SIGHUP never stops the process"
    );
}

#[test]
fn admin_reload_answers_with_the_result_and_keeps_the_spend() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 5).status, 200);
    eventually("settled", || project(admin, "p1")["reserved_usd"] == 0.0);
    let spent = project(admin, "p1")["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);

    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    let r = admin_post(admin, "/admin/reload");
    assert_eq!((r.status, r.json()), (200, json!({"reloaded": true})));
    // Synchronous: the very next request sees the new config.
    assert_eq!(chat_as(&gw, KEY3, "gpt-4o-mini", 2).status, 200);
    assert_eq!(project(admin, "p1")["spent_usd"].as_f64().unwrap(), spent);

    let valid = std::fs::read_to_string(&gw.config_path).unwrap();
    for round in 1..=2 {
        rewrite(&gw.config_path, &format!("{valid}{BAD_ROUTE}"));
        let r = admin_post(admin, "/admin/reload");
        assert_eq!(r.status, 422, "{}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_config");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("routes[") && msg.contains("no-such-provider"),
            "names the field and the value: {msg}"
        );
        assert_eq!(
            reloads(admin, "error"),
            round as f64,
            "each rejection is counted"
        );
        assert_eq!(
            chat_as(&gw, KEY3, "gpt-4o-mini", 2).status,
            200,
            "old config serves"
        );
    }
    // Garbage is rejected the same way.
    rewrite(&gw.config_path, "this is = = not toml");
    assert_eq!(admin_post(admin, "/admin/reload").status, 422);
    assert_eq!(reloads(admin, "error"), 3.0);
    assert_eq!(reloads(admin, "ok"), 1.0);
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);
}

/// A slow OpenAI stream (20 tokens, 100 ms apart) on its own thread. Sends on `started` once
/// the first bytes of the body arrived; returns the status, the whole body, the request id and
/// when it ended.
fn slow_stream(
    gw: &Gateway,
    started: mpsc::Sender<()>,
) -> std::thread::JoinHandle<(u16, String, String, Instant)> {
    let url = gw.url("/v1/chat/completions");
    std::thread::spawn(move || {
        let body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me"}],
                          "stream": true, "max_tokens": 20})
            .to_string();
        let resp = agent()
            .post(&url)
            .set("x-api-key", KEY)
            .set("x-mock-chunk-delay-ms", "100")
            .set("x-mock-tokens", "20")
            .send_string(&body)
            .expect("stream response");
        let status = resp.status();
        let id = resp
            .header("x-tollgate-request-id")
            .unwrap_or("")
            .to_string();
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 4096];
        let mut text = Vec::new();
        let n = reader.read(&mut buf).expect("first bytes");
        text.extend_from_slice(&buf[..n]);
        let _ = started.send(());
        reader
            .read_to_end(&mut text)
            .expect("the rest of the stream");
        (
            status,
            String::from_utf8_lossy(&text).into_owned(),
            id,
            Instant::now(),
        )
    })
}

fn content_events(stream: &str) -> usize {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count()
}

#[test]
fn a_reload_during_a_stream_loses_nothing() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&standard_config(&mock));
    let (tx, rx) = mpsc::channel();
    let stream = slow_stream(&gw, tx);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    rewrite(&gw.config_path, &format!("{original}{}", p3_project()));
    assert_eq!(admin_post(admin, "/admin/reload").status, 200);
    gw.signal("HUP");
    eventually("both reloads done", || reloads(admin, "ok") == 2.0);
    let reloaded_at = Instant::now();
    assert_eq!(
        chat_as(&gw, KEY3, "gpt-4o-mini", 2).status,
        200,
        "the new config serves"
    );

    let (status, body, id, ended_at) = stream.join().unwrap();
    assert!(
        ended_at > reloaded_at,
        "the reloads happened while the stream was open"
    );
    assert_eq!(status, 200);
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(content_events(&body), 20, "every token arrived: {body}");
    // And it was metered in full.
    eventually("the stream's decision", || {
        let r = admin_get(admin, "/admin/decisions?project=p1&limit=10");
        r.json()["decisions"].as_array().unwrap().iter().any(|d| {
            d["id"] == id.as_str()
                && d["completion_tokens"] == 20
                && d["usage_source"] == "reported"
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Stopping

#[test]
fn sigterm_lets_a_stream_finish_exits_0_and_the_ledger_has_its_spend() {
    let mock = Mock::start();
    let (mut gw, _admin) = start_admin(&standard_config(&mock));
    let (tx, rx) = mpsc::channel();
    let stream = slow_stream(&gw, tx);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    gw.signal("TERM");
    let (status, body, id, _) = stream.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream finished: {body}"
    );
    assert_eq!(content_events(&body), 20);
    // grace_period_s = 5: Pingora waits it out, then stops its runtimes (2 s) and we flush.
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );

    let db = rusqlite::Connection::open(gw.dir.path().join("ledger.db")).unwrap();
    let (tokens, source, cost): (i64, String, i64) = db
        .query_row(
            "SELECT completion_tokens, usage_source, cost_nanos FROM decisions WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap_or_else(|e| panic!("decision {id} on disk: {e}"));
    assert_eq!((tokens, source.as_str()), (20, "reported"));
    assert!(cost > 0);
    let spent: i64 = db
        .query_row(
            "SELECT SUM(spent_nanos) FROM spend WHERE project = 'p1' AND period = 'total'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        spent, cost,
        "the stream's cost is the project's spend on disk"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd notifications

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
struct NotifySocket {
    _dir: tempfile::TempDir,
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            _dir: dir,
            sock,
            path,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message, waiting up to `within`.
    fn recv(&self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn expect(&self, what: &str, within: Duration) -> String {
        self.recv(within)
            .unwrap_or_else(|| panic!("no notification ({what}) within {within:?}"))
    }
}

#[test]
fn systemd_hears_ready_once_accepting_reloading_around_reloads_and_stopping_on_sigterm() {
    let mock = Mock::start();
    let notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "grace_period_s = 1", &standard_config(&mock));
    let mut env = provider_env();
    env.push(("NOTIFY_SOCKET", notify.path()));
    let mut gw = Gateway::spawn_on(&config, &[], &env);

    let ready = notify.expect("READY", Duration::from_secs(20));
    assert_eq!(ready, format!("READY=1\nMAINPID={}", gw.pid()));
    // The address it got (reported before READY=1; nothing here waits for the listener).
    gw.wait_listening();
    // READY=1 promises a listener that accepts: the first request after it must succeed.
    let r = chat_as(&gw, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200, "{}", r.body);

    // A reload is bracketed by RELOADING=1 (with the monotonic time) and READY=1.
    let before = tollgate::monotonic_usec().unwrap();
    gw.signal("HUP");
    let reloading = notify.expect("RELOADING", Duration::from_secs(10));
    let after = tollgate::monotonic_usec().unwrap();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let us: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    assert!(
        (before..=after).contains(&us),
        "{before} <= {us} <= {after}"
    );
    assert!(notify
        .expect("READY after reload", Duration::from_secs(10))
        .starts_with("READY=1\n"));

    // A rejected reload also ends in READY=1: the old config serves on.
    let text = std::fs::read_to_string(&config).unwrap();
    rewrite(&config, &format!("{text}{BAD_ROUTE}"));
    gw.signal("HUP");
    assert!(notify
        .expect("RELOADING", Duration::from_secs(10))
        .starts_with("RELOADING=1\n"));
    assert!(notify
        .expect("READY", Duration::from_secs(10))
        .starts_with("READY=1\n"));
    assert_eq!(chat_as(&gw, KEY, "gpt-4o-mini", 2).status, 200);

    gw.signal("TERM");
    assert_eq!(
        notify.expect("STOPPING", Duration::from_secs(10)),
        "STOPPING=1"
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.log()
    );
    assert_eq!(
        notify.recv(Duration::from_millis(100)),
        None,
        "nothing after STOPPING=1"
    );
}

// ---------------------------------------------------------------------------------------------
// Zero-downtime binary upgrade

#[derive(Default)]
struct LoadResults {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Sequential requests through the gateway until `stop` (or a hard cap): even ones on one
/// keep-alive connection, odd ones each on a new connection.
fn run_load(url: String, stop: Arc<AtomicBool>, out: Arc<LoadResults>) {
    let keep_alive = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let fresh;
        let client = if i % 2 == 0 {
            &keep_alive
        } else {
            fresh = agent();
            &fresh
        };
        let res = client
            .post(&url)
            .set("x-api-key", KEY)
            .send_string(&chat("gpt-4o-mini", 2));
        let outcome = match res {
            Ok(r) => {
                let status = r.status();
                let mut body = String::new();
                match r.into_reader().read_to_string(&mut body) {
                    Ok(_) if status == 200 && body.contains("chat.completion") => Ok(()),
                    Ok(_) => Err(format!("status {status}: {body}")),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(ureq::Error::Status(s, r)) => Err(format!(
                "status {s}: {}",
                r.into_string().unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                out.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => out.failures.lock().unwrap().push(format!(
                "request {i} ({}): {e}",
                if i % 2 == 0 {
                    "keep-alive"
                } else {
                    "new connection"
                }
            )),
        }
        i += 1;
        // Pace the load so it spans the hand-over without flooding the machine.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One request on a raw keep-alive connection; returns the response's head (lower-cased) and,
/// with `wait_close`, whether the server closed the connection after it.
fn raw_chat(conn: &mut std::net::TcpStream, key: &str, wait_close: bool) -> (String, bool) {
    use std::io::Write as _;
    let body = chat("gpt-4o-mini", 2);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, length) = loop {
        let n = conn.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            break (head, end + 4 + length);
        }
    };
    while buf.len() < length {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(buf.len(), length, "one response");
    if !wait_close {
        return (head, false);
    }
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = matches!(conn.read(&mut chunk), Ok(0));
    (head, closed)
}

#[test]
fn a_binary_upgrade_hands_the_sockets_over_without_a_failed_request() {
    let mock = Mock::start();
    let notify = NotifySocket::new();
    let sock_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = sock_dir.path().join("upgrade.sock");
    let extra = format!(
        "upgrade_sock = \"{}\"\ngrace_period_s = 1",
        upgrade_sock.display()
    );
    let mut env = provider_env();
    env.push(("NOTIFY_SOCKET", notify.path()));
    let mut old = Gateway::start_with(&standard_config(&mock), &extra, &env);
    assert!(notify
        .expect("READY from the old process", Duration::from_secs(10))
        .starts_with("READY=1\n"));

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(LoadResults::default());
    let load = {
        let (url, stop, results) = (
            old.url("/v1/chat/completions"),
            stop.clone(),
            results.clone(),
        );
        std::thread::spawn(move || run_load(url, stop, results))
    };
    let ok_now = || results.ok.load(Ordering::Relaxed);
    eventually("load running", || ok_now() >= 20);

    // The successor binds the upgrade socket and waits there for the listeners...
    let mut new = Gateway::spawn_on(&old.config_path, &["--upgrade"], &env);
    eventually("successor waiting for the sockets", || {
        upgrade_sock.exists()
    });
    // A keep-alive connection to the old process, kept open across the hand-over.
    let mut kept = std::net::TcpStream::connect(old.addr).unwrap();
    let (head, _) = raw_chat(&mut kept, KEY, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // ...which the old process sends on SIGQUIT, then it drains and exits.
    old.signal("QUIT");
    let ready = notify.expect("READY from the successor", Duration::from_secs(15));
    assert_eq!(ready, format!("READY=1\nMAINPID={}", new.pid()));
    // From the hand-over on, the old process closes each connection after its answer, so
    // clients move to the successor between requests rather than having an idle connection
    // dropped under their next one when the old process's graceful shutdown starts.
    let (head, closed) = raw_chat(&mut kept, KEY, true);
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        closed,
        "the old process closes the connection after its answer"
    );
    // The config says port 0: the successor reports the socket it took over, not a new one.
    new.wait_listening();
    assert_eq!(
        new.addr, old.addr,
        "the successor serves on the old address"
    );
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let served_before_exit = ok_now();
    eventually("the successor serves alone", || {
        ok_now() >= served_before_exit + 50
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let failures = results.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the hand-over: {failures:#?}\nold log:\n{}\nnew log:\n{}",
        failures.len(),
        failures.len() + ok_now(),
        old.log(),
        new.log()
    );
    let old_log = old.log();
    assert!(old_log.contains("listener sockets sent"), "{old_log}");
    // The load crossed the hand-over: the old process kept serving after SIGQUIT (its
    // keep-alive connection, and accepts during Pingora's 5 s close timeout) before it closed.
    let quit_at = old_log
        .find("SIGQUIT received")
        .expect("SIGQUIT in the old log");
    let served_after_quit = old_log[quit_at..].matches(" id=").count();
    assert!(served_after_quit > 0, "{old_log}");
    eprintln!(
        "hand-over: {} requests, the old process served {served_after_quit} after SIGQUIT",
        ok_now()
    );
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the successor runs: {}",
        new.log()
    );
    let r = chat_as(&new, KEY, "gpt-4o-mini", 2);
    assert_eq!(r.status, 200);
    // The successor served it (its access line is written right after the response).
    new.access_line(&r.request_id());
    // The old process never told systemd STOPPING=1 (that would stop the successor too)...
    let mut seen = Vec::new();
    while let Some(m) = notify.recv(Duration::from_millis(200)) {
        seen.push(m);
    }
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    // ...while the successor's own stop does.
    new.signal("TERM");
    assert_eq!(
        notify.expect("STOPPING", Duration::from_secs(10)),
        "STOPPING=1"
    );
    assert_eq!(
        new.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        new.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 18: the hand-over keeps every budget exact

/// claude-sonnet-4 in the standard config: $3/M input, $15/M output, in nanos per token.
const SONNET_IN: u64 = 3_000;
const SONNET_OUT: u64 = 15_000;

/// What the mock served (what each recorded Messages request truly cost, as the gateway
/// charges it from the reported usage).
fn served_cost(mock: &Mock) -> i64 {
    mock.requests()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("")).expect("body");
            let prompt = r["prompt_tokens"].as_u64().expect("prompt_tokens");
            let asked = req_header(r, "x-mock-tokens")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(8);
            let completion = asked.min(body["max_tokens"].as_u64().unwrap_or(u64::MAX));
            (prompt * SONNET_IN + completion * SONNET_OUT) as i64
        })
        .sum()
}

/// One Messages request for 1000 output tokens, the mock answering after `latency_ms`, on a
/// new connection: (status, error code).
fn sonnet_at(base: &str, latency_ms: u64) -> (u16, String) {
    let l = latency_ms.to_string();
    match try_request(
        "POST",
        &format!("{base}/v1/messages"),
        &[
            ("x-api-key", KEY),
            ("x-mock-tokens", "1000"),
            ("x-mock-latency-ms", &l),
        ],
        Some(chat("claude-sonnet-4", 1000).as_bytes()),
    ) {
        Ok(r) => {
            let code = serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default();
            (r.status, code)
        }
        Err(e) => (0, e),
    }
}

fn usd_nanos(v: &Value) -> i64 {
    (v.as_f64().unwrap_or(f64::NAN) * 1e9).round() as i64
}

#[test]
fn a_binary_upgrade_keeps_the_budget_exact_and_carries_a_freeze_over() {
    // One worst case ≈ $0.0153 (prompt bound + 1000 output tokens); $0.16 fits ten.
    let limit_usd = 0.16;
    let limit = (limit_usd * 1e9) as i64;
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = sock_dir.path().join("upgrade.sock");
    let body = body_with_projects(
        &mock,
        &format!(
            "[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = {limit_usd}, period = \"total\" }}\n\
             [[projects]]\nid = \"p2\"\nkeys = [\"{KEY2}\"]\n"
        ),
    );
    let extra = format!(
        "{ADMIN_EXTRA}upgrade_sock = \"{}\"\ngrace_period_s = 10",
        upgrade_sock.display()
    );
    let mut old = Gateway::start_with(&body, &extra, &env_with_admin());
    let base = old.url("");
    let old_admin = old.admin_port();

    // Six requests in flight on the old process when the hand-over comes.
    let first: Vec<_> = (0..6)
        .map(|_| {
            let b = base.clone();
            std::thread::spawn(move || sonnet_at(&b, 2500))
        })
        .collect();
    eventually("six requests in flight upstream", || mock.count() >= 6);

    let mut new = Gateway::spawn_on(&old.config_path, &["--upgrade"], &env_with_admin());
    let ledger_sock = PathBuf::from(format!("{}.ledger", upgrade_sock.display()));
    eventually("the successor waits, its hand-over socket open", || {
        upgrade_sock.exists() && ledger_sock.exists()
    });
    // A freeze set on the old process after the successor read the store.
    let r = admin_post(old_admin, "/admin/projects/p2/freeze");
    assert_eq!(r.status, 200, "{}", r.body);
    old.signal("QUIT");
    // More requests while both processes run: new connections land on either.
    let second: Vec<_> = (0..24)
        .map(|i| {
            let b = base.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(80 * i));
                sonnet_at(&b, 200)
            })
        })
        .collect();
    let outcomes: Vec<(u16, String)> = first
        .into_iter()
        .chain(second)
        .map(|t| t.join().expect("client"))
        .collect();
    new.wait_listening();
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    for (s, code) in &outcomes {
        assert!(
            *s == 200 || (*s == 402 && code == "budget_exceeded"),
            "only 200 or 402 across the hand-over: {s} {code}\nold:\n{}\nnew:\n{}",
            old.log(),
            new.log()
        );
    }
    assert!(ok >= 6, "the six in flight finish: {ok}");
    assert!(ok <= 10, "ten worst cases fit, {ok} were admitted");
    assert_eq!(
        mock.count(),
        ok as u64,
        "no refused request reached the provider"
    );
    let old_log = old.log();
    assert!(
        old_log.contains("took the ledger"),
        "the old process handed its ledger over: {old_log}"
    );

    // After the old process is gone: the successor's figures are every charge of both.
    let served = served_cost(&mock);
    assert!(served <= limit, "served {served} > limit {limit}");
    let p = project(new.admin_port(), "p1");
    assert_eq!(usd_nanos(&p["spent_usd"]), served, "{p}");
    assert_eq!(usd_nanos(&p["reserved_usd"]), 0, "{p}");
    // Both processes run on the one store of the config (in the old one's directory).
    let db = rusqlite::Connection::open(old.dir.path().join("ledger.db")).unwrap();
    eventually("the store has every charge", || {
        db.query_row(
            "SELECT COALESCE(SUM(spent_nanos), 0) FROM spend WHERE project = 'p1' AND period = 'total'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
            == served
    });

    // The freeze set on the old process holds on the successor.
    let (status, code) = {
        let r = chat_as(&new, KEY2, "gpt-4o-mini", 2);
        let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
        (
            r.status,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!((status, code.as_str()), (403, "project_frozen"));
    new.signal("TERM");
    assert_eq!(
        new.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        new.log()
    );
}

/// Issue 18: SIGUSR2 is the whole upgrade in one signal, as a service manager can send it
/// (`systemctl kill -s SIGUSR2 --kill-whom=main tollgate`): the process starts its successor
/// (the binary at its own path, same config, `--upgrade`), hands over, and exits; the
/// successor's `READY=1` names its own `MAINPID` (the unit has `NotifyAccess=all`); the old
/// process never says `STOPPING=1`; no request fails.
#[test]
fn sigusr2_starts_the_successor_and_hands_over_as_a_service_manager_expects() {
    let mock = Mock::start();
    let notify = NotifySocket::new();
    let sock_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = sock_dir.path().join("upgrade.sock");
    let extra = format!(
        "upgrade_sock = \"{}\"\ngrace_period_s = 1",
        upgrade_sock.display()
    );
    let mut env = provider_env();
    env.push(("NOTIFY_SOCKET", notify.path()));
    let mut old = Gateway::start_with(&standard_config(&mock), &extra, &env);
    assert!(notify
        .expect("READY from the old process", Duration::from_secs(10))
        .starts_with("READY=1\n"));
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(LoadResults::default());
    let load = {
        let (url, stop, results) = (
            old.url("/v1/chat/completions"),
            stop.clone(),
            results.clone(),
        );
        std::thread::spawn(move || run_load(url, stop, results))
    };
    let ok_now = || results.ok.load(Ordering::Relaxed);
    eventually("load running", || ok_now() >= 20);

    old.signal("USR2");
    let ready = notify.expect("READY from the successor", Duration::from_secs(20));
    let pid: u32 = ready
        .strip_prefix("READY=1\nMAINPID=")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("READY with the successor's MAINPID: {ready:?}"));
    assert_ne!(pid, old.pid(), "the successor is another process");
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let served_before_exit = ok_now();
    eventually("the successor serves alone", || {
        ok_now() >= served_before_exit + 50
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let failures = results.failures.lock().unwrap().clone();
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let stop_successor = || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    };
    if !failures.is_empty() {
        stop_successor();
    }
    assert!(
        failures.is_empty(),
        "{} requests failed across the SIGUSR2 upgrade: {failures:#?}\n{}",
        failures.len(),
        old.log()
    );
    let log = old.log();
    assert!(log.contains("SIGUSR2: started the successor"), "{log}");
    let mut seen = Vec::new();
    while let Some(m) = notify.recv(Duration::from_millis(200)) {
        seen.push(m);
    }
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    assert!(alive(), "the successor runs");
    stop_successor();
    assert_eq!(
        notify.expect("STOPPING from the successor", Duration::from_secs(10)),
        "STOPPING=1"
    );
    eventually("the successor exits", || {
        !alive() || {
            // A zombie (its parent, the old process, is gone: reaped by init) counts as gone.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        }
    });
}
