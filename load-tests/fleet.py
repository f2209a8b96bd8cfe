#!/usr/bin/env python3
"""What fleet mode costs: Tollgate alone against Tollgate on a shared Redis, with per-request
holds and with leases, Redis on loopback, in one run on one machine.

Targets, all forwarding to the same mock provider on loopback:
  pingora       the no-op Pingora proxy (load-tests/bare_pingora.rs): the framework's floor
  single        Tollgate without [fleet]: its SQLite ledger, budget held in memory
  fleet-holds   Tollgate with [fleet] leases = false: every request holds (tg_reserve) and
                settles (tg_settle) its budget in Redis
  fleet-leases  Tollgate with [fleet] leases = true: the instance leases slices of the budget
                (tg_lease) and admits locally against them

The three Tollgates run the same configuration as bench.py (harness.tollgate_toml: key auth,
secret detectors and a block pattern, output cap, budget, usage counting, SQLite ledger,
one worker thread) except that the project has no rpm/tpm limits: a rate-limited project
holds per request in Redis whatever `leases` says, so only a project without them can use
leases. One Tollgate runs at a time: each measurement starts a fresh one (fresh SQLite, and
for fleet mode a flushed Redis, rebuild_grace_ms = 200, measured once it has joined and
admitted a probe) and stops it afterwards. Redis (Debian's redis-server, appendonly yes,
appendfsync everysec) and bare Pingora run throughout.

Parts of one run (each bounded in time, loopback only, everything started is stopped):
  1. throughput: wrk -t1 -cC -dS on the non-streaming chat request of bench.py, after W
     seconds of unmeasured warm-up on the same process, R rounds interleaved across the
     targets. Per target: req/s (median of rounds), ratios to single-node and to Pingora,
     p50/p99, CPU per request of Tollgate and of Redis, and Redis commands per request
     (INFO commandstats over the measured run: FCALL calls and all commands ÷ requests).
  2. sequential added latency: one client on raw sockets, each Tollgate paired with bare
     Pingora request by request on one keep-alive connection each (bench.py's method, with
     the floor in the place of direct): per round a fresh Tollgate, N warm-up pairs, then N
     measured pairs; added = median over rounds of (Tollgate's median − Pingora's median);
     added p99 = p99 of all Tollgate latencies − p99 of all Pingora ones. Each fleet mode is
     also given relative to single-node (its added median minus single-node's).
  3. counts: on the last sequential process of each fleet mode, once leases went back and no
     hold is open, Redis's spend (GET /admin/projects, source "fleet") must equal the
     requests that process served times the cost of one request (single-node's spend ÷ its
     requests).

Usage: load-tests/fleet.py [--seconds S] [--rounds R] [--connections C] [--warmup W]
                           [--seq-rounds K] [--seq-requests N] [--timeout-ms T]
                           [--smoke] [--no-write] [--bin-dir DIR]
Needs: release binaries (cargo build --release --bins --example bare_pingora), wrk and
redis-server (apt-get install wrk redis-server).
Appends (or replaces) the "Fleet" section of load-tests/RESULTS.md (unless --smoke or
--no-write) and prints the same tables. Exit status 1 when any request failed or a count
did not add up.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import bench
from bench import BODIES, Procs, cpu_seconds, lua_script, mem_mib, pct, wrk, wrk_version
from harness import KEY, ROOT, free_port, read_response, tollgate_toml, wait_port

ADMIN_TOKEN = bench.ADMIN_TOKEN
PROVIDER_AUTH = {"authorization": "Bearer sk-bench"}
GW_AUTH = {"authorization": f"Bearer {KEY}"}
REBUILD_GRACE_MS = 200
# name: None (no [fleet]) or the value of `leases`.
CONFIGS = {"single": None, "fleet-holds": False, "fleet-leases": True}
TARGETS = {
    "leases_throughput": 0.95,   # × single-node's throughput
    "leases_added_ms": 0.05,     # added median latency over single-node
    "holds_added_ms": 0.3,
}


# ---------------------------------------------------------------------------------------------
# Redis

class Redis:
    """A RESP client on one connection, for the harness's own few commands."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for x in args:
            x = str(x).encode()
            out += b"$%d\r\n%s\r\n" % (len(x), x)
        self.sock.sendall(out)
        return self._reply()

    def commandstats(self):
        """{command: calls} since the last CONFIG RESETSTAT, the harness's own left out."""
        stats = {}
        for line in self.cmd("INFO", "commandstats").splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_"):].partition(":")
            calls = dict(f.split("=", 1) for f in fields.split(","))["calls"]
            if name.split("|")[0] in ("info", "config"):
                continue
            stats[name] = int(calls)
        return stats


