//! The access log, off the request path.
//!
//! A finished request formats its line (`tollgate::access`, README "Access log") and hands it
//! to a bounded queue; one thread, `tollgate-access`, writes the lines to stderr in the order
//! they came: in batches, in env_logger's layout, when stderr is not a terminal (one `write`
//! per batch instead of one per request), else through `log` one by one. The request never
//! waits for stderr: when stderr is slow (a backed-up journald, a full pipe) and the queue is
//! full, the line is dropped and counted in `tollgate_access_log_dropped_total`, and the
//! request goes on. The decision record, not the access log, is what must never be lost; it
//! has its own writer.
//!
//! Before [`start`] (tests, `tollgate check`) or after the thread is gone, a line is written
//! directly, as before.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use once_cell::sync::OnceCell;

/// Lines the queue holds (about 300 bytes each: a few MiB at most).
pub const QUEUE_LINES: usize = 16_384;

enum Msg {
    Line(String),
    /// Everything queued before this has been written: answer on the channel.
    Flush(SyncSender<()>),
}

static QUEUE: OnceCell<SyncSender<Msg>> = OnceCell::new();

/// Whether access lines are logged at all (`RUST_LOG` lets `tollgate::access` at `info`
/// through): a request builds its line only then.
pub fn enabled() -> bool {
    log::log_enabled!(target: "tollgate::access", log::Level::Info)
}

/// Start the writer thread (once; later calls do nothing). If the thread cannot be started,
/// lines are written directly.
pub fn start() {
    QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        if let Err(e) = std::thread::Builder::new()
            .name("tollgate-access".into())
            .spawn(move || write_lines(rx))
        {
            log::warn!("access log thread not started ({e}): lines are written by the requests");
        }
        tx
    });
}

/// After the writer has written everything queued, it lets lines gather this long before it
/// looks again: a busy gateway then wakes it and calls `write(2)` once per batch, not once per
/// line (each of which cost a wake-up and a system call: 19 µs of CPU per chat request and 48
/// per stream in `bench.py`'s `tollgate-logged`).
const GATHER: Duration = Duration::from_millis(5);
/// A batch is written once it holds this much (the rest of the queue follows at once).
const BATCH_BYTES: usize = 64 * 1024;

fn write_lines(rx: Receiver<Msg>) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        // A person is watching: env_logger's own lines (colours included), one by one.
        for msg in rx {
            match msg {
                Msg::Line(line) => log::info!(target: "tollgate::access", "{line}"),
                Msg::Flush(done) => {
                    log::logger().flush();
                    let _ = done.send(());
                }
            }
        }
        return;
    }
    let mut out = Vec::with_capacity(BATCH_BYTES + 4096);
    let mut stamp = Stamp::default();
    while let Ok(first) = rx.recv() {
        let mut flushes = Vec::new();
        let mut next = Some(first);
        let mut drained = false;
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => stamp.push_line(&mut out, crate::clock::unix_secs(), &line),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if out.len() < BATCH_BYTES {
                let m = rx.try_recv().ok();
                drained = m.is_none();
                m
            } else {
                None
            };
        }
        if !out.is_empty() {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&out);
            let _ = err.flush();
            out.clear();
        }
        for done in flushes {
            let _ = done.send(());
        }
        if drained {
            std::thread::sleep(GATHER);
        }
    }
}

/// The access line as env_logger's default format writes it (`[2026-12-03T18:33:57Z INFO
/// tollgate::access] id=…`, UTC to the second, the level padded to five), with the time
/// formatted once per second.
#[derive(Default)]
struct Stamp {
    secs: i64,
    text: Vec<u8>,
}

