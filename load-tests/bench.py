#!/usr/bin/env python3
"""Tollgate against the physical limit of one proxy hop and against the gateways users would
pick instead, measured in one run on one machine.

Targets, all forwarding to the same mock provider on loopback:
  direct    the mock itself (the ceiling; no hop)
  nginx     nginx as a plain keep-alive reverse proxy, one worker (the limit of one proxy hop)
  pingora   a Pingora proxy that does nothing but forward (load-tests/bare_pingora.rs): the
            floor of the framework Tollgate is built on, on the same settings
  tollgate  Tollgate with everything on: key auth, body parse, policy with the secret detectors
            and a block pattern, output cap, budget reservation and settlement, rate limits,
            usage counting, SQLite ledger with a decision record per request, metrics
  litellm   the LiteLLM proxy (PyPI), when it can be installed   } see load-tests/peers.py
  portkey   the Portkey gateway (npm), when it can be installed  }

Parts of one run (each bounded in time, loopback only, everything started is stopped):
  1. throughput: the same wrk load (keep-alive POST, C connections, S seconds) against every
     target, non-streaming and streaming chat, in R rounds interleaved so machine drift hits all
     alike. Per target: requests/s (median of rounds), ratio to nginx, p50/p99 latency and what
     it adds over direct, CPU time per request and peak RSS of its processes, errors.
  2. sequential overhead: one client, one keep-alive connection per target, requests
     interleaved across targets; the median of per-round medians of the total latency (chat)
     and of the time to the first streamed event (stream), and what each adds over direct.
  3. memory: N concurrent streams held open against a slow mock (peak RSS, streams in flight),
     then a soak at steady load whose RSS is sampled every second (slope after warm-up).

Usage: load-tests/bench.py [--seconds S] [--rounds R] [--connections C] [--peers auto|none|LIST]
                           [--streams N] [--soak-seconds T] [--smoke] [--no-write] [--bin-dir DIR]
Needs: release binaries (cargo build --release --bins --example bare_pingora), wrk and nginx
(apt-get install wrk nginx-light); peers are installed on first use into load-tests/.peers/.
Writes load-tests/RESULTS.md (unless --smoke or --no-write, or --peers none without
--write-without-peers, which would drop the peers' rows) and prints the same tables.
Exit status 1 when any request failed.
"""
import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from harness import KEY, REL, ROOT, free_port, read_response, tollgate_toml, wait_port

ADMIN_TOKEN = "bench-admin-token"
PROMPT = "Say hello to the benchmark."
BODIES = {
    "chat": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":16}' % PROMPT,
    "stream": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":16,'
              '"stream":true}' % PROMPT,
}
# The memory test's streams: 200 tokens, one every 50 ms from the slow mock, so ~10 s each.
LONG_STREAM = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":200,'
               '"stream":true}' % PROMPT)
SLOW_CHUNK_MS = 50

# The targets, checked at the end.
TARGETS = {
    "throughput": 0.8,      # x nginx, chat and stream
    "p99": 1.25,            # x nginx's p99
    "litellm": 50.0,        # x LiteLLM's throughput
    "portkey": 20.0,        # x Portkey's throughput
    "seq_added_ms": 0.2,    # median added latency, sequential
    "ttft_added_p99_ms": 1.0,
    "rss_mib": 64.0,        # standard load
    "rss_streams_mib": 160.0,  # 2,000 open streams
    "four_accounts_cost": 0.03,  # throughput lost reserving on four accounts instead of one
}


# ---------------------------------------------------------------------------------------------
# processes