def start_redis(procs, tmp):
    """Debian's redis-server on a free loopback port, AOF on, in a directory of its own.
    Redis cannot bind port 0, so a port is picked and tried again if another process won it."""
    exe = shutil.which("redis-server")
    if not exe:
        sys.exit("redis-server is needed: apt-get install redis-server")
    d = os.path.join(tmp, "redis")
    os.makedirs(d, exist_ok=True)
    for attempt in range(10):
        port = free_port()
        log = os.path.join(d, f"redis-{attempt}.log")
        p = procs.start([exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
                         "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
                         "--dir", d, "--logfile", log],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline and p.poll() is None:
            try:
                r = Redis(port)
                if r.cmd("PING") == "PONG":
                    return p, r
                r.close()
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        procs.stop(p)
    sys.exit(f"redis-server did not start (see its log in {d})")


# ---------------------------------------------------------------------------------------------
# Tollgate, one at a time

def request(port, method, path, headers=None, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def admin_json(port, path):
    status, body = request(port, "GET", path, {"authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:200]}")
    return json.loads(body)


def bench_project(admin):
    v = admin_json(admin, "/admin/projects")
    items = v.get("projects", v) if isinstance(v, dict) else v
    for p in items:
        if p.get("id") == "bench":
            return p
    raise RuntimeError(f"no project 'bench' in /admin/projects: {v}")


def answered(admin):
    """Requests this Tollgate has answered (the sum of tollgate_requests_total)."""
    status, body = request(admin, "GET", "/metrics", {"authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status}")
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in body.splitlines()
               if line.startswith("tollgate_requests_total{"))


def drained(admin, within=10):
    """Wait until no request is in flight (wrk stops with its connections' requests open, and
    Tollgate still serves and settles them)."""
    deadline = time.time() + within
    while bench.in_flight(admin) not in (0, None) and time.time() < deadline:
        time.sleep(0.05)


class Gateway:
    """One Tollgate process, and how many requests it answered 200 (from this harness)."""

    def __init__(self, name, proc, port, admin, log):
        self.name, self.proc, self.port, self.admin, self.log = name, proc, port, admin, log
        self.served = 0


def log_tail(path, n=15):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def start_gateway(procs, tmp, name, upstream, redis, a, seq):
    """A fresh Tollgate of configuration `name`, ready: for fleet mode on a flushed Redis,
    joined, and past the rebuild grace (a probe request was admitted)."""
    leases = CONFIGS[name]
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, f"{name}-{seq}")
    os.makedirs(d)
    text = tollgate_toml(port, upstream, os.path.join(d, "ledger.db"), admin, rate_limits=False)
    env = dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="warn")
    if leases is not None:
        text += (f'\n[fleet]\nredis_url_env = "TOLLGATE_REDIS_URL"\ninstance = "bench-{name}"\n'
                 f"timeout_ms = {a.timeout_ms}\nrebuild_grace_ms = {REBUILD_GRACE_MS}\n"
                 f"leases = {'true' if leases else 'false'}\n")
        env["TOLLGATE_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/"
        # Each fleet process starts on an empty Redis (the library of functions stays): no
        # holds, leases or spend left from the previous process, which was killed.
        redis.cmd("FLUSHALL")
    conf = os.path.join(d, "tollgate.toml")
    with open(conf, "w") as f:
        f.write(text)
    logpath = os.path.join(d, "tollgate.log")
    with open(logpath, "w") as log:
        p = procs.start([os.path.join(bench.REL, "tollgate"), "serve", "--config", conf], env=env,
                        stdout=subprocess.DEVNULL, stderr=log)
    wait_port(port, p, name)
    wait_port(admin, p, f"{name} (admin)")
    gw = Gateway(name, p, port, admin, logpath)
    deadline = time.time() + 30
    if leases is not None:
        while True:
            try:
                v = admin_json(admin, "/admin/fleet")
                if v.get("redis", {}).get("joined"):
                    break
            except (OSError, RuntimeError, ValueError):
                pass
            if p.poll() is not None or time.time() > deadline:
                sys.exit(f"{name} did not join the fleet\n{log_tail(logpath)}")
            time.sleep(0.05)
    body = BODIES["chat"]
    while True:
        status, answer = request(port, "POST", "/v1/chat/completions",
                                 dict(GW_AUTH, **{"content-type": "application/json"}), body)
        if status == 200:
            gw.served += 1
            return gw
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"{name} admitted no probe request (last: {status} {answer[:200]})\n{log_tail(logpath)}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# sequential, paired with the floor

def paired(floor_port, gw, per_round):
    """One round: per_round warm-up pairs, then per_round measured pairs, alternating floor
    and gateway request by request on one keep-alive connection each. Returns the floor's and
    the gateway's latencies (ms) and the number of non-200 answers."""
    def connect(port, headers):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = BODIES["chat"].encode()
        h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{h}\r\n").encode() + body
        return s, req

    pair = {"floor": connect(floor_port, PROVIDER_AUTH), "gw": connect(gw.port, GW_AUTH)}
    lat = {"floor": [], "gw": []}
    errors = 0
    try:
        for i in range(2 * per_round):
            for side, (sock, req) in pair.items():
                t0 = time.perf_counter()
                sock.sendall(req)
                status, _, total = read_response(sock, t0)
                if side == "gw" and status == 200:
                    gw.served += 1
                if i < per_round:
                    continue
                errors += status != 200
                lat[side].append(total * 1000)
    finally:
        for sock, _ in pair.values():
            sock.close()
    return lat["floor"], lat["gw"], errors


def at_rest(gw, within=20):
    """The project's fleet figures once no lease is out and no hold is open."""
    deadline = time.time() + within
    while True:
        p = bench_project(gw.admin)
        if p.get("reserved_usd", 0) == 0 and p.get("leased_usd", 0) == 0:
            return p, True
        if time.time() > deadline:
            return p, False
        time.sleep(0.25)


# ---------------------------------------------------------------------------------------------

def write_results(text):
    path = os.path.join(ROOT, "load-tests", "RESULTS.md")
    head = "## Fleet mode on Redis (`load-tests/fleet.py`)"
    section = f"{head}\n\n{text}"
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Load test results\n"
    i = old.find("\n" + head)
    if i < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        j = old.find("\n## ", i + 1)
        new = old[:i].rstrip("\n") + "\n\n" + section + ("\n" + old[j + 1:] if j >= 0 else "")
    with open(path, "w") as f:
        f.write(new)


def redis_version():
    out = subprocess.run([shutil.which("redis-server"), "--version"], capture_output=True, text=True).stdout
    for w in out.split():
        if w.startswith("v="):
            return w[2:]
    return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="measured wrk duration per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured wrk seconds before each measured run")
    ap.add_argument("--seq-rounds", type=int, default=7)
    ap.add_argument("--seq-requests", type=int, default=40, help="measured pairs per sequential round")
    ap.add_argument("--timeout-ms", type=int, default=50,
                    help="[fleet] timeout_ms (default: Tollgate's own, 50; --smoke: 1000 for debug builds)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds of everything, nothing written (CI keeps the harness alive)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--bin-dir", help="where tollgate, mock-provider and examples/bare_pingora are "
                                      "(default: target/release)")
    a = ap.parse_args()
    if a.bin_dir:
        bench.REL = os.path.abspath(a.bin_dir)
    if a.smoke:
        a.seconds, a.rounds, a.warmup, a.seq_rounds, a.seq_requests = 1, 1, 0, 1, 5
        if "--timeout-ms" not in " ".join(sys.argv):
            a.timeout_ms = 1000
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    for b in ("tollgate", "mock-provider", os.path.join("examples", "bare_pingora")):
        if not os.path.exists(os.path.join(bench.REL, b)):
            sys.exit(f"{os.path.join(bench.REL, b)} is missing: cargo build --release --bins --example bare_pingora")
    # SIGTERM unwinds like Ctrl-C, so everything started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="tollgate-fleet-")
    procs = Procs()
    redis = None
    try:
        redis_proc, redis = start_redis(procs, tmp)
        mock, mock_addr = bench.start_mock(procs)
        bare, bare_port = bench.start_pingora(procs, mock_addr)
        scripts = {"pingora": os.path.join(tmp, "chat-pingora.lua"), "gw": os.path.join(tmp, "chat-gw.lua")}
        lua_script(scripts["pingora"], BODIES["chat"], PROVIDER_AUTH)
        lua_script(scripts["gw"], BODIES["chat"], GW_AUTH)
        names = ["pingora", *CONFIGS]
        starts = 0

        # 1. throughput: rounds interleaved, each Tollgate alone and fresh
        runs = {n: [] for n in names}
        for r in range(a.rounds):
            for name in names:
                gw = None
                if name == "pingora":
                    proc, port, script = bare, bare_port, scripts["pingora"]
                else:
                    starts += 1
                    gw = start_gateway(procs, tmp, name, mock_addr, redis, a, starts)
                    proc, port, script = gw.proc, gw.port, scripts["gw"]
                if a.warmup:
                    wrk(port, script, a.warmup, a.connections)
                fleet = CONFIGS.get(name) is not None
                if gw:
                    drained(gw.admin)
                    served0 = answered(gw.admin)
                if fleet:
                    redis.cmd("CONFIG", "RESETSTAT")
                r0, c0 = cpu_seconds(redis_proc.pid), cpu_seconds(proc.pid)
                res = wrk(port, script, a.seconds, a.connections)
                # CPU as bench.py counts it: up to wrk's end, ÷ the requests wrk completed.
                res["cpu"] = cpu_seconds(proc.pid) - c0
                res["redis_cpu"] = cpu_seconds(redis_proc.pid) - r0
                res["rss"] = mem_mib(proc.pid, "VmHWM")
                # Redis commands ÷ the requests Tollgate answered in the same window, the ones
                # wrk left open at its end included.
                res["cmds"], res["answered"] = {}, res["n"]
                if gw:
                    drained(gw.admin)
                    res["answered"] = answered(gw.admin) - served0
                if fleet:
                    res["cmds"] = redis.commandstats()
                runs[name].append(res)
                if gw:
                    procs.stop(gw.proc)

        # 2. sequential, paired with the floor; 3. counts on the last process of each
        seq = {n: {"floor": [], "gw": [], "added": [], "errors": 0} for n in CONFIGS}
        counts = {}
        for r in range(a.seq_rounds):
            for name in CONFIGS:
                starts += 1
                gw = start_gateway(procs, tmp, name, mock_addr, redis, a, starts)
                floor, lat, errs = paired(bare_port, gw, a.seq_requests)
                s = seq[name]
                s["floor"] += floor
                s["gw"] += lat
                s["errors"] += errs
                s["added"].append(statistics.median(lat) - statistics.median(floor))
                if r == a.seq_rounds - 1:
                    project, rest = at_rest(gw)
                    counts[name] = (gw.served, project, rest)
                procs.stop(gw.proc)

        # ---------------------------------------------------------------------------------
        lines, verdicts = [], []
        failures = 0
        med = {}
        for name in names:
            xs = runs[name]
            n = sum(x["n"] for x in xs)
            answered_n = sum(x["answered"] for x in xs)
            cmds = {}
            for x in xs:
                for k, v in x["cmds"].items():
                    cmds[k] = cmds.get(k, 0) + v
            med[name] = {
                **{k: statistics.median(x[k] for x in xs) for k in ("rps", "p50", "p99")},
                "cpu_us": sum(x["cpu"] for x in xs) / n * 1e6 if n else float("nan"),
                "redis_cpu_us": sum(x["redis_cpu"] for x in xs) / n * 1e6 if n else float("nan"),
                "fcall": cmds.get("fcall", 0) / answered_n if answered_n else float("nan"),
                "xadd": cmds.get("xadd", 0) / answered_n if answered_n else float("nan"),
                "all_cmds": sum(cmds.values()) / answered_n if answered_n else float("nan"),
                "cmds": ({k: v / answered_n for k, v in sorted(cmds.items(), key=lambda kv: -kv[1])}
                         if answered_n else {}),
                "rss": max(x["rss"] for x in xs),
                "errors": sum(x["errors"] for x in xs),
                "n": n,
            }
            failures += med[name]["errors"]
        single, floor = med["single"], med["pingora"]

        lines.append(f"### Throughput: `wrk -t1 -c{a.connections} -d{a.seconds}s` (non-streaming chat), "
                     f"{a.rounds} rounds interleaved, each after {a.warmup} s of warm-up\n")
        lines.append("| target | req/s (median) | × single-node | × Pingora | p50 ms | p99 ms | CPU µs/req "
                     "| Redis CPU µs/req | FCALL/req | XADD/req | Redis commands/req | peak RSS MiB | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in names:
            m = med[name]
            fleet = CONFIGS.get(name) is not None
            lines.append(
                f"| {name} | {m['rps']:.0f} | "
                f"{m['rps'] / single['rps']:.3f} | {m['rps'] / floor['rps']:.3f} | {m['p50']:.3f} | "
                f"{m['p99']:.3f} | {m['cpu_us']:.1f} | "
                + (f"{m['redis_cpu_us']:.1f} | {m['fcall']:.3f} | {m['xadd']:.3f} | {m['all_cmds']:.3f}" if fleet
                   else "— | — | — | —")
                + f" | {m['rss']:.1f} | {m['errors']} |")
        lines.append("\nFCALL is a call of one of Tollgate's Redis functions (tg_reserve and tg_settle per request "
                     "with holds; tg_lease now and then with leases); XADD is the decision stream, up to 64 "
                     "records per entry, written off the request path. Redis commands/req counts every command "
                     "in INFO commandstats, the ones the functions run inside Redis included.")
        for name in CONFIGS:
            if med[name]["cmds"]:
                parts = ", ".join(f"{k} {v:.3f}" for k, v in med[name]["cmds"].items() if v >= 0.0005)
                lines.append(f"\nRedis commands per request, {name}: {parts or 'none'}.")

        lines.append(f"\n### Sequential: one client, {a.seq_rounds} rounds × {a.seq_requests} requests, "
                     "each Tollgate alternating with bare Pingora\n")
        lines.append("A fresh Tollgate per round, after as many warm-up pairs. Added is the median over rounds "
                     "of the per-round difference of medians from Pingora; added p99 is the p99 of all the "
                     "Tollgate's latencies minus that of all Pingora's in the same pairing.\n")
        lines.append("| target | latency p50 ms | added p50 ms | added p99 ms | added p50 vs single-node ms "
                     "| errors |")
        lines.append("|---|---|---|---|---|---|")
        added = {}
        for name in CONFIGS:
            s = seq[name]
            added[name] = statistics.median(s["added"])
            a99 = pct(s["gw"], 99) - pct(s["floor"], 99)
            vs = "—" if name == "single" else f"{added[name] - added['single']:+.3f}"
            lines.append(f"| {name} | {statistics.median(s['gw']):.3f} | {added[name]:.3f} | {a99:.3f} | {vs} "
                         f"| {s['errors']} |")
            failures += s["errors"]
        lines.append(f"| pingora (paired) | {statistics.median(seq['single']['floor']):.3f} | — | — | — | 0 |")

        lines.append("\n### Counts: Redis's spend against the requests served\n")
        lines.append("On the last sequential process of each, once no lease was out and no hold open: "
                     "spend in Redis (`/admin/projects`) against requests answered 200 × the cost of one "
                     "request (single-node's spend ÷ its requests).\n")
        lines.append("| target | requests | spent USD | expected USD | source | at rest | ok |")
        lines.append("|---|---|---|---|---|---|---|")
        s_served, s_project, _ = counts["single"]
        unit_nanos = round(s_project["spent_usd"] * 1e9) / s_served
        lines.append(f"| single | {s_served} | {s_project['spent_usd']:.9f} | — | local | — | "
                     f"{unit_nanos:.0f} nanodollars/request |")
        for name in ("fleet-holds", "fleet-leases"):
            served, project, rest = counts[name]
            expect = served * unit_nanos
            got = round(project["spent_usd"] * 1e9)
            ok = rest and project.get("source") == "fleet" and abs(got - expect) <= 1
            failures += not ok
            lines.append(f"| {name} | {served} | {project['spent_usd']:.9f} | {expect / 1e9:.9f} | "
                         f"{project.get('source', '?')} | {'yes' if rest else '**no**'} | "
                         f"{'yes' if ok else '**no**'} |")

        leases, holds = med["fleet-leases"], med["fleet-holds"]
        verdicts.append((f"leases: throughput ≥ {TARGETS['leases_throughput']}× single-node",
                         f"{leases['rps'] / single['rps']:.3f}× (holds {holds['rps'] / single['rps']:.3f}×)",
                         leases["rps"] >= TARGETS["leases_throughput"] * single["rps"]))
        d_leases = added["fleet-leases"] - added["single"]
        d_holds = added["fleet-holds"] - added["single"]
        verdicts.append((f"leases: added median latency ≤ {TARGETS['leases_added_ms']} ms over single-node",
                         f"{d_leases:+.3f} ms", d_leases <= TARGETS["leases_added_ms"]))
        verdicts.append((f"holds: added median latency ≤ {TARGETS['holds_added_ms']} ms over single-node",
                         f"{d_holds:+.3f} ms", d_holds <= TARGETS["holds_added_ms"]))
        verdicts.append(("leases avoid per-request round trips (FCALL/req)",
                         f"{leases['fcall']:.3f} (holds {holds['fcall']:.3f})",
                         leases["fcall"] < 0.1 * max(holds["fcall"], 1e-9)))
        lines.append("\n### Against the issue's targets\n")
        lines.append("| target | measured | met |")
        lines.append("|---|---|---|")
        for what, got, ok in verdicts:
            lines.append(f"| {what} | {got} | {'yes' if ok else '**no**'} |")

        cmd = ("python3 load-tests/fleet.py " + " ".join(sys.argv[1:])).strip()
        facts = [
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, took "
            f"{(datetime.datetime.now(datetime.timezone.utc) - started).seconds} s",
            f"- command: `{cmd}`",
            f"- machine: {os.cpu_count()} cores, {platform.platform()}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            f"- load: wrk {wrk_version()}, keep-alive, loopback; the mock, Pingora and Tollgate each on one worker "
            f"thread; wrk, the mock, Tollgate and Redis share the {os.cpu_count()} cores",
            f"- Redis {redis_version()} (redis-server, appendonly yes, appendfsync everysec), flushed before each "
            f"fleet process; [fleet] timeout_ms = {a.timeout_ms}, rebuild_grace_ms = {REBUILD_GRACE_MS}, "
            "hold_ttl_s default",
            "- project `bench`: budget $1,000,000 a month, no rpm/tpm limits (so leases apply), the rest as "
            "bench.py's Tollgate",
            "- CPU µs/req: user+system time of the process during the measured runs ÷ requests served; "
            "Redis commands/req: INFO commandstats over the measured runs ÷ the requests Tollgate answered in them "
            "(tollgate_requests_total)",
        ]
        text = "\n".join(lines) + "\n\n" + "\n".join(facts) + "\n"
        if a.smoke:
            text = ("**Smoke run**: checks that every part of the harness works end to end; its one-second "
                    "figures are not measurements.\n\n" + text)
        print(text)
        if not a.smoke and not a.no_write:
            write_results(text)
        if failures:
            print(f"{failures} requests failed or counts did not add up", file=sys.stderr)
        return 1 if failures else 0
    finally:
        if redis:
            redis.close()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
