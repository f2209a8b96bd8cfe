//! systemd's readiness protocol (`sd_notify(3)`), std only.
//!
//! Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract socket written with a leading `@`) and waits for `READY=1` before it considers the
//! service started. [`reloading`] and [`ready`] bracket a config reload, so `systemctl reload`
//! returns once the new config is in place (or was rejected and the old one serves again);
//! [`stopping`] tells systemd a graceful stop has begun.
//!
//! Without the variable every function does nothing. Nothing here panics, and a failure to
//! notify is logged and otherwise ignored: readiness is a courtesy to the service manager,
//! never a reason to stop serving.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// `READY=1`: the listeners accept connections (also sent after every reload). It carries
/// `MAINPID=` so that, in a binary upgrade under systemd with `NotifyAccess=all`, the new
/// process becomes the service's main process (for the process systemd started, it changes
/// nothing).
pub fn ready() {
    notify(&ready_message());
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC, µs), as `sd_notify(3)` asks for.
pub fn reloading() {
    notify(&reloading_message());
}

/// `STOPPING=1`: a graceful stop has begun.
pub fn stopping() {
    notify("STOPPING=1");
}

fn ready_message() -> String {
    format!("READY=1\nMAINPID={}", std::process::id())
}

fn reloading_message() -> String {
    match monotonic_usec() {
        Some(us) => format!("RELOADING=1\nMONOTONIC_USEC={us}"),
        None => "RELOADING=1".to_string(),
    }
}

/// Send `state` to `$NOTIFY_SOCKET`. Returns whether a datagram was sent; `false` without the
/// variable (the usual case outside systemd) or on failure (logged).
pub fn notify(state: &str) -> bool {
    notify_to(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

/// [`notify`] to an explicit socket address (the value `$NOTIFY_SOCKET` would hold).
pub fn notify_to(socket: Option<&OsStr>, state: &str) -> bool {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return false;
    };
    match send(socket, state.as_bytes()) {
        Ok(()) => {
            log::debug!("sd_notify: {}", state.replace('\n', " "));
            true
        }
        Err(e) => {
            log::warn!(
                "cannot notify the service manager at NOTIFY_SOCKET={}: {e}",
                socket.to_string_lossy()
            );
            false
        }
    }
}

fn send(socket: &OsStr, msg: &[u8]) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = match bytes.first() {
        Some(b'/') => sock.send_to(msg, socket)?,
        Some(b'@') => send_abstract(&sock, &bytes[1..], msg)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unsupported address {:?}: expected an absolute path or @abstract",
                    OsString::from(socket)
                ),
            ))
        }
    };
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short datagram: {sent} of {} bytes", msg.len()),
        ));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_sock: &UnixDatagram, _name: &[u8], _msg: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// CLOCK_MONOTONIC in microseconds: the clock systemd compares `MONOTONIC_USEC` with.
/// `std::time::Instant` reads the same clock but does not expose its value, so this asks libc
/// (which std links anyway) directly.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn monotonic_usec() -> Option<u64> {
    use std::ffi::c_long;
    // `struct timespec` on Linux: time_t and long are both `long` on every Linux ABI Rust
    // supports without the 64-bit-time_t opt-in (which std does not use either).
    #[repr(C)]
    struct Timespec {
        tv_sec: c_long,
        tv_nsec: c_long,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 || ts.tv_nsec < 0 {
        return None;
    }
    Some((ts.tv_sec as u64).saturating_mul(1_000_000) + ts.tv_nsec as u64 / 1_000)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn monotonic_usec() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receiver() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, sock, path.into_os_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_state_reaches_a_path_socket_as_one_datagram() {
        let (_dir, sock, path) = receiver();
        assert!(notify_to(Some(&path), "READY=1\nSTATUS=serving"));
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
        assert!(notify_to(Some(&path), "STOPPING=1"));
        assert_eq!(recv(&sock), "STOPPING=1", "one datagram per message");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_means_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tollgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let var = OsString::from(format!("@{name}"));
        assert!(notify_to(Some(&var), "READY=1"));
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn no_variable_or_a_bad_one_is_a_quiet_no_op() {
        assert!(!notify_to(None, "READY=1"));
        assert!(!notify_to(Some(OsStr::new("")), "READY=1"));
        assert!(!notify_to(Some(OsStr::new("relative/path")), "READY=1"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens-here");
        assert!(!notify_to(Some(missing.as_os_str()), "READY=1"));
        // An abstract name nobody bound: refused, not a panic.
        let nobody = format!("@tollgate-notify-nobody-{}", std::process::id());
        assert!(!notify_to(Some(OsStr::new(&nobody)), "READY=1"));
    }

    #[test]
    fn monotonic_usec_is_the_monotonic_clock_and_advances() {
        let a = monotonic_usec().expect("CLOCK_MONOTONIC");
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec().unwrap();
        let d = b - a;
        assert!(
            (15_000..5_000_000).contains(&d),
            "advanced {d} µs over a 20 ms sleep"
        );
        // /proc/uptime is CLOCK_BOOTTIME, which is CLOCK_MONOTONIC plus time spent suspended:
        // an upper bound that a wrong clock (realtime, a garbage struct layout) would break.
        let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::MAX);
        assert!(
            (a as f64) / 1e6 <= uptime_s + 1.0,
            "monotonic ({a} µs) never exceeds boot time ({uptime_s} s)"
        );
    }

    #[test]
    fn the_messages_have_the_sd_notify_shape() {
        let pid = std::process::id();
        assert_eq!(ready_message(), format!("READY=1\nMAINPID={pid}"));
        let before = monotonic_usec().unwrap();
        let msg = reloading_message();
        let after = monotonic_usec().unwrap();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1", "{msg}");
        let us: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{msg}"))
            .parse()
            .unwrap();
        assert!(
            (before..=after).contains(&us),
            "{before} <= {us} <= {after}"
        );
        assert_eq!(lines.len(), 2);
    }
}
