#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: the profile that explains the
throughput table, free of the machine's noise (callgrind counts instructions, not seconds, so
the same binaries and inputs give the same figures on a loaded machine).

Each target runs under `valgrind --tool=callgrind` with instrumentation off; after a warm-up it
is switched on for N sequential requests (4 keep-alive connections, round robin), then the
counts are dumped. Reported: user-space instructions per request for the whole process (every
thread: Tollgate's ledger writer included), and for Tollgate the inclusive cost of its own
phases and of the ledger writer, so what Tollgate adds over the framework is visible.

`--mode agents` sends agents.py's bodies instead (a 116 KB Claude Code `/v1/messages` and a
41 KB Codex `/v1/responses`, streamed, 16 tokens back) to bare Pingora and to Tollgate's `agents`
project (the secret detectors and one block pattern on), one new connection per request as in
agents.py, and breaks Tollgate's `request_filter` down into the parts an agent's body pays for:
the body read, the field parse, the prompt walk, the secret detectors, the pattern, the
rewrite and the >64 KiB replay.

`--mode cache` profiles bench.py's cache targets: the uncached gateway and a real miss (each
request a body of its own, of one length), a miss stored again (`x-tollgate-cache: refresh`) and a
hit, with the same parts.

Usage: load-tests/instructions.py [--requests N] [--mode chat|stream|both|agents|cache] [--keep DIR]
       [--provider-headers]
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

import agents
from harness import AGENT_KEY, KEY, REL, ROOT, free_port, read_response, tollgate_toml, wait_port

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
# The cache's own parts (in request_filter and response_body_filter above).
CACHE_PARTS = PARTS + [
    ("cache key (SHA-256 of the body)", "tollgate::engine::cache::key ["),
    ("cache lookup", "tollgate::cache::ResponseCache::get ["),
    ("cache store (entry, insert)", "tollgate::proxy::finish::<impl tollgate::proxy::Gateway>::store_cached ["),
]


def request(port, key, stream, extra="", n=None):
    body = dict(BODY, stream=True) if stream else BODY
    if n is not None:
        # A body of its own (same length for every n): a cache miss that is a real miss.
        body = dict(body, messages=[{"role": "user", "content": f"{BODY['messages'][0]['content']} {n:08d}"}])
    raw = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\n{extra}content-length: {len(raw)}\r\n\r\n").encode() + raw


