"""The console's real-browser test: the real tollgate binary (cargo's target/debug) and the mock
provider on loopback ports, a config with an admin and a viewer token, traffic sent through the
gateway, and headless Debian chromium driven by chromedriver through Selenium."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TOLLGATE = os.environ.get("TOLLGATE_BIN", os.path.join(TARGET, "debug", "tollgate"))
MOCK = os.environ.get("MOCK_BIN", os.path.join(TARGET, "debug", "mock-provider"))
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
SCREENSHOTS = os.path.join(TARGET, "console-screenshots")

ADMIN_TOKEN = "console-admin-token-0123456789"
VIEWER_TOKEN = "console-viewer-token-9876543210"
KEY_CHECKOUT = "tg_console_key_checkout_0001"
KEY_CI = "tg_console_key_checkout_ci_02"
KEY_SEARCH = "tg_console_key_search_00003"
KEY_BATCH = "tg_console_key_batch_000004"

CONFIG = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "CONSOLE_ADMIN_TOKEN"
viewer_token_env = "CONSOLE_VIEWER_TOKEN"
[store]
path = "{tmp}/ledger.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}"
api_key_env = "CONSOLE_OPENAI_KEY"
read_timeout_ms = 3000
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"
api_key_env = "CONSOLE_ANTHROPIC_KEY"
read_timeout_ms = 3000
[[routes]]
prefix = "gpt-"
provider = "openai"
[[routes]]
prefix = "claude-"
provider = "anthropic"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.6
[prices."gpt-4o"]
input = 2.5
output = 10.0
[prices."claude-sonnet-4"]
input = 3.0
output = 15.0
[[teams]]
id = "payments"
budget = {{ limit_usd = 0.5, period = "month" }}
[[projects]]
id = "checkout-bot"
team = "payments"
budgets = [{{ limit_usd = 0.05, period = "month" }}, {{ limit_usd = 0.008, period = "day" }}]
keys = ["{checkout}", {{ key = "{ci}", name = "ci" }}]
block_secrets = true
[[projects]]
id = "search"
budget = {{ limit_usd = 0.02, period = "month" }}
keys = ["{search}"]
allow_models = ["claude-*", "gpt-4o-mini"]
[[projects]]
id = "batch"
keys = ["{batch}"]
"""


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def http(method, url, headers=None, body=None, timeout=30):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, dict(r.headers), r.read().decode())
    except urllib.error.HTTPError as e:
        return Resp(e.code, dict(e.headers), e.read().decode())


class Stack:
    """The running gateway: its proxy and admin addresses, and helpers that talk to them."""

    def __init__(self, base, admin, log, config_path):
        self.base = base
        self.admin = admin
        self.log = log
        self.config_path = config_path

    @contextmanager
    def config_changed(self, old, new):
        """The config file with `old` replaced by `new`, reloaded; the original back, reloaded again,
        when the block ends (the other tests share this gateway)."""
        with open(self.config_path) as f:
            original = f.read()
        assert original.count(old) == 1, old
        try:
            with open(self.config_path, "w") as f:
                f.write(original.replace(old, new))
            r = self.admin_post("/admin/reload")
            assert r.status == 200, r.body
            yield
        finally:
            with open(self.config_path, "w") as f:
                f.write(original)
            r = self.admin_post("/admin/reload")
            assert r.status == 200, r.body

    def chat(self, key, model="gpt-4o-mini", user=None, tags=None, tokens=7, content="hello"):
        h = {"content-type": "application/json", "x-api-key": key, "x-mock-tokens": str(tokens)}
        if user:
            h["x-tollgate-user"] = user
        if tags:
            h["x-tollgate-tags"] = tags
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 400}
        if model.startswith("claude-"):
            h["anthropic-version"] = "2023-06-01"
            return http("POST", self.base + "/v1/messages", h, json.dumps(body))
        return http("POST", self.base + "/v1/chat/completions", h, json.dumps(body))

    def admin_get(self, path, token=ADMIN_TOKEN):
        return http("GET", self.admin + path, {"authorization": "Bearer " + token})

    def admin_post(self, path, token=ADMIN_TOKEN):
        return http("POST", self.admin + path, {"authorization": "Bearer " + token}, b"")

    def wait_recorded(self, ids, timeout=20):
        """Until every request id is a decision record in the store (the writer flushes in
        batches; its rollups are written in the same transaction)."""
        deadline = time.monotonic() + timeout
        while True:
            got = {d["id"] for d in self.admin_get("/admin/decisions?limit=1000").json()["decisions"]}
            if set(ids) <= got:
                return
            assert time.monotonic() < deadline, f"records missing: {set(ids) - got}"
            time.sleep(0.05)