def pgroup_pids(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def cpu_seconds(pgid):
    """User + system CPU of every live process in the group (children it reaped included)."""
    total = 0.0
    for pid in pgroup_pids(pgid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def mem_mib(pgid, field):
    """Sum of a /proc status field (VmRSS, VmHWM) over the group, in MiB."""
    total = 0
    for pid in pgroup_pids(pgid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Procs:
    """Everything the run starts, each in its own process group, all killed at the end."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def adopt(self, p):
        self.procs.append(p)
        return p

    def stop(self, p):
        try:
            os.killpg(p.pid, 9)
        except OSError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def start_mock(procs, extra=(), tokens=16):
    # The mock's reply length is `--tokens` (capped by the body's max_tokens): 16 for BODIES.
    p = procs.start([os.path.join(REL, "mock-provider"), "--listen", "127.0.0.1:0", "--threads", "1",
                     "--no-record", "--tokens", str(tokens), *extra], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    if len(line) != 2 or line[0] != "LISTENING":
        sys.exit("mock-provider did not start")
    return p, line[1]


def start_nginx(procs, tmp, upstream, name="nginx"):
    port = free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
http {{
  access_log off;
  client_body_temp_path {d};
  proxy_temp_path {d};
  upstream mock {{ server {upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 60s;
    }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = procs.start([nginx, "-c", conf, "-p", d], stderr=subprocess.DEVNULL)
    wait_port(port, p, name)
    return p, port


def start_pingora(procs, upstream):
    port = free_port()
    p = procs.start([os.path.join(REL, "examples", "bare_pingora"), f"127.0.0.1:{port}", upstream],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, "bare_pingora")
    return p, port


def start_tollgate(procs, tmp, upstream, name="tollgate", accounts=1, cache=False, log="warn"):
    """`log` is Tollgate's RUST_LOG: `warn` leaves the access log out; `info`, the shipped
    default (the systemd unit's), writes one line per request to stderr (here a file)."""
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "tollgate.toml")
    with open(conf, "w") as f:
        f.write(tollgate_toml(port, upstream, os.path.join(d, "ledger.db"), admin, accounts=accounts,
                              cache=cache))
    env = dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG=log)
    log = open(os.path.join(d, "tollgate.log"), "w")
    p = procs.start([os.path.join(REL, "tollgate"), "serve", "--config", conf], env=env,
                    stdout=subprocess.DEVNULL, stderr=log)
    wait_port(port, p, name)
    return p, port, admin


# ---------------------------------------------------------------------------------------------
# load with wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def lua_script(path, body, headers):
    esc = body.replace("\\", "\\\\").replace('"', '\\"')
    with open(path, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = "{esc}"\n')
        f.write('wrk.headers["content-type"] = "application/json"\n')
        for k, v in headers.items():
            f.write(f'wrk.headers["{k}"] = "{v}"\n')


def parse_wrk(out):
    def lat(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return {"n": int(n.group(1)) if n else 0, "rps": float(rps.group(1)) if rps else 0.0,
            "p50": lat("50"), "p99": lat("99"), "errors": errors}


def wrk(port, script, seconds, connections, threads=1, timeout_s=10):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"--timeout", f"{timeout_s}s", "-s", script,
                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, timeout=seconds + timeout_s + 30).stdout
    return parse_wrk(out)


# ---------------------------------------------------------------------------------------------
# sequential client on raw sockets (no client library in the numbers)

def sequential(targets, rounds, per_round):
    """Each gateway paired with direct: requests alternate direct, gateway, direct, ... on one
    keep-alive connection each, so both see the same machine state (a slow peer interleaved
    with a fast one would leave the CPU idle between requests and slow the next one down).
    Returns {mode: {gateway: {"direct": [...], "gw": [...], "first_direct": [...],
    "first_gw": [...], "errors": n}}} with per-round median latencies and all first-event
    times, in ms."""
    def connect(port, headers, mode):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = BODIES[mode].encode()
        h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{h}\r\n").encode() + body
        return s, req

    out = {}
    dport, dheaders = targets["direct"]
    for mode in ("chat", "stream"):
        out[mode] = {}
        for name, (port, headers) in targets.items():
            if name == "direct":
                continue
            pair = {"direct": connect(dport, dheaders, mode), "gw": connect(port, headers, mode)}
            res = {"direct": [], "gw": [], "first_direct": [], "first_gw": [], "errors": 0}
            for r in range(rounds + 1):  # round 0 warms up
                lat = {"direct": [], "gw": []}
                for _ in range(per_round):
                    for side, (sock, req) in pair.items():
                        t0 = time.perf_counter()
                        sock.sendall(req)
                        status, first, total = read_response(sock, t0)
                        if r == 0:
                            continue
                        res["errors"] += status != 200
                        lat[side].append(total * 1000)
                        res["first_" + side].append(first * 1000)
                if r > 0:
                    for side in lat:
                        res[side].append(statistics.median(lat[side]))
            for sock, _ in pair.values():
                sock.close()
            out[mode][name] = res
    return out


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# ---------------------------------------------------------------------------------------------
# memory

def in_flight(admin_port):
    try:
        s = socket.create_connection(("127.0.0.1", admin_port), timeout=2)
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        s.close()
        m = re.search(rb"^tollgate_requests_in_flight (\d+)", data, re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def sample_while(fn, interval, stop):
    out = []
    while not stop.is_set():
        out.append((time.time(), fn()))
        stop.wait(interval)
    return out


def slope_mib_per_min(samples):
    """Least-squares slope of (t, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return float("nan")
    t0 = samples[0][0]
    xs = [(t - t0) / 60 for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def memory_tests(procs, tmp, a, lines, verdicts):
    """2,000 open streams against a slow upstream, then a soak. Each on a fresh Tollgate."""
    slow, slow_addr = start_mock(procs, ["--chunk-delay-ms", str(SLOW_CHUNK_MS)], tokens=200)
    gw, port, admin = start_tollgate(procs, tmp, slow_addr, name="tollgate-streams")
    ng, ng_port = start_nginx(procs, tmp, slow_addr, name="nginx-streams")
    bare, bare_port = start_pingora(procs, slow_addr)
    script = os.path.join(tmp, "long-stream.lua")
    lua_script(script, LONG_STREAM, {"authorization": f"Bearer {KEY}"})
    bare_script = os.path.join(tmp, "long-stream-provider.lua")
    lua_script(bare_script, LONG_STREAM, {"authorization": "Bearer sk-bench"})
    stream_s = max(3, min(20, a.streams // 100))
    res = {}
    for name, p, pt in (("tollgate", gw, port), ("nginx", ng, ng_port), ("pingora", bare, bare_port)):
        stop = threading.Event()
        box = {}
        sampler = threading.Thread(target=lambda: box.setdefault(
            "s", sample_while(lambda: (in_flight(admin) if name == "tollgate" else None), 0.5, stop)))
        sampler.start()
        w = wrk(pt, script if name == "tollgate" else bare_script, stream_s, a.streams, threads=2, timeout_s=60)
        stop.set()
        sampler.join()
        flights = [v for _, v in box["s"] if v is not None]
        res[name] = (w, mem_mib(p.pid, "VmHWM"), max(flights) if flights else None)
    procs.stop(bare)
    procs.stop(ng)
    procs.stop(gw)
    procs.stop(slow)
    lines.append(f"\n### {a.streams} concurrent streams against a slow upstream\n")
    lines.append(f"Each stream is 200 tokens, one every {SLOW_CHUNK_MS} ms (~10 s), "
                 f"`wrk -t2 -c{a.streams} -d{stream_s}s`; a fresh process of each.\n")
    lines.append("| target | peak RSS MiB | most streams in flight (Tollgate's gauge) | streams completed | errors |")
    lines.append("|---|---|---|---|---|")
    for name, (w, hwm, fl) in res.items():
        lines.append(f"| {name} | {hwm:.1f} | {fl if fl is not None else '—'} | {w['n']} | {w['errors']} |")
    errors = sum(w["errors"] for w, _, _ in res.values())
    t_hwm = res["tollgate"][1]
    verdicts.append(("peak RSS with %d open streams ≤ %.0f MiB" % (a.streams, TARGETS["rss_streams_mib"]),
                     f"{t_hwm:.1f} MiB (pingora floor {res['pingora'][1]:.1f}, nginx {res['nginx'][1]:.1f})",
                     t_hwm <= TARGETS["rss_streams_mib"]))

    # Soak: steady load, RSS sampled every second; the first fifth is warm-up.
    mock, mock_addr = start_mock(procs)
    gw, port, admin = start_tollgate(procs, tmp, mock_addr, name="tollgate-soak")
    script = os.path.join(tmp, "soak.lua")
    lua_script(script, BODIES["chat"], {"authorization": f"Bearer {KEY}"})
    stop = threading.Event()
    box = {}
    sampler = threading.Thread(target=lambda: box.setdefault(
        "s", sample_while(lambda: mem_mib(gw.pid, "VmRSS"), 1.0, stop)))
    sampler.start()
    w = wrk(port, script, a.soak_seconds, a.connections)
    stop.set()
    sampler.join()
    samples = box["s"]
    warm = samples[len(samples) // 5:]
    slope = slope_mib_per_min(warm)
    procs.stop(gw)
    procs.stop(mock)
    errors += w["errors"]
    lines.append(f"\n### Soak: {a.soak_seconds} s of `wrk -t1 -c{a.connections}` (non-streaming) on Tollgate\n")
    lines.append("| requests | errors | RSS after warm-up MiB | RSS at end MiB | peak RSS MiB | slope after warm-up MiB/min |")
    lines.append("|---|---|---|---|---|---|")
    lines.append(f"| {w['n']} | {w['errors']} | {warm[0][1]:.1f} | {samples[-1][1]:.1f} | "
                 f"{max(v for _, v in samples):.1f} | {slope:+.3f} |")
    step = max(1, len(samples) // 8)
    marks = ", ".join(f"{t - samples[0][0]:.0f} s: {v:.1f}" for t, v in samples[::step])
    lines.append(f"\nRSS (MiB) through the soak: {marks}.")
    # Flat: less than 1 MiB per 10 minutes of steady load, or noise below 1 MiB in all.
    growth = warm[-1][1] - warm[0][1]
    flat = abs(slope) <= 0.1 or abs(growth) < 1.0
    verdicts.append(("RSS flat in the soak", f"{slope:+.3f} MiB/min, {growth:+.1f} MiB over "
                     f"{(warm[-1][0] - warm[0][0]):.0f} s", flat))
    return errors


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per target, round and mode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--peers", default="auto",
                    help="auto (install what can be), none, or a comma-separated list (litellm,portkey)")
    ap.add_argument("--seq-rounds", type=int, default=7)
    ap.add_argument("--seq-requests", type=int, default=40, help="requests per target per sequential round")
    ap.add_argument("--streams", type=int, default=2000, help="concurrent streams in the memory test")
    ap.add_argument("--soak-seconds", type=int, default=300)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds of everything, no peers, nothing written (CI keeps the harness alive)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--write-without-peers", action="store_true",
                    help="with --peers none, replace RESULTS.md anyway (by default such a run prints only)")
    ap.add_argument("--bin-dir", help="where tollgate, mock-provider and examples/bare_pingora are "
                                      "(default: target/release)")
    a = ap.parse_args()
    global REL
    if a.bin_dir:
        REL = os.path.abspath(a.bin_dir)
    if a.smoke:
        a.seconds, a.rounds, a.peers = 1, 1, "none"
        a.seq_rounds, a.seq_requests, a.streams, a.soak_seconds = 1, 5, 100, 4
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is needed: apt-get install wrk nginx-light")
    for b in ("tollgate", "mock-provider", os.path.join("examples", "bare_pingora")):
        if not os.path.exists(os.path.join(REL, b)):
            sys.exit(f"{os.path.join(REL, b)} is missing: cargo build --release --bins --example bare_pingora")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * a.streams + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * a.streams + 100:
        print(f"note: open-file limit {want} is low for {a.streams} streams", file=sys.stderr)

    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    procs = Procs()
    peer_notes = []
    try:
        mock, mock_addr = start_mock(procs)
        mport = int(mock_addr.rsplit(":", 1)[1])
        ng, ng_port = start_nginx(procs, tmp, mock_addr)
        bare, bare_port = start_pingora(procs, mock_addr)
        gw, gw_port, _ = start_tollgate(procs, tmp, mock_addr)
        gw4, gw4_port, _ = start_tollgate(procs, tmp, mock_addr, name="tollgate-4acct", accounts=4)
        gwc, gwc_port, _ = start_tollgate(procs, tmp, mock_addr, name="tollgate-cache", cache=True)
        gwl, gwl_port, _ = start_tollgate(procs, tmp, mock_addr, name="tollgate-logged", log="info")
        provider_auth = {"authorization": "Bearer sk-bench"}
        targets = {  # name: (port, headers, process whose group is measured)
            "direct": (mport, provider_auth, mock),
            "nginx": (ng_port, provider_auth, ng),
            "pingora": (bare_port, provider_auth, bare),
            "tollgate": (gw_port, {"authorization": f"Bearer {KEY}"}, gw),
            # The same, each request reserved on four accounts (two windows, a team, the key).
            "tollgate-4acct": (gw4_port, {"authorization": f"Bearer {KEY}"}, gw4),
            # The same with the shipped log level (`info`): an access line per request.
            "tollgate-logged": (gwl_port, {"authorization": f"Bearer {KEY}"}, gwl),
            # The response cache: every request a hit (the same body), or every one a miss
            # that is stored again (`refresh`: the key, the recording and the store, each time).
            "cache-hit": (gwc_port, {"authorization": f"Bearer {KEY}"}, gwc),
            "cache-miss": (gwc_port, {"authorization": f"Bearer {KEY}", "x-tollgate-cache": "refresh"}, gwc),
        }
        if a.peers != "none":
            import peers
            wanted = peers.PEERS if a.peers == "auto" else tuple(x for x in a.peers.split(",") if x)
            for name in wanted:
                why = peers.install(name, log=lambda m: print(m, file=sys.stderr))
                if why:
                    peer_notes.append(f"- {name}: not measured ({why})")
                    continue
                try:
                    p, port, headers = peers.start(name, mock_addr, tmp)
                except RuntimeError as e:
                    peer_notes.append(f"- {name}: not measured (did not start: {str(e).splitlines()[0]})")
                    continue
                procs.adopt(p)
                targets[name] = (port, headers, p)
                peer_notes.append(f"- {name}: {peers.version(name)}")

        # 1. throughput
        scripts = {}
        for mode, body in BODIES.items():
            for name, (port, headers, _) in targets.items():
                scripts[(mode, name)] = os.path.join(tmp, f"{mode}-{name}.lua")
                lua_script(scripts[(mode, name)], body, headers)
        results = {k: [] for k in scripts}
        cpu = {k: 0.0 for k in scripts}
        for r in range(a.rounds):
            for mode in BODIES:
                for name, (port, _, p) in targets.items():
                    before = cpu_seconds(p.pid)
                    res = wrk(port, scripts[(mode, name)], a.seconds, a.connections)
                    cpu[(mode, name)] += cpu_seconds(p.pid) - before
                    results[(mode, name)].append(res)
        rss = {name: mem_mib(p.pid, "VmHWM") for name, (_, _, p) in targets.items()}

        # 2. sequential overhead and time to first token
        seq = sequential({n: (port, h) for n, (port, h, _) in targets.items()}, a.seq_rounds, a.seq_requests)

        lines, verdicts, log_notes = [], [], []
        lines.append(f"### Throughput: `wrk -t1 -c{a.connections} -d{a.seconds}s`, {a.rounds} rounds interleaved\n")
        lines.append(f"| mode | target | req/s (median) | × nginx | p50 ms | p99 ms | added p50 ms | added p99 ms "
                     f"| CPU µs/req | peak RSS MiB | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        errors = 0
        med = {}
        for mode in BODIES:
            for t in targets:
                xs = results[(mode, t)]
                med[(mode, t)] = {k: statistics.median(x[k] for x in xs) for k in ("rps", "p50", "p99")}
                n = sum(x["n"] for x in xs)
                med[(mode, t)]["cpu_us"] = cpu[(mode, t)] / n * 1e6 if n else float("nan")
            for t in targets:
                m = med[(mode, t)]
                errs = sum(x["errors"] for x in results[(mode, t)])
                errors += errs
                ng_rps = med[(mode, "nginx")]["rps"]
                ratio = m["rps"] / ng_rps if ng_rps else float("nan")
                d = med[(mode, "direct")]
                added50 = "—" if t == "direct" else f"{m['p50'] - d['p50']:.3f}"
                added99 = "—" if t == "direct" else f"{m['p99'] - d['p99']:.3f}"
                lines.append(f"| {mode} | {t} | {m['rps']:.0f} | {ratio:.2f} | {m['p50']:.3f} | {m['p99']:.3f} | "
                             f"{added50} | {added99} | {m['cpu_us']:.1f} | {rss[t]:.1f} | {errs} |")
            tg, ngm = med[(mode, "tollgate")], med[(mode, "nginx")]
            hit, miss = med[(mode, "cache-hit")], med[(mode, "cache-miss")]
            verdicts.append((f"{mode}: a cache hit is served at least as fast as a request proxied to the mock",
                             f"{hit['rps'] / tg['rps']:.2f}× the proxied request's throughput "
                             f"(p50 {hit['p50']:.3f} vs {tg['p50']:.3f} ms; direct to the mock "
                             f"{med[(mode, 'direct')]['p50']:.3f} ms)",
                             hit["rps"] >= tg["rps"] and hit["p50"] <= tg["p50"]))
            verdicts.append((f"{mode}: the cache's bookkeeping adds ≤ 2% to a miss",
                             f"{miss['rps'] / tg['rps']:.3f}× the uncached gateway's throughput",
                             miss["rps"] >= 0.98 * tg["rps"]))
            logged = med[(mode, "tollgate-logged")]
            log_notes.append(f"{mode} {logged['rps'] / tg['rps']:.3f}× ({logged['rps']:.0f} vs {tg['rps']:.0f} req/s, "
                             f"CPU {logged['cpu_us']:.1f} vs {tg['cpu_us']:.1f} µs/req)")
            four = med[(mode, "tollgate-4acct")]
            verdicts.append((f"{mode}: four accounts cost ≤ {TARGETS['four_accounts_cost']:.0%} throughput",
                             f"{four['rps'] / tg['rps']:.3f}× one account's ({four['rps']:.0f} vs {tg['rps']:.0f} req/s)",
                             four["rps"] >= (1 - TARGETS["four_accounts_cost"]) * tg["rps"]))
            verdicts.append((f"{mode}: throughput ≥ {TARGETS['throughput']}× nginx",
                             f"{tg['rps'] / ngm['rps']:.2f}× (pingora floor {med[(mode, 'pingora')]['rps'] / ngm['rps']:.2f}×)",
                             tg["rps"] >= TARGETS["throughput"] * ngm["rps"]))
            floor = med[(mode, "pingora")]
            verdicts.append((f"{mode}: p99 ≤ {TARGETS['p99']}× nginx's",
                             f"{tg['p99'] / ngm['p99']:.2f}× ({tg['p99']:.2f} vs {ngm['p99']:.2f} ms; pingora floor "
                             f"{floor['p99'] / ngm['p99']:.2f}×)",
                             tg["p99"] <= TARGETS["p99"] * ngm["p99"]))
            for peer in ("litellm", "portkey"):
                if (mode, peer) in med and med[(mode, peer)]["rps"] > 0:
                    x = tg["rps"] / med[(mode, peer)]["rps"]
                    verdicts.append((f"{mode}: ≥ {TARGETS[peer]:.0f}× {peer}'s throughput",
                                     f"{x:.1f}× (pingora floor {floor['rps'] / med[(mode, peer)]['rps']:.1f}×, "
                                     f"nginx {ngm['rps'] / med[(mode, peer)]['rps']:.1f}×)",
                                     x >= TARGETS[peer]))

        lines.append("\nThe access log (`tollgate-logged`, the shipped `RUST_LOG=info`) against `tollgate` (`warn`): "
                     + "; ".join(log_notes) + ".")
        lines.append(f"\n### Sequential: one client, {a.seq_rounds} rounds × {a.seq_requests} requests per target, "
                     "each gateway alternating with direct\n")
        lines.append("Latency is the median of the per-round medians, and what the gateway adds is the median of "
                     "the per-round differences from direct. Time to first token (TTFT) is to the first streamed "
                     "`data:` event; p50/p99 over all requests, added = gateway's minus direct's in the same pairing.\n")
        lines.append("| target | chat ms | added ms | stream TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | "
                     "added TTFT p99 ms | errors |")
        lines.append("|---|---|---|---|---|---|---|---|")
        added_by = {}
        first_row = True
        for t in targets:
            if t == "direct":
                continue
            c, s_ = seq["chat"][t], seq["stream"][t]
            if first_row:
                lines.append(f"| direct (paired with {t}) | {statistics.median(c['direct']):.3f} | — | "
                             f"{pct(s_['first_direct'], 50):.3f} | {pct(s_['first_direct'], 99):.3f} | — | — | 0 |")
                first_row = False
            added = statistics.median(g - d for g, d in zip(c["gw"], c["direct"]))
            f50 = pct(s_["first_gw"], 50) - pct(s_["first_direct"], 50)
            f99 = pct(s_["first_gw"], 99) - pct(s_["first_direct"], 99)
            e = c["errors"] + s_["errors"]
            errors += e
            added_by[t] = (added, f99)
            lines.append(f"| {t} | {statistics.median(c['gw']):.3f} | {added:.3f} | {pct(s_['first_gw'], 50):.3f} | "
                         f"{pct(s_['first_gw'], 99):.3f} | {f50:.3f} | {f99:.3f} | {e} |")
        added, ttft99 = added_by["tollgate"]
        verdicts.append((f"sequential added latency ≤ {TARGETS['seq_added_ms']} ms (median)",
                         f"{added:.3f} ms (nginx {added_by['nginx'][0]:.3f}, pingora floor {added_by['pingora'][0]:.3f})",
                         added <= TARGETS["seq_added_ms"]))
        verdicts.append((f"streams add ≤ {TARGETS['ttft_added_p99_ms']} ms to TTFT at p99", f"{ttft99:.3f} ms",
                         ttft99 <= TARGETS["ttft_added_p99_ms"]))
        verdicts.append((f"peak RSS ≤ {TARGETS['rss_mib']:.0f} MiB under the standard load",
                         f"{rss['tollgate']:.1f} MiB", rss["tollgate"] <= TARGETS["rss_mib"]))

        for name in list(targets):
            if name not in ("direct",):
                procs.stop(targets[name][2])
        procs.stop(mock)

        # 3. memory
        if not a.skip_memory:
            errors += memory_tests(procs, tmp, a, lines, verdicts)

        lines.append("\n### Against the issue's targets\n")
        lines.append("| target | measured | met |")
        lines.append("|---|---|---|")
        for what, got, ok in verdicts:
            lines.append(f"| {what} | {got} | {'yes' if ok else '**no**'} |")

        cmd = "python3 load-tests/bench.py " + " ".join(sys.argv[1:])
        facts = [
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, took {(datetime.datetime.now(datetime.timezone.utc) - started).seconds} s",
            f"- command: `{cmd.strip()}`",
            f"- machine: {os.cpu_count()} cores, {platform.platform()}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            f"- load: wrk {wrk_version()}, keep-alive, loopback; the mock, nginx, pingora and Tollgate each on one "
            f"worker thread; load generator, mock and gateway share the {os.cpu_count()} cores",
            f"- nginx: {nginx_version()}",
            "- Tollgate's log level: `RUST_LOG=warn` (no access log) for every Tollgate target but "
            "`tollgate-logged`, which runs the shipped default `info` (one access line per request)",
            "- CPU µs/req: user+system time of the target's processes during its runs ÷ requests served; "
            "peak RSS: VmHWM summed over its processes",
        ] + peer_notes
        text = "\n".join(lines) + "\n\n" + "\n".join(facts) + "\n"
        if a.smoke:
            text = ("**Smoke run**: checks that every part of the harness works end to end; its one-second "
                    "figures are not measurements.\n\n" + text)
        print(text)
        if not a.smoke and not a.no_write and a.peers == "none" and not a.write_without_peers:
            # RESULTS.md is the comparison with the peers: a run without them would drop their
            # rows (and fleet.py's section) for good.
            print("RESULTS.md left alone: this run measured no peer (--write-without-peers to "
                  "replace it anyway)", file=sys.stderr)
        elif not a.smoke and not a.no_write:
            with open(os.path.join(ROOT, "load-tests", "RESULTS.md"), "w") as f:
                f.write("# Load test results\n\nProduced by `load-tests/bench.py` in one run on one machine; "
                        "ratios are against nginx measured in the same run, rounds interleaved. "
                        "See [README.md](README.md) for how to read them.\n\n" + text)
        if errors:
            print(f"{errors} requests failed", file=sys.stderr)
        return 1 if errors else 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def wrk_version():
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk ([\w.\-]+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def nginx_version():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


if __name__ == "__main__":
    sys.exit(main())