def drive(port, key, n, stream, extra="", fresh_from=None):
    """`n` requests on 4 connections; with `fresh_from`, each has a body of its own (numbered
    from it), else all are the same."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    req = request(port, key, stream, extra)
    bad = 0
    for i in range(n):
        s = socks[i % 4]
        s.sendall(req if fresh_from is None else request(port, key, stream, extra, fresh_from + i))
        bad += read_response(s, time.perf_counter())[0] != 200
    for s in socks:
        s.close()
    return bad


def annotate(path, wanted=PARTS):
    # From "/", so every file name comes out absolute (under the repository, callgrind_annotate
    # shortens them and splits functions differently).
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", os.path.abspath(path)], capture_output=True,
                         text=True, cwd="/").stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
    parts = {}
    for label, needle in wanted:
        for line in out.splitlines():
            # The function's own entry is the one with its object file in brackets (the
            # needle ends in " ["); it is usually named after the file that defines it, but
            # with link-time optimisation after whichever file its first instruction was
            # inlined from. The entries without the object are only shares of it.
            m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S+?):", line)
            if m and needle in line:
                parts[label] = max(parts.get(label, 0), int(m.group(1).replace(",", "")))
    return total, parts


def measure(name, argv, port, key, n, stream, tmp, env=None):
    label = f"{name}-{'stream' if stream else 'chat'}"
    [(total, parts, bad)] = profile(label, argv, port, lambda: drive(port, key, 200, stream),
                                    [lambda: drive(port, key, n, stream)], tmp, env)
    return total / n, {k: v / n for k, v in parts.items()}, bad


def cache_mode(a, tmp, mock_addr):
    """bench.py's cache targets under callgrind: the uncached gateway, then the cached one with
    every request a miss (a new body), a miss stored again (`x-tollgate-cache: refresh`) or a hit."""
    env = dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", RUST_LOG="warn")
    rows = []
    # The uncached gateway and a real miss send a body of their own each time (same length);
    # `refresh` and the hit send one body over and over.
    for name, cache, extra, fresh in [("tollgate", False, "", True), ("cache-miss (new body)", True, "", True),
                                      ("cache-miss (refresh)", True, "x-tollgate-cache: refresh\r\n", False),
                                      ("cache-hit", True, "", False)]:
        port = free_port()
        d = os.path.join(tmp, f"tollgate-{'cache' if cache else 'plain'}-{len(rows)}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "t.toml"), "w") as f:
            f.write(tollgate_toml(port, mock_addr, os.path.join(d, "ledger.db"), cache=cache))
        argv = [os.path.join(REL, "tollgate"), "serve", "--config", os.path.join(d, "t.toml")]
        label = f"{'cache' if cache else 'plain'}-{len(rows)}"
        [(total, parts, bad)] = profile(label, argv, port,
                                        lambda: drive(port, KEY, 200, False, extra, 0 if fresh else None),
                                        [lambda: drive(port, KEY, a.requests, False, extra, 200 if fresh else None)],
                                        tmp, env, wanted=CACHE_PARTS)
        rows.append((name, total / a.requests, {k: v / a.requests for k, v in parts.items()}, bad))
    print(f"user-space instructions per request (callgrind), chat, {a.requests} sequential requests per target\n")
    print("| target | instructions/request | × uncached | errors |")
    print("|---|---|---|---|")
    for name, total, _, bad in rows:
        print(f"| {name} | {total:,.0f} | {total / rows[0][1]:.3f} | {bad} |")
    print("\nTollgate's own parts (inclusive instructions per request)\n")
    print("| part | " + " | ".join(r[0] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for label, _ in CACHE_PARTS:
        print(f"| {label} | " + " | ".join(f"{r[2].get(label, 0):,.0f}" for r in rows) + " |")
    return 1 if any(r[3] for r in rows) else 0


def profile(label, argv, port, warm, runs, tmp, env=None, parts=None, wanted=PARTS):
    """Start `argv` under callgrind, call `warm()` uninstrumented, then each of `runs` with
    instrumentation on, dumping the counts after each. Returns, per run, (total instructions,
    {part: inclusive instructions}, failed requests)."""
    out = os.path.join(tmp, f"cg-{label}.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    bads = []
    try:
        wait_port(port, p, label, within=120)
        warm()  # warm-up: pools, caches, lazy statics
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True)
        for run in runs:
            bads.append(run())
            time.sleep(0.5)  # let the ledger writer's timer commit what these requests wrote
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True)
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    # One file per dump, numbered in order: cg-LABEL.out.1, .2, ...
    dumps = sorted((f for f in os.listdir(tmp) if f.startswith(os.path.basename(out) + ".")),
                   key=lambda f: int(f.rsplit(".", 1)[1].split("-")[0]))
    if len(dumps) != len(runs):
        sys.exit(f"{label}: expected {len(runs)} callgrind dumps, found {dumps}")
    results = []
    for f, bad in zip(dumps, bads):
        if parts is None:
            total, found = annotate(os.path.join(tmp, f), wanted)
        else:
            total, found = annotate_parts(os.path.join(tmp, f), parts)
        results.append((total, found, bad))
    return results


# agents mode: the parts of Tollgate an agent's body pays for, as (label, function). A function
# is matched on its full name after the file; callgrind_annotate also lists the share of a
# function inlined from other files as entries of their own, which are contained in the entry
# named after the function's own file, so the largest entry is taken. Inclusive: a part contains
# the parts indented under it. `None` rows are computed from the others (see agent_rows).
GW = "<tollgate::proxy::Gateway as pingora_proxy::proxy_trait::ProxyHttp>::"
AGENT_PARTS = [
    ("request_filter", GW + "request_filter::{{closure}}"),
    ("admission::decide", "tollgate::engine::admission::decide"),
    ("request::parse (the fields)", "tollgate::engine::request::parse"),
    ("request::Members::facts (the fields, from the walk)", "tollgate::engine::request::Members::facts"),
    # check_prompt before the walk reported the body's members, scan_prompt after.
    ("the prompt scan (the walk, detectors, pattern)", "tollgate::engine::policy::check_prompt"),
    ("the prompt scan (the walk, detectors, pattern)", "tollgate::engine::policy::scan_prompt"),
    ("the callback per text (detectors, pattern)", "tollgate::engine::policy::check_prompt::{{closure}}"),
    ("the callback per text (detectors, pattern)", "tollgate::engine::policy::scan_prompt::{{closure}}"),
    ("secrets::find_secret", "tollgate::engine::secrets::find_secret"),
    ("request::rewrite", "tollgate::engine::request::rewrite"),
    ("body_replay::install", "tollgate::proxy::body_replay::install"),
    ("request_body_filter", GW + "request_body_filter::{{closure}}"),
    ("response_body_filter (usage scan)", GW + "response_body_filter"),
    ("logging (settle, metrics, record)", GW + "logging::{{closure}}"),
    ("ledger writer thread (SQLite)", "tollgate::ledger::store::Writer::commit"),
    ("memcpy", "__memcpy_avx_unaligned_erms"),
]
# memcpy, by the caller that copies (body copies mostly).
MEMCPY_CALLERS = [
    ("memcpy: pingora's body chunks (Bytes::copy_from_slice)", "bytes::bytes::Bytes::copy_from_slice"),
    ("memcpy: pingora's retry buffer (FixedBuffer)", "pingora_core::protocols::http::body_buffer::FixedBuffer::write_to_buffer"),
    ("memcpy: pingora's retry buffer replayed (BytesMut clone)", "<bytes::bytes_mut::BytesMut as core::clone::Clone>::clone"),
    ("memcpy: Tollgate's body accumulation (admit)", "tollgate::proxy::admit::<impl tollgate::proxy::Gateway>::admit::{{closure}}"),
    ("memcpy: socket read buffer (BufferedStream::poll_read)", "<pingora_core::protocols::l4::stream::BufferedStream as tokio::io::async_read::AsyncRead>::poll_read"),
]


def agent_rows(parts):
    """The report's rows, in order: (label, instructions or None, depth)."""
    g = parts.get
    pf = lambda *ks: None if any(g(k) is None for k in ks) else g(ks[0]) - sum(g(k) for k in ks[1:])
    scan = "the prompt scan (the walk, detectors, pattern)"
    callback = "the callback per text (detectors, pattern)"
    return [
        ("request_filter", g("request_filter"), 0),
        ("body read, copies, reservation (request_filter − decide)", pf("request_filter", "admission::decide"), 1),
        ("admission::decide", g("admission::decide"), 1),
        ("request::parse (the fields)", g("request::parse (the fields)"), 2),
        ("the fields from the walk's members (request::Members::facts)",
         g("request::Members::facts (the fields, from the walk)"), 2),
        ("the prompt scan (policy)", g(scan), 2),
        ("the walk itself (scan − callback)", pf(scan, callback), 3),
        ("secrets::find_secret", g("secrets::find_secret"), 3),
        ("the block pattern (callback − find_secret)", pf(callback, "secrets::find_secret"), 3),
        ("request::rewrite", g("request::rewrite"), 2),
        ("body_replay::install (> 64 KiB)", g("body_replay::install"), 1),
        ("request_body_filter", g("request_body_filter"), 0),
        ("response_body_filter (usage scan)", g("response_body_filter (usage scan)"), 0),
        ("logging (settle, metrics, record)", g("logging (settle, metrics, record)"), 0),
        ("ledger writer thread (SQLite)", g("ledger writer thread (SQLite)"), 0),
        ("memcpy, all callers", g("memcpy"), 0),
    ] + [(label[len("memcpy: "):], g(label), 1) for label, _ in MEMCPY_CALLERS]