def _read_listeners(proc, log_path, want):
    """The `LISTENING` / `ADMIN_LISTENING` lines tollgate prints once its listeners are bound."""
    found = {}
    while set(want) - set(found):
        line = proc.stdout.readline()
        if not line:
            with open(log_path) as f:
                raise AssertionError("tollgate exited:\n" + f.read())
        tag, _, addr = line.strip().partition(" ")
        if tag in want:
            found[tag] = "http://" + addr
    # Keep draining stdout so the child can never block on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return found


@pytest.fixture(scope="session")
def mock():
    p = subprocess.Popen([MOCK, "--listen", "127.0.0.1:0", "--threads", "1"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("LISTENING "), line
    yield "http://" + line.split(" ", 1)[1]
    p.kill()
    p.wait()


@pytest.fixture(scope="session")
def stack(mock):
    tmp = tempfile.mkdtemp(prefix="tollgate-console-")
    path = os.path.join(tmp, "tollgate.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(tmp=tmp, mock=mock, checkout=KEY_CHECKOUT, ci=KEY_CI, search=KEY_SEARCH,
                              batch=KEY_BATCH))
    env = dict(os.environ, CONSOLE_OPENAI_KEY="sk-openai-provider-secret",
               CONSOLE_ANTHROPIC_KEY="sk-ant-provider-secret", CONSOLE_ADMIN_TOKEN=ADMIN_TOKEN,
               CONSOLE_VIEWER_TOKEN=VIEWER_TOKEN, RUST_LOG="info")
    log_path = os.path.join(tmp, "tollgate.log")
    log = open(log_path, "w")
    p = subprocess.Popen([TOLLGATE, "serve", "--config", path], env=env, stderr=log, stdout=subprocess.PIPE,
                         text=True)
    addrs = _read_listeners(p, log_path, ["LISTENING", "ADMIN_LISTENING"])
    s = Stack(addrs["LISTENING"], addrs["ADMIN_LISTENING"], log_path, path)
    assert http("GET", s.base + "/healthz").status == 200
    yield s
    p.kill()
    p.wait()
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def traffic(stack):
    """Real traffic through the gateway: allowed calls of three models by end users with tags,
    and blocked ones (a model the project may not use, a credential in a prompt). Returns the
    request ids by kind, once the store has every record."""
    sent = {"allowed": [], "blocked": []}
    for key, model, user, tags, tokens in [
        (KEY_CHECKOUT, "gpt-4o-mini", "alice", "env=prod,feature=cart", 40),
        (KEY_CHECKOUT, "gpt-4o", "alice", "env=prod,feature=summary", 200),
        (KEY_CHECKOUT, "gpt-4o", "bob", "env=prod", 120),
        (KEY_CI, "gpt-4o-mini", "ci-runner", "env=ci", 10),
        (KEY_SEARCH, "claude-sonnet-4", "carol", "env=prod,feature=search", 300),
        (KEY_SEARCH, "gpt-4o-mini", None, None, 5),
        (KEY_BATCH, "gpt-4o-mini", None, "env=dev", 3),
    ]:
        r = stack.chat(key, model, user, tags, tokens)
        assert r.status == 200, r.body
        sent["allowed"].append(r.headers["x-tollgate-request-id"])
    for key, model, content in [
        (KEY_SEARCH, "gpt-4o", "hello"),
        (KEY_SEARCH, "gpt-4o", "hello again"),
        (KEY_CHECKOUT, "gpt-4o-mini", "my key is AKIAQ7RT2ZLMX4K9PWB3, keep it"),
    ]:
        r = stack.chat(key, model, content=content)
        assert r.status == 403, r.body
        sent["blocked"].append(r.headers["x-tollgate-request-id"])
    stack.wait_recorded(sent["allowed"] + sent["blocked"])
    return sent


@pytest.fixture(scope="session")
def browser_factory():
    """Headless chromium sessions, each with a fresh profile; all quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        assert os.access(exe, os.X_OK), f"{exe} is missing: apt-get install chromium chromium-driver"
    made = []

    def make(width=1280, height=800):
        profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                     "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US"]:
            o.add_argument(flag)
        o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        d = webdriver.Chrome(options=o, service=Service(executable_path=CHROMEDRIVER))
        # The viewport itself, whatever the window's decorations take.
        w, h = d.execute_script("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
        d.set_window_size(width + w, height + h)
        made.append((d, profile))
        return d

    yield make
    for d, profile in made:
        try:
            d.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
