"""Install and start the peer gateways the benchmark compares Tollgate with (stdlib only).

Both peers forward OpenAI chat completions to the mock provider on loopback. Everything they
need lives in `load-tests/.peers/` (git-ignored):

- **LiteLLM proxy** (PyPI `litellm[proxy]`, pinned to `LITELLM_REQ`) in the virtualenv
  `.peers/litellm-venv`. It runs as `litellm --config CONFIG --port PORT --host 127.0.0.1` with a
  generated config: model `gpt-4o-mini` -> `openai/gpt-4o-mini` at `http://MOCK_ADDR/v1`.
  - Workers: **1**, LiteLLM's own default (`--num_workers` defaults to
    `DEFAULT_NUM_WORKERS_LITELLM_PROXY` = 1, and the CLI help says "Default is 1"). It is left at
    that default (one uvicorn process on uvloop); `NUM_WORKERS` is removed from its environment
    so that a stray value cannot change it. One worker also matches Tollgate (one worker thread)
    and nginx (one worker) in the benchmark.
  - Turned off: database (no `DATABASE_URL`/`DIRECT_URL`, nothing in the config), Redis, cache,
    telemetry (`LITELLM_TELEMETRY_DISABLED=true`, which is what this version reads, plus the legacy
    `LITELLM_TELEMETRY=False` and `litellm_settings.telemetry: false`), callbacks (all empty),
    the periodic `GET {api_base}/models` model-info refresh that it otherwise sends to the
    provider at start and then on an interval (`general_settings.disable_model_info_refresh`),
    per-request access logs (`LITELLM_LOG=ERROR`, which sets uvicorn's log level), and `.env`
    loading (`LITELLM_MODE=PRODUCTION`, and it runs in the temporary directory).
  - Network at start: by default `import litellm` fetches the model cost map from
    raw.githubusercontent.com (a 5 s timeout, then retries in a background thread).
    `LITELLM_LOCAL_MODEL_COST_MAP=True` makes it use the copy in the package. The tiktoken
    encodings come from the package too. With these settings it opens no connection at start
    except to 127.0.0.1 (checked with strace).
  - Auth: this version refuses to start without a master key, so the config sets
    `general_settings.master_key` = `LITELLM_MASTER_KEY` below, and every request carries
    `Authorization: Bearer <that key>`. With no database it checks the key against that value.
  - Start-up takes about 10 s on an idle 2-core machine (importing the proxy); `start` waits up
    to 120 s.

- **Portkey AI gateway** (npm `@portkey-ai/gateway`, pinned to `PORTKEY_REQ`) installed with
  `npm install --prefix .peers/portkey`, run as
  `node -r LOOPBACK_PRELOAD build/start-server.js --port=PORT --headless`.
  - Its port comes only from a `--port=N` argument (one argument with `=`; `PORT` in the
    environment is not what the Node server listens on). It defaults to 8787.
  - It calls `@hono/node-server`'s `serve({fetch, port})` with no hostname, so it would listen on
    all interfaces. The preload (written to the temporary directory) makes a `listen(port)` that
    has no host listen on 127.0.0.1 instead. It changes nothing else.
  - `--headless` leaves out the web UI and its `/log/stream` log feed.
  - Routing is done per request with headers (no config file): `x-portkey-provider: openai`,
    `x-portkey-custom-host: http://MOCK_ADDR/v1` (127.0.0.1 and localhost are on its default
    `TRUSTED_CUSTOM_HOSTS` list, so a loopback custom host is accepted), and
    `Authorization: Bearer <key>`, which it forwards to the provider.
  - `@hono/node-server` is pinned to 1.13.5 (with `@hono/node-ws` 1.2.0, the newest whose peer
    range accepts it; both inside the gateway's own ranges `^1.3.3` and `^1.2.0`). With what npm
    picks by default (1.19.x) every *streaming* chat completion fails with
    `{"status":"failure","message":"Something went wrong"}` and `TypeError: immutable` in
    `updateHeaders` in its log: in 1.14.2 and 1.19.x (both tried here), hono's `Response` keeps
    the upstream fetch response's immutable headers, which the gateway then appends to
    (Portkey-AI/gateway issues #1389 and #1550). 1.13.5 copies them; it is what the gateway's own
    lockfile resolved (issue #1604). Non-streaming requests work with either.
  - npm 11 does not run the package's `postinstall` (`patch-package`). The package ships no
    patches, so there is nothing for it to do.

The readiness check in `start` sends one real non-streaming chat completion through the peer.
It reaches the mock, so the mock's request count includes it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from harness import free_port, wait_port  # noqa: E402

PEERS = ("litellm", "portkey")

PEERS_DIR = os.path.join(HERE, ".peers")
LITELLM_VENV = os.path.join(PEERS_DIR, "litellm-venv")
LITELLM_VERSION = "1.108.7"
LITELLM_REQ = f"litellm[proxy]=={LITELLM_VERSION}"
LITELLM_MASTER_KEY = "sk-bench-litellm-master-key-0123456789abcdef"
PORTKEY_DIR = os.path.join(PEERS_DIR, "portkey")
PORTKEY_VERSION = "1.15.2"
PORTKEY_REQ = f"@portkey-ai/gateway@{PORTKEY_VERSION}"
# Installed beside it (exact versions, hoisted, so the gateway uses them): see the docstring.
PORTKEY_PINS = {"@hono/node-server": "1.13.5", "@hono/node-ws": "1.2.0"}
PORTKEY_PKG = os.path.join(PORTKEY_DIR, "node_modules", "@portkey-ai", "gateway")
PORTKEY_API_KEY = "sk-bench-portkey-0123456789abcdef"

START_WITHIN = {"litellm": 120, "portkey": 30}

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
    "max_tokens": 16,
}

# Makes net.Server#listen(port[, cb]) with no host listen on 127.0.0.1 (Portkey passes none).
LOOPBACK_PRELOAD = """\
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length === 1 || typeof args[1] === "function" || args[1] === undefined)) {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""

# Run in the venv's python: is the pinned litellm installed with every `proxy` extra dependency?
_LITELLM_CHECK = r"""
import importlib.metadata as md, re, sys
want = sys.argv[1]
try:
    have = md.version("litellm")
except md.PackageNotFoundError:
    sys.exit("litellm not installed")
if have != want:
    sys.exit(f"litellm {have} installed, want {want}")
missing = []
for req in md.requires("litellm") or []:
    if re.search(r"extra\s*==\s*['\"]proxy['\"]", req):
        name = re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
if missing:
    sys.exit("missing: " + " ".join(missing))
"""


def _check(name):
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {PEERS}")


def _last_line(text, prefer=("ERROR", "error", "npm error")):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in reversed(lines):
        if l.startswith(prefer):
            return l[:300]
    return lines[-1][:300] if lines else "no output"


def _nice():
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def _venv_python():
    return os.path.join(LITELLM_VENV, "bin", "python")


def _litellm_ok():
    py = _venv_python()
    if not os.access(py, os.X_OK) or not os.access(os.path.join(LITELLM_VENV, "bin", "litellm"), os.X_OK):
        return "not installed"
    try:
        r = subprocess.run([py, "-c", _LITELLM_CHECK, LITELLM_VERSION], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"venv python does not run: {e}"
    return None if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}")


def _run_install(name, what, argv, ok, log):
    """Run an installer (niced, output to .peers/NAME-install.log), then check the result
    with `ok`. None on success, else a one-line reason."""
    logpath = os.path.join(PEERS_DIR, f"{name}-install.log")
    with open(logpath, "w") as out:
        r = subprocess.run(_nice() + argv, stdout=out, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        with open(logpath) as f:
            return f"{what} failed: {_last_line(f.read())}"
    why = ok()
    if why is not None:
        return f"{name} installed but not usable: {why}"
    log(f"{name}: installed {version(name)}")
    return None


def _install_litellm(log):
    why = _litellm_ok()
    if why is None:
        return None
    log(f"litellm: {why}; installing {LITELLM_REQ} into {LITELLM_VENV}")
    os.makedirs(PEERS_DIR, exist_ok=True)
    py = _venv_python()
    venv_works = os.access(py, os.X_OK) and subprocess.run([py, "-c", "import pip"], capture_output=True).returncode == 0
    if not venv_works:
        r = subprocess.run(
            [sys.executable, "-m", "venv", "--clear", LITELLM_VENV], capture_output=True, text=True
        )
        if r.returncode != 0:
            return f"python3 -m venv failed: {_last_line(r.stderr + r.stdout)}"
    return _run_install("litellm", f"pip install {LITELLM_REQ}",
                        [py, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "2",
                         "--timeout", "60", LITELLM_REQ],
                        _litellm_ok, log)


def _portkey_ok():
    if shutil.which("node") is None:
        return "node is not installed"
    try:
        with open(os.path.join(PORTKEY_PKG, "package.json")) as f:
            have = json.load(f).get("version")
    except (OSError, ValueError):
        return "not installed"
    if have != PORTKEY_VERSION:
        return f"@portkey-ai/gateway {have} installed, want {PORTKEY_VERSION}"
    for dep, want in PORTKEY_PINS.items():
        try:
            with open(os.path.join(PORTKEY_DIR, "node_modules", dep, "package.json")) as f:
                have = json.load(f).get("version")
        except (OSError, ValueError):
            return f"dependency {dep} missing"
        if have != want:
            return f"{dep} {have} installed, want {want}"
    if not os.path.isdir(os.path.join(PORTKEY_DIR, "node_modules", "hono")):
        return "dependency hono missing"
    if not os.path.isfile(os.path.join(PORTKEY_PKG, "build", "start-server.js")):
        return "build/start-server.js missing"
    return None


def _install_portkey(log):
    why = _portkey_ok()
    if why is None:
        return None
    if shutil.which("node") is None:
        return "node is not installed"
    try:
        major = int(subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError):
        major = 0
    if major < 18:
        return f"node 18 or newer is needed (found major {major})"
    if shutil.which("npm") is None:
        return "npm is not installed"
    log(f"portkey: {why}; installing {PORTKEY_REQ} into {PORTKEY_DIR}")
    os.makedirs(PORTKEY_DIR, exist_ok=True)
    return _run_install("portkey", f"npm install {PORTKEY_REQ}",
                        ["npm", "install", "--prefix", PORTKEY_DIR, "--no-audit", "--no-fund", "--save-exact",
                         PORTKEY_REQ, *(f"{k}@{v}" for k, v in PORTKEY_PINS.items())],
                        _portkey_ok, log)


def install(name, log=print):
    """Ensure the peer is installed: None on success, else a one-line reason it cannot be."""
    _check(name)
    try:
        return _install_litellm(log) if name == "litellm" else _install_portkey(log)
    except Exception as e:  # a reason, not a traceback, for the results table
        return f"{type(e).__name__}: {e}"


def version(name):
    """The installed version string, or 'not installed'."""
    _check(name)
    if name == "litellm":
        try:
            r = subprocess.run(
                [_venv_python(), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                capture_output=True, text=True, timeout=30,
            )
            return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "not installed"
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
    try:
        with open(os.path.join(PORTKEY_PKG, "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "not installed"


def _clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k in ("DATABASE_URL", "DIRECT_URL", "DATABASE_URL_READ_REPLICA", "NUM_WORKERS", "PORT",
                 "LITELLM_MASTER_KEY", "REDIS_URL", "REDIS_HOST", "REDIS_CONNECTION_STRING",
                 "NODE_OPTIONS") or k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del env[k]
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _litellm_config(mock_addr):
    # JSON is valid YAML, so no YAML writer is needed.
    return json.dumps({
        "model_list": [{
            "model_name": "gpt-4o-mini",
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_base": f"http://{mock_addr}/v1",
                "api_key": "sk-bench-mock-0123456789abcdef",
            },
        }],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "cache": False,
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": {
            "master_key": LITELLM_MASTER_KEY,
            "disable_model_info_refresh": True,
        },
    }, indent=2) + "\n"


def _tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


def _chat_ok(port, headers, timeout):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(BODY).encode(),
        headers={"content-type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.loads(r.read())
            return r.status == 200 and body.get("usage", {}).get("completion_tokens") is not None, None
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}: {e.read()[:300]!r}"
    except (OSError, ValueError) as e:
        return False, str(e)


def start(name, mock_addr, tmpdir):
    """Start the peer routed to mock_addr ("127.0.0.1:PORT"): (process, port, request headers).

    Returns once a real chat completion through it reaches the mock and comes back; raises
    RuntimeError with the tail of its log otherwise. The process leads its own process group.
    """
    _check(name)
    os.makedirs(tmpdir, exist_ok=True)
    port = free_port()
    env = _clean_env()
    logpath = os.path.join(tmpdir, f"{name}.log")
    if name == "litellm":
        cfg = os.path.join(tmpdir, "litellm.yaml")
        with open(cfg, "w") as f:
            f.write(_litellm_config(mock_addr))
        env.update({
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
        })
        cmd = [os.path.join(LITELLM_VENV, "bin", "litellm"), "--config", cfg,
               "--port", str(port), "--host", "127.0.0.1"]
        headers = {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
    else:
        preload = os.path.join(tmpdir, "portkey-loopback.cjs")
        with open(preload, "w") as f:
            f.write(LOOPBACK_PRELOAD)
        env["NODE_ENV"] = "production"
        cmd = ["node", "-r", preload, os.path.join(PORTKEY_PKG, "build", "start-server.js"),
               f"--port={port}", "--headless"]
        headers = {
            "Authorization": f"Bearer {PORTKEY_API_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://{mock_addr}/v1",
        }
    with open(logpath, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmpdir, start_new_session=True)
    within = START_WITHIN[name]
    deadline = time.time() + within
    try:
        try:
            wait_port(port, proc, name, within=within)
        except SystemExit as e:
            raise RuntimeError(f"{name}: {e}") from None
        last = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}")
            ok, last = _chat_ok(port, headers, timeout=max(1.0, min(10.0, deadline - time.time())))
            if ok:
                return proc, port, headers
            if time.time() > deadline:
                raise RuntimeError(f"{name} answered no chat completion within {within} s (last: {last})")
            time.sleep(0.25)
    except RuntimeError as e:
        stop(proc)
        raise RuntimeError(f"{e}\n--- tail of {logpath} ---\n{_tail(logpath)}") from None


def stop(proc):
    """Kill the peer and its whole process group. Never raises."""
    try:
        pgid = proc.pid  # start_new_session: the peer leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # Children may outlive the leader, and the leader may ignore SIGTERM: kill the group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    except Exception:
        pass
