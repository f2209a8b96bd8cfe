#!/usr/bin/env python3
"""Time to first byte of a streamed chat completion: direct to the mock provider vs through
Tollgate, measured in the same run, interleaved (direct, gateway, direct, ...) so machine drift
hits both alike. Sequential, one keep-alive connection per path, raw sockets (no client library
overhead in the numbers). Prints medians and p99 in milliseconds and the added time.

Usage: load-tests/ttfb.py [--requests N] [--chunk-delay-ms D]
Builds nothing: expects target/release/{tollgate,mock-provider} (cargo build --release --bins).
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from harness import REL, free_port, wait_port

KEY = "tg_ttfb_benchmark_key_00001"


def request_bytes(host, extra_headers, body):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra_headers}\r\n")
    return head.encode() + body


def read_response(sock):
    """Read one chunked SSE response; return (seconds to first body byte, total seconds)."""
    buf = b""
    t0 = time.perf_counter()
    first = None
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n")[0], head
    if rest:
        first = time.perf_counter()
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed mid-stream")
        if first is None:
            first = time.perf_counter()
        rest += chunk
    return first - t0, time.perf_counter() - t0


def measure(addr, headers, body, send_t):
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--chunk-delay-ms", type=int, default=0)
    a = ap.parse_args()

    mock = subprocess.Popen([os.path.join(REL, "mock-provider"), "--listen", "127.0.0.1:0", "--threads", "1",
                             "--no-record", "--chunk-delay-ms", str(a.chunk_delay_ms)],
                            stdout=subprocess.PIPE, text=True)
    mock_addr = mock.stdout.readline().split()[1]
    tmp = tempfile.mkdtemp()
    port = free_port()
    cfg = os.path.join(tmp, "t.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 1
[store]
path = "{tmp}/l.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://{mock_addr}"
api_key_env = "BENCH_KEY"
[[routes]]
prefix = "gpt-"
provider = "openai"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.6
[[projects]]
id = "bench"
keys = ["{KEY}"]
""")
    gw = subprocess.Popen([os.path.join(REL, "tollgate"), "serve", "--config", cfg],
                          env=dict(os.environ, BENCH_KEY="sk-bench", RUST_LOG="warn"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, gw, "tollgate")
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":16}'
        mh, mp = mock_addr.rsplit(":", 1)
        paths = {
            "direct": ((mh, int(mp)), request_bytes(mock_addr, "authorization: Bearer sk-bench\r\n", body)),
            "tollgate": (("127.0.0.1", port),
                         request_bytes(f"127.0.0.1:{port}", f"authorization: Bearer {KEY}\r\n", body)),
        }
        socks = {k: socket.create_connection(v[0]) for k, v in paths.items()}
        for s in socks.values():
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        res = {k: [] for k in paths}
        for i in range(a.requests + 20):
            for k, (_, req) in paths.items():
                socks[k].sendall(req)
                ttfb, _total = read_response(socks[k])
                if i >= 20:  # warm-up
                    res[k].append(ttfb * 1000)
        d, g = res["direct"], res["tollgate"]
        added = [y - x for x, y in zip(d, g)]
        print(f"ttfb over {a.requests} sequential streamed requests (interleaved), ms")
        print(f"  direct    p50 {statistics.median(d):.3f}  p99 {pct(d, 99):.3f}")
        print(f"  tollgate  p50 {statistics.median(g):.3f}  p99 {pct(g, 99):.3f}")
        print(f"  added     p50 {statistics.median(added):.3f}  p99 {pct(added, 99):.3f}")
    finally:
        gw.kill()
        mock.kill()


if __name__ == "__main__":
    sys.exit(main())
