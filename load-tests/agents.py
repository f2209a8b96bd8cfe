#!/usr/bin/env python3
"""What Tollgate adds to a coding agent's request: the latency of agent-sized bodies.

Agents resend the whole conversation every turn. Claude Code's first request is about 116 KB
(a long system prompt, 24 tools with their JSON schemas, thinking on, cache_control
breakpoints, max_tokens 32000, streamed) and Codex's about 40 KB (a Responses API request with
instructions, tools and input items, store false, streamed). Tollgate parses each, walks every
prompt text once for the secret detectors, a block pattern and the prompt-token bound, reserves
the worst case and scans the streamed reply for usage.

The bodies are built here, deterministically, in those shapes and sizes. One client on raw
sockets alternates direct (the mock), bare Pingora (load-tests/bare_pingora.rs, the framework's
floor) and Tollgate, request by request, so all three see the same machine state; the added
latency is a side's median (and p99) minus direct's, per round, and the median over rounds is
reported. Bodies over 64 KiB make Tollgate close the client connection after the answer (see
src/proxy/body_replay.rs), so every request here opens a new connection, on every side alike.
The reply is 16 streamed tokens (`x-mock-tokens`), so the figure is the proxy's own work, not
the mock's.

    python3 load-tests/agents.py [--rounds 7] [--requests 30] [--bin-dir target/release]
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import bench
from harness import AGENT_KEY, read_response

WORDS = ("the quick brown fox jumps over a lazy dog while an agent edits files runs tests and "
         "reads the output before it decides what to change next in the repository").split()


def text(n_bytes, seed):
    """Deterministic English-like prose of about `n_bytes`."""
    out, i = [], seed
    size = 0
    while size < n_bytes:
        w = WORDS[(i * 7 + 3) % len(WORDS)]
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)


def schema(i):
    props = {f"arg_{j}": {"type": "string", "description": text(120, i * 10 + j)} for j in range(6)}
    return {"type": "object", "properties": props, "required": ["arg_0"], "additionalProperties": False}


def claude_code_body(target=116_000):
    tools = [{"name": f"Tool{i}", "description": text(2200, i), "input_schema": schema(i)}
             for i in range(24)]
    system = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
              {"type": "text", "text": text(14_000, 99), "cache_control": {"type": "ephemeral"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": text(3000, 7)}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": text(600, 8)},
            {"type": "tool_use", "id": "toolu_01", "name": "Tool3", "input": {"arg_0": "src/main.rs"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": text(6000, 9)}]},
    ]
    body = {"model": "claude-sonnet-4", "max_tokens": 32000, "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 31999},
            "metadata": {"user_id": "user_bench"}, "system": system, "tools": tools,
            "messages": messages}
    # Grow the last tool result to the target size.
    while len(json.dumps(body)) < target:
        messages[-1]["content"][0]["content"] += " " + text(1000, len(json.dumps(body)))
    messages[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    return json.dumps(body)


def codex_body(target=40_000):
    tools = [{"type": "function", "name": f"tool_{i}", "description": text(900, 50 + i),
              "strict": False, "parameters": schema(50 + i)} for i in range(8)]
    items = [{"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": text(2500, 5)}]}]
    body = {"model": "gpt-5", "instructions": text(9000, 77), "input": items, "tools": tools,
            "tool_choice": "auto", "parallel_tool_calls": False, "store": False, "stream": True,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "bench-session",
            "reasoning": {"effort": "medium", "summary": "auto"}}
    while len(json.dumps(body)) < target:
        items.append({"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": text(1500, len(items))}]})
    return json.dumps(body)


def request(port, path, body, headers):
    h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    b = body.encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(b)}\r\nx-mock-tokens: 16\r\n{h}\r\n").encode() + b


def once(port, req):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        t0 = time.perf_counter()
        s.sendall(req)
        status, _first, total = read_response(s, t0)
    finally:
        s.close()
    return status, total * 1000


def measure(ports, path, body, auth, rounds, per_round):
    """Alternates the sides request by request; per round, each side's median (and p99) minus
    direct's. Returns, per side other than direct, the median over rounds of those, their p50
    range and the errors."""
    upstream = {"x-api-key": "sk-bench", "authorization": "Bearer sk-bench",
                "anthropic-version": "2023-06-01"}
    reqs = {side: request(port, path, body, auth if side == "gw" else upstream)
            for side, port in ports.items()}
    added = {side: ([], []) for side in ports if side != "direct"}
    errors = 0
    for r in range(rounds + 1):  # round 0 warms up
        lat = {side: [] for side in ports}
        for _ in range(per_round):
            for side, port in ports.items():
                status, ms = once(port, reqs[side])
                errors += status != 200
                lat[side].append(ms)
        if r == 0:
            continue
        for side, (p50, p99) in added.items():
            p50.append(statistics.median(lat[side]) - statistics.median(lat["direct"]))
            p99.append(bench.pct(lat[side], 99) - bench.pct(lat["direct"], 99))
    return {side: (statistics.median(p50), statistics.median(p99), min(p50), max(p50))
            for side, (p50, p99) in added.items()}, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=30, help="requests per side per round")
    ap.add_argument("--bin-dir", help="where tollgate and mock-provider are (default: target/release)")
    ap.add_argument("--smoke", action="store_true", help="one short round (CI keeps the script alive)")
    a = ap.parse_args()
    if a.bin_dir:
        bench.REL = os.path.abspath(a.bin_dir)
    if a.smoke:
        a.rounds, a.requests = 1, 3
    for b in ("tollgate", "mock-provider", os.path.join("examples", "bare_pingora")):
        if not os.path.exists(os.path.join(bench.REL, b)):
            sys.exit(f"{os.path.join(bench.REL, b)} is missing: "
                     "cargo build --release --bins --example bare_pingora")
    cases = [("Claude Code, /v1/messages", "/v1/messages", claude_code_body(),
              {"x-api-key": AGENT_KEY, "anthropic-version": "2023-06-01",
               "anthropic-beta": "interleaved-thinking-2025-05-14"}),
             ("Codex, /v1/responses", "/v1/responses", codex_body(),
              {"authorization": f"Bearer {AGENT_KEY}"})]
    procs = bench.Procs()
    tmp = tempfile.mkdtemp(prefix="tollgate-agents-")
    try:
        _mock, upstream = bench.start_mock(procs)
        direct_port = int(upstream.rsplit(":", 1)[1])
        _gw, gw_port, _admin = bench.start_tollgate(procs, tmp, upstream)
        _bare, bare_port = bench.start_pingora(procs, upstream)
        ports = {"direct": direct_port, "pingora": bare_port, "gw": gw_port}
        print(f"{'request':<28} {'body':>8} {'through':<9} {'added p50':>10} {'added p99':>10} "
              f"{'p50 range':>16}")
        for name, path, body, auth in cases:
            added, errors = measure(ports, path, body, auth, a.rounds, a.requests)
            for side, label in (("gw", "tollgate"), ("pingora", "pingora")):
                p50, p99, lo, hi = added[side]
                print(f"{name:<28} {len(body) / 1000:>6.1f}KB {label:<9} {p50:>8.3f}ms {p99:>8.3f}ms "
                      f"{lo:>7.3f}–{hi:.3f}ms")
            print(f"{name:<28} {'':>8} {'tollgate − pingora':<20} {added['gw'][0] - added['pingora'][0]:>7.3f}ms"
                  f"   errors {errors}")
            if errors:
                sys.exit(f"{name}: {errors} requests failed")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