def annotate_parts(path, parts):
    """Total instructions and, per part, the function's inclusive cost (and memcpy's callers)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=caller", "--threshold=100",
                          os.path.abspath(path)], capture_output=True, text=True, cwd="/").stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
    line_re = re.compile(r"\s*([\d,]+) \([ \d.]+%\)\s+([<*])\s+\S+?:(.*?)(?: \([\d,]+x\))?(?: \[[^\]]*\])?$")
    found = {}
    callers = []
    for line in out.splitlines():
        m = line_re.match(line)
        if not m:
            callers = []
            continue
        cost, kind, fn = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        if kind == "<":
            callers.append((fn, cost))
            continue
        for label, name in parts:
            if fn == name:
                found[label] = max(found.get(label, 0), cost)
        if fn == "__memcpy_avx_unaligned_erms":
            for label, name in MEMCPY_CALLERS:
                c = sum(cost for f, cost in callers if f == name)
                if c:
                    found[label] = found.get(label, 0) + c
        callers = []
    return total, found


def drive_fresh(port, req, n):
    """`n` requests, each on a new connection, as agents.py sends them."""
    bad = 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.sendall(req)
            bad += read_response(s, time.perf_counter())[0] != 200
        finally:
            s.close()
    return bad


def agents_mode(a, tmp, mock_addr):
    n = a.requests
    cases = [("Claude Code /v1/messages", "/v1/messages", agents.claude_code_body(),
              {"x-api-key": AGENT_KEY, "anthropic-version": "2023-06-01",
               "anthropic-beta": "interleaved-thinking-2025-05-14"}),
             ("Codex /v1/responses", "/v1/responses", agents.codex_body(),
              {"authorization": f"Bearer {AGENT_KEY}"})]
    upstream = {"x-api-key": "sk-bench", "authorization": "Bearer sk-bench", "anthropic-version": "2023-06-01"}
    rows = {}
    # bare Pingora: the framework's floor for the same bodies
    port = free_port()
    reqs = [agents.request(port, path, body, upstream) for _, path, body, _ in cases]
    res = profile("pingora-agents", [os.path.join(REL, "examples", "bare_pingora"), f"127.0.0.1:{port}", mock_addr],
                  port, lambda: [drive_fresh(port, r, 20) for r in reqs],
                  [lambda r=r: drive_fresh(port, r, n) for r in reqs], tmp, parts=[])
    for (name, *_), (total, _, bad) in zip(cases, res):
        rows[(name, "pingora")] = (total / n, {}, bad)
    # Tollgate, the `agents` project of bench.py's configuration
    port = free_port()
    d = os.path.join(tmp, "tollgate-agents")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "t.toml"), "w") as f:
        f.write(tollgate_toml(port, mock_addr, os.path.join(d, "ledger.db")))
    env = dict(os.environ, BENCH_PROVIDER_KEY="sk-bench", RUST_LOG="warn")
    reqs = [agents.request(port, path, body, auth) for _, path, body, auth in cases]
    res = profile("tollgate-agents", [os.path.join(REL, "tollgate"), "serve", "--config", os.path.join(d, "t.toml")],
                  port, lambda: [drive_fresh(port, r, 20) for r in reqs],
                  [lambda r=r: drive_fresh(port, r, n) for r in reqs], tmp, env=env, parts=AGENT_PARTS)
    for (name, *_), (total, parts, bad) in zip(cases, res):
        rows[(name, "tollgate")] = (total / n, {k: v / n for k, v in parts.items()}, bad)
    print(f"user-space instructions per request (callgrind), {n} requests per body and target, "
          f"each on a new connection\n")
    print("| request | body | Pingora, no-op | Tollgate | Tollgate − Pingora | errors |")
    print("|---|---|---|---|---|---|")
    for name, _path, body, _ in cases:
        p, t = rows[(name, "pingora")], rows[(name, "tollgate")]
        print(f"| {name} | {len(body) / 1000:.1f} KB | {p[0]:,.0f} | {t[0]:,.0f} | {t[0] - p[0]:,.0f} | "
              f"{p[2] + t[2]} |")
    print("\nTollgate's parts (inclusive instructions per request; an indented part is inside the one above)\n")
    print("| part | " + " | ".join(name for name, *_ in cases) + " |")
    print("|---|" + "---|" * len(cases))
    tables = [agent_rows(rows[(name, "tollgate")][1]) for name, *_ in cases]
    for i, (label, _, depth) in enumerate(tables[0]):
        cells = " | ".join("–" if t[i][1] is None else f"{t[i][1]:,.0f}" for t in tables)
        print(f"| {'&nbsp;&nbsp;' * depth}{label} | {cells} |")
    return 1 if any(r[2] for r in rows.values()) else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, help="per target (and body); default 2000, agents 200")
    ap.add_argument("--mode", choices=["chat", "stream", "both", "agents", "cache"], default="both")
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    ap.add_argument("--provider-headers", action="store_true",
                    help="the mock answers with a real provider's ~20 headers instead of the 3 or 4 "
                         "an answer needs (mock-provider --provider-headers)")
    a = ap.parse_args()
    if a.requests is None:
        a.requests = 200 if a.mode == "agents" else 2000
    for tool in ("valgrind", "callgrind_annotate", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit("valgrind is needed: apt-get install valgrind")
    tmp = a.keep or tempfile.mkdtemp(prefix="tollgate-cg-")
    os.makedirs(tmp, exist_ok=True)
    mock = subprocess.Popen([os.path.join(REL, "mock-provider"), "--listen", "127.0.0.1:0", "--threads", "1",
                             "--no-record", "--tokens", "16"] + (["--provider-headers"] if a.provider_headers else []),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    mock_addr = mock.stdout.readline().split()[1]
    try:
        if a.mode == "agents":
            return agents_mode(a, tmp, mock_addr)
        if a.mode == "cache":
            return cache_mode(a, tmp, mock_addr)
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