impl Stamp {
    fn push_line(&mut self, out: &mut Vec<u8>, now_secs: i64, line: &str) {
        if self.text.is_empty() || now_secs != self.secs {
            self.secs = now_secs;
            self.text.clear();
            let mut buf = [0u8; 24];
            let ms = now_secs.saturating_mul(1000);
            match crate::engine::time::rfc3339_millis_into(ms, &mut buf) {
                // `YYYY-MM-DDTHH:MM:SS` of `YYYY-MM-DDTHH:MM:SS.mmmZ`, then `Z`.
                Some(t) => self.text.extend_from_slice(&t.as_bytes()[..19]),
                None => {
                    let t = crate::engine::time::rfc3339_millis(ms);
                    let t = t.strip_suffix(".000Z").unwrap_or(&t);
                    self.text.extend_from_slice(t.as_bytes())
                }
            }
        }
        out.push(b'[');
        out.extend_from_slice(&self.text);
        out.extend_from_slice(b"Z INFO  tollgate::access] ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Hand `line` to the writer; never blocks.
pub fn emit(line: String) {
    let Some(tx) = QUEUE.get() else {
        log::info!(target: "tollgate::access", "{line}");
        return;
    };
    match offer(tx, line) {
        Offered::Queued => {}
        Offered::Dropped => {
            if let Some(m) = crate::metrics::get() {
                m.access_log_dropped.inc();
            }
        }
        Offered::WriterGone(line) => log::info!(target: "tollgate::access", "{line}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Offered {
    Queued,
    /// The queue was full.
    Dropped,
    WriterGone(String),
}

fn offer(tx: &SyncSender<Msg>, line: String) -> Offered {
    match tx.try_send(Msg::Line(line)) {
        Ok(()) => Offered::Queued,
        Err(TrySendError::Full(_)) => Offered::Dropped,
        Err(TrySendError::Disconnected(Msg::Line(line))) => Offered::WriterGone(line),
        Err(TrySendError::Disconnected(Msg::Flush(_))) => Offered::WriterGone(String::new()),
    }
}

/// Wait (at most `timeout`) until every line queued so far is written: at shutdown, so the
/// last requests' lines are not lost with the process.
pub fn flush(timeout: Duration) {
    let Some(tx) = QUEUE.get() else { return };
    let (done_tx, done_rx) = sync_channel(1);
    let deadline = std::time::Instant::now() + timeout;
    let mut msg = Msg::Flush(done_tx);
    // The queue may be full: retry until there is room or the time is up.
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let _ = done_rx.recv_timeout(left);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_line_has_env_loggers_default_layout() {
        let mut out = Vec::new();
        let mut st = Stamp::default();
        // 2026-12-03T18:33:57Z
        let t =
            crate::engine::time::days_from_civil(2026, 12, 3) * 86_400 + 18 * 3600 + 33 * 60 + 57;
        st.push_line(&mut out, t, "id=1 status=200");
        st.push_line(&mut out, t + 1, "id=2");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2026-12-03T18:33:57Z INFO  tollgate::access] id=1 status=200\n\
             [2026-12-03T18:33:58Z INFO  tollgate::access] id=2\n"
        );
    }

    #[test]
    fn the_writer_answers_a_flush_after_the_lines_before_it_and_stops_with_its_queue() {
        // The real thread function (the lines go to the test's stderr); the end-to-end tests
        // read the lines a gateway writes, in order, from its stderr.
        let (tx, rx) = sync_channel(QUEUE_LINES);
        for i in 0..3 {
            tx.send(Msg::Line(format!("n={i}"))).unwrap();
        }
        let (done_tx, done_rx) = sync_channel(1);
        tx.send(Msg::Flush(done_tx)).unwrap();
        let h = std::thread::spawn(move || write_lines(rx));
        assert!(done_rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drop(tx);
        h.join().unwrap();
    }

    #[test]
    fn a_full_queue_drops_the_line_at_once_and_keeps_the_order_of_the_rest() {
        let (tx, rx) = sync_channel(2);
        assert_eq!(offer(&tx, "a".into()), Offered::Queued);
        assert_eq!(offer(&tx, "b".into()), Offered::Queued);
        // Nobody reads (stderr is stuck): the third is dropped, without waiting.
        let t = std::time::Instant::now();
        assert_eq!(offer(&tx, "c".into()), Offered::Dropped);
        assert!(t.elapsed() < Duration::from_secs(1));
        let lines: Vec<String> = rx
            .try_iter()
            .map(|m| match m {
                Msg::Line(l) => l,
                Msg::Flush(_) => unreachable!("no flush was sent"),
            })
            .collect();
        assert_eq!(lines, ["a", "b"]);
        drop(rx);
        assert_eq!(offer(&tx, "d".into()), Offered::WriterGone("d".into()));
    }
}
