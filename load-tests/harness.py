"""Helpers shared by the load-test scripts: binary paths, ports, readiness, the one Tollgate
configuration every benchmark uses, and an HTTP/1.1 response reader for raw sockets."""
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what, within=20):
    """Return once 127.0.0.1:port accepts; exit with a message if `proc` dies or time runs out."""
    deadline = time.time() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                sys.exit(f"{what} exited early")
            if time.time() > deadline:
                sys.exit(f"{what} did not start")
            time.sleep(0.05)


# The project key of the benchmark configuration.
KEY = "tg_bench_key_0000000000001"
# The key of its `agents` project: the same controls, with room for agents' output caps
# (Claude Code asks for max_tokens 32000).
AGENT_KEY = "tg_bench_agent_key_00000001"


def tollgate_toml(port, upstream, store_path, admin_port=None, rate_limits=True, accounts=1,
                  cache=False):
    """Tollgate with everything on, forwarding model `gpt-*` to `upstream` ("host:port"): key
    auth, the secret detectors and a block pattern, an output cap, a budget (reserved and
    settled on every request), rpm and tpm limits, usage counting, the SQLite ledger. The
    provider key comes from BENCH_PROVIDER_KEY, the admin token (when `admin_port` is given)
    from BENCH_ADMIN_TOKEN. `rate_limits=False` drops the rpm/tpm limits and keeps the rest
    (fleet.py: in fleet mode only a project without them can run on leases). `accounts=4` charges
    each request of project `bench` to four budgeted accounts instead of one: a month and a day
    window, a team and the key (bench.py's `tollgate-4acct`). `cache=True` turns the response
    cache on for `bench` (bench.py's `tollgate-cache-*`)."""
    admin = (f'admin_listen = "127.0.0.1:{admin_port}"\nadmin_token_env = "BENCH_ADMIN_TOKEN"\n'
             if admin_port else "")
    rate = "rate_limit = { rpm = 100000000, tpm = 100000000000 }\n" if rate_limits else ""
    if accounts == 4:
        bench_project = f"""[[teams]]
id = "bench-team"
budget = {{ limit_usd = 1000000.0, period = "month" }}
[[projects]]
id = "bench"
team = "bench-team"
keys = [{{ key = "{KEY}", name = "bench", budget = {{ limit_usd = 1000000.0, period = "week" }} }}]
budgets = [{{ limit_usd = 1000000.0, period = "month" }}, {{ limit_usd = 1000000.0, period = "day" }}]"""
    else:
        bench_project = f"""[[projects]]
id = "bench"
keys = ["{KEY}"]
budget = {{ limit_usd = 1000000.0, period = "month" }}"""
    if cache:
        bench_project += "\ncache = {{ ttl_s = 3600 }}".replace("{{", "{").replace("}}", "}")
    return f"""[server]
listen = "127.0.0.1:{port}"
{admin}threads = 1
[store]
path = "{store_path}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://{upstream}"
api_key_env = "BENCH_PROVIDER_KEY"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{upstream}"
api_key_env = "BENCH_PROVIDER_KEY"
[[routes]]
prefix = "gpt-"
provider = "openai"
[[routes]]
prefix = "claude-"
provider = "anthropic"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
max_output_tokens = 16384
[prices."gpt-5"]
input = 1.25
output = 10.0
max_output_tokens = 128000
[prices."claude-sonnet-4"]
input = 3.0
output = 15.0
max_output_tokens = 64000
{bench_project}
{rate}block_secrets = true
block_patterns = ["(?i)internal use only"]
max_tokens = 4096
[[projects]]
id = "agents"
keys = ["{AGENT_KEY}"]
budget = {{ limit_usd = 1000000.0, period = "month" }}
{rate}block_secrets = true
block_patterns = ["(?i)internal use only"]
"""


def read_response(sock, t0):
    """Read one HTTP/1.1 response (Content-Length or chunked) from a keep-alive socket.
    Returns (status, seconds from `t0` to the first streamed `data:` event, or to the first
    body byte when not SSE, seconds from `t0` to the end)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        hdrs[k.strip().lower()] = v.strip().lower()
    first = None
    sse = hdrs.get(b"content-type", b"").startswith(b"text/event-stream")

    def seen(data):
        nonlocal first
        if first is None and data and (not sse or b"data:" in data):
            first = time.perf_counter()

    if b"content-length" in hdrs:
        need = int(hdrs[b"content-length"])
        seen(rest)
        while len(rest) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-body")
            rest += chunk
            seen(rest)
    elif hdrs.get(b"transfer-encoding") == b"chunked":
        seen(rest)
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-stream")
            rest += chunk
            seen(rest)
    else:
        raise RuntimeError("response without length (the client needs keep-alive framing)")
    end = time.perf_counter()
    return status, (first or end) - t0, end - t0
