//! The access log, off the request path.
//!
//! A finished request formats its line (`tollgate::access`, README "Access log") and hands it
//! to a bounded queue; one thread, `tollgate-access`, writes the lines through `log`
//! (env_logger, stderr) in the order they came. The request never waits for stderr: when
//! stderr is slow (a backed-up journald, a full pipe) and the queue is full, the line is
//! dropped and counted in `tollgate_access_log_dropped_total`, and the request goes on. The
//! decision record, not the access log, is what must never be lost; it has its own writer.
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

fn write_lines(rx: Receiver<Msg>) {
    for msg in rx {
        match msg {
            Msg::Line(line) => log::info!(target: "tollgate::access", "{line}"),
            Msg::Flush(done) => {
                log::logger().flush();
                let _ = done.send(());
            }
        }
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
