#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: the profile that explains the
throughput table, free of the machine's noise (callgrind counts instructions, not seconds, so
the same binaries and inputs give the same figures on a loaded machine).

Each target runs under `valgrind --tool=callgrind` with instrumentation off; after a warm-up it
is switched on for N sequential requests (4 keep-alive connections, round robin), then the
counts are dumped. Reported: user-space instructions per request for the whole process (every
thread: Tollgate's ledger writer included), and for Tollgate the inclusive cost of its own
phases and of the ledger writer, so what Tollgate adds over the framework is visible.

Usage: load-tests/instructions.py [--requests N] [--mode chat|stream|both] [--keep DIR]
Needs valgrind (apt-get install valgrind), nginx, and the release binaries
(cargo build --release --bins --example bare_pingora). Takes about a minute per target and mode.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from harness import KEY, REL, ROOT, free_port, read_response, tollgate_toml, wait_port

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 16}

# Tollgate's own parts, as callgrind names them (inclusive cost per request).
PARTS = [
    ("request_filter (auth, body, policy, budget)", "ProxyHttp>::request_filter::{{closure}} ["),
    ("upstream_request_filter (headers)", "ProxyHttp>::upstream_request_filter::{{closure}} ["),
    ("response_filter (headers, scanner)", "ProxyHttp>::response_filter::{{closure}} ["),
    ("response_body_filter (usage scan)", "ProxyHttp>::response_body_filter ["),
    ("logging (settle, metrics, record)", "ProxyHttp>::logging::{{closure}} ["),
    ("ledger writer thread (SQLite)", "tollgate::ledger::store::Writer::commit ["),
]


def request(port, key, stream):
    body = dict(BODY, stream=True) if stream else BODY
    raw = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n").encode() + raw


def drive(port, key, n, stream):
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    req = request(port, key, stream)
    bad = 0
    for i in range(n):
        s = socks[i % 4]
        s.sendall(req)
        bad += read_response(s, time.perf_counter())[0] != 200
    for s in socks:
        s.close()
    return bad


def annotate(path):
    # From "/", so every file name comes out absolute (under the repository, callgrind_annotate
    # shortens them and splits functions differently).
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", os.path.abspath(path)], capture_output=True,
                         text=True, cwd="/").stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
    parts = {}
    for label, needle in PARTS:
        for line in out.splitlines():
            # The function's own entry is named after the file that defines it; entries named
            # after other files are only the share of it inlined from there.
            m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S+?):", line)
            if m and needle in line and m.group(2).startswith(os.path.join(ROOT, "src")):
                parts[label] = int(m.group(1).replace(",", ""))
                break
    return total, parts


def measure(name, argv, port, key, n, stream, tmp, env=None):
    out = os.path.join(tmp, f"cg-{name}-{'stream' if stream else 'chat'}.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    try:
        wait_port(port, p, name, within=120)
        drive(port, key, 200, stream)  # warm-up: pools, caches, lazy statics
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True)
        bad = drive(port, key, n, stream)
        time.sleep(0.5)  # let the ledger writer's timer commit what these requests wrote
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True)
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    files = sorted((f for f in os.listdir(tmp) if f.startswith(os.path.basename(out))),
                   key=lambda f: os.path.getsize(os.path.join(tmp, f)), reverse=True)
    total, parts = annotate(os.path.join(tmp, files[0]))
    return total / n, {k: v / n for k, v in parts.items()}, bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--mode", choices=["chat", "stream", "both"], default="both")
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_annotate", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit("valgrind is needed: apt-get install valgrind")
    tmp = a.keep or tempfile.mkdtemp(prefix="tollgate-cg-")
    os.makedirs(tmp, exist_ok=True)
    mock = subprocess.Popen([os.path.join(REL, "mock-provider"), "--listen", "127.0.0.1:0", "--threads", "1",
                             "--no-record", "--tokens", "16"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    mock_addr = mock.stdout.readline().split()[1]
    try:
        rows = []
        for stream in ([False, True] if a.mode == "both" else [a.mode == "stream"]):
            mode = "stream" if stream else "chat"
            # nginx
            port = free_port()
            conf = os.path.join(tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"worker_processes 1; daemon off; master_process off; pid {tmp}/nginx.pid;\n"
                        f"error_log {tmp}/nginx-error.log warn; events {{ worker_connections 1024; }}\n"
                        f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n"
                        f"upstream mock {{ server {mock_addr}; keepalive 128; }}\n"
                        f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://mock; "
                        f"proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n")
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            rows.append((mode, "nginx", *measure("nginx", [nginx, "-c", conf, "-p", tmp], port, "sk-bench",
                                                 a.requests, stream, tmp)))
            # pingora floor
            port = free_port()
            rows.append((mode, "pingora", *measure("pingora", [os.path.join(REL, "examples", "bare_pingora"),
                                                               f"127.0.0.1:{port}", mock_addr],
                                                   port, "sk-bench", a.requests, stream, tmp)))
            # tollgate, everything on (the same config as bench.py)
            port = free_port()
            d = os.path.join(tmp, f"tollgate-{mode}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "t.toml"), "w") as f:
                f.write(tollgate_toml(port, mock_addr, os.path.join(d, "ledger.db")))
            env = dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", RUST_LOG="warn")
            rows.append((mode, "tollgate", *measure("tollgate", [os.path.join(REL, "tollgate"), "serve", "--config",
                                                                 os.path.join(d, "t.toml")],
                                                    port, KEY, a.requests, stream, tmp, env=env)))
        print(f"user-space instructions per request (callgrind), {a.requests} sequential requests per target\n")
        print("| mode | target | instructions/request | × nginx | errors |")
        print("|---|---|---|---|---|")
        base = {m: t for m, n, t, _, _ in rows if n == "nginx"}
        for mode, name, total, _, bad in rows:
            print(f"| {mode} | {name} | {total:,.0f} | {total / base[mode]:.2f} | {bad} |")
        for mode, name, total, parts, _ in rows:
            if name != "tollgate":
                continue
            print(f"\nTollgate's own parts, {mode} (inclusive instructions per request)\n")
            print("| part | instructions/request |")
            print("|---|---|")
            for label, _ in PARTS:
                if label in parts:
                    print(f"| {label} | {parts[label]:,.0f} |")
        return 1 if any(r[4] for r in rows) else 0
    finally:
        os.killpg(mock.pid, 9)
        mock.wait()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
