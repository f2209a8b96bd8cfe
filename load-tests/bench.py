#!/usr/bin/env python3
"""Throughput and latency of one proxy hop, measured in one run on one machine.

The same wrk load (POST chat completions, keep-alive) goes, in interleaved rounds so machine
drift hits all alike, against:
  direct    the mock provider itself (the ceiling),
  nginx     nginx as a plain keep-alive reverse proxy (the physical limit of one proxy hop),
  tollgate  Tollgate with everything on: key auth, body parse, policy with secret scan and a
            block pattern, budget reservation and settlement, rate limits, usage scanning,
            SQLite ledger with decision records, metrics.
Modes: non-streaming chat and streaming chat (16 tokens, SSE). Loopback only; every run is
bounded by wrk's duration and the script stops everything it started.

Usage: load-tests/bench.py [--seconds S] [--rounds R] [--connections C] [--smoke]
Needs: target/release/{tollgate,mock-provider} (cargo build --release --bins), wrk, nginx
(apt-get install wrk nginx-light). Writes load-tests/RESULTS.md and prints the table.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from harness import REL, ROOT, free_port, wait_port

KEY = "tg_bench_key_0000000000001"


def lua_script(path, body, headers):
    hdrs = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    body_lua = body.replace("\\", "\\\\").replace('"', '\\"')
    with open(path, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = "{body_lua}"\n{hdrs}\n')
        f.write('wrk.headers["content-type"] = "application/json"\n')
        f.write("function response(status, headers, body)\n"
                "  if status ~= 200 then errors_seen = (errors_seen or 0) + 1 end\nend\n")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    def lat(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": lat("50"), "p99": lat("99"), "errors": errors}


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="one short round, no RESULTS.md")
    a = ap.parse_args()
    if a.smoke:
        a.seconds, a.rounds = 1, 1
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is needed: apt-get install wrk nginx-light")
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    procs = []
    try:
        mock = subprocess.Popen([os.path.join(REL, "mock-provider"), "--listen", "127.0.0.1:0", "--threads", "1",
                                 "--no-record"], stdout=subprocess.PIPE, text=True)
        procs.append(mock)
        mock_addr = mock.stdout.readline().split()[1]

        nginx_port = free_port()
        nginx_conf = os.path.join(tmp, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp};
  proxy_temp_path {tmp};
  upstream mock {{ server {mock_addr}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        ng = subprocess.Popen([nginx_bin, "-c", nginx_conf, "-p", tmp], stderr=subprocess.DEVNULL)
        procs.append(ng)
        wait_port(nginx_port, ng, "nginx")

        gw_port = free_port()
        gw_conf = os.path.join(tmp, "tollgate.toml")
        with open(gw_conf, "w") as f:
            f.write(f"""[server]
listen = "127.0.0.1:{gw_port}"
threads = 1
[store]
path = "{tmp}/ledger.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://{mock_addr}"
api_key_env = "BENCH_PROVIDER_KEY"
[[routes]]
prefix = "gpt-"
provider = "openai"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
max_output_tokens = 16384
[[projects]]
id = "bench"
keys = ["{KEY}"]
budget = {{ limit_usd = 1000000.0, period = "month" }}
rate_limit = {{ rpm = 100000000, tpm = 100000000000 }}
block_secrets = true
block_patterns = ["(?i)internal use only"]
max_tokens = 4096
""")
        gw = subprocess.Popen([os.path.join(REL, "tollgate"), "serve", "--config", gw_conf],
                              env=dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", RUST_LOG="warn"),
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "tollgate.log"), "w"))
        procs.append(gw)
        wait_port(gw_port, gw, "tollgate")

        mh, mp = mock_addr.rsplit(":", 1)
        targets = {
            "direct": (int(mp), {"authorization": "Bearer sk-bench"}),
            "nginx": (nginx_port, {"authorization": "Bearer sk-bench"}),
            "tollgate": (gw_port, {"authorization": f"Bearer {KEY}"}),
        }
        modes = {
            "chat": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],'
                    '"max_tokens":16}',
            "stream": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],'
                      '"max_tokens":16,"stream":true}',
        }
        results = {(m, t): [] for m in modes for t in targets}
        gw_cpu = {m: 0.0 for m in modes}
        gw_reqs = {m: 0.0 for m in modes}
        for r in range(a.rounds):
            for mode, body in modes.items():
                for name, (port, headers) in targets.items():
                    script = os.path.join(tmp, f"{mode}-{name}.lua")
                    lua_script(script, body, headers)
                    before = cpu_seconds(gw.pid)
                    out = subprocess.run(["wrk", "-t1", f"-c{a.connections}", f"-d{a.seconds}s", "--latency",
                                          "-s", script, f"http://127.0.0.1:{port}/v1/chat/completions"],
                                         capture_output=True, text=True, timeout=a.seconds + 30).stdout
                    res = parse_wrk(out)
                    results[(mode, name)].append(res)
                    if name == "tollgate":
                        gw_cpu[mode] += cpu_seconds(gw.pid) - before
                        gw_reqs[mode] += res["rps"] * a.seconds
        rss = peak_rss_mib(gw.pid)
        lines = []
        lines.append(f"| mode | target | req/s (median of {a.rounds}) | × nginx | p50 ms | p99 ms | "
                     "added p50 ms | added p99 ms | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for mode in modes:
            med = {t: {k: statistics.median([x[k] for x in results[(mode, t)]]) for k in ("rps", "p50", "p99")}
                   for t in targets}
            for t in targets:
                m = med[t]
                errs = sum(x["errors"] for x in results[(mode, t)])
                ratio = m["rps"] / med["nginx"]["rps"] if med["nginx"]["rps"] else float("nan")
                added50 = m["p50"] - med["direct"]["p50"]
                added99 = m["p99"] - med["direct"]["p99"]
                lines.append(f"| {mode} | {t} | {m['rps']:.0f} | {ratio:.2f} | {m['p50']:.3f} | {m['p99']:.3f} | "
                             f"{added50:.3f} | {added99:.3f} | {errs} |")
        cpu_lines = [f"- Tollgate CPU per request ({mode}): "
                     f"{(gw_cpu[mode] / gw_reqs[mode] * 1e6) if gw_reqs[mode] else float('nan'):.1f} µs"
                     for mode in modes]
        table = "\n".join(lines)
        facts = (f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
                 f"- machine: {os.cpu_count()} cores, {platform.platform()}\n"
                 f"- command: `python3 load-tests/bench.py --seconds {a.seconds} --rounds {a.rounds} "
                 f"--connections {a.connections}`\n"
                 f"- load: wrk -t1 -c{a.connections}, keep-alive, loopback; Tollgate and nginx each on 1 worker "
                 f"thread, the mock on 1 thread\n"
                 f"- Tollgate peak RSS: {rss:.1f} MiB\n" + "\n".join(cpu_lines) + "\n")
        print(table)
        print(facts)
        if not a.smoke:
            with open(os.path.join(ROOT, "load-tests", "RESULTS.md"), "w") as f:
                f.write("# Load test results\n\nProduced by `load-tests/bench.py`; ratios are against nginx measured in "
                        "the same run, rounds interleaved.\n\n" + table + "\n\n" + facts)
        bad = sum(x["errors"] for (m, t), xs in results.items() for x in xs)
        return 1 if bad else 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
