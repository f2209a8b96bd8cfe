"""Start the mock provider and the real tollgate binary on loopback ports for the SDK tests."""
import hashlib
import os
import subprocess
import tempfile
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TOLLGATE = os.environ.get("TOLLGATE_BIN", os.path.join(TARGET, "debug", "tollgate"))
MOCK = os.environ.get("MOCK_BIN", os.path.join(TARGET, "debug", "mock-provider"))

KEY = "tg_sdk_test_key_0000000001"
KEY_LIMITED = "tg_sdk_test_key_limited_02"


@pytest.fixture(scope="session")
def mock():
    p = subprocess.Popen([MOCK, "--listen", "127.0.0.1:0", "--threads", "1"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("LISTENING "), line
    yield "http://" + line.split(" ", 1)[1]
    p.kill()
    p.wait()


@pytest.fixture(scope="session")
def gateway(mock):
    tmp = tempfile.mkdtemp()
    limited = hashlib.sha256(KEY_LIMITED.encode()).hexdigest()
    cfg = f"""
[server]
listen = "127.0.0.1:0"
max_body_bytes = 100000
[store]
path = "{tmp}/ledger.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}"
api_key_env = "SDK_OPENAI_KEY"
read_timeout_ms = 3000
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"
api_key_env = "SDK_ANTHROPIC_KEY"
read_timeout_ms = 3000
[[routes]]
prefix = "openai/"
provider = "openai"
strip_prefix = true
[[routes]]
prefix = "gpt-"
provider = "openai"
[[routes]]
prefix = "text-embedding-"
provider = "openai"
[[routes]]
prefix = "claude-"
provider = "anthropic"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.6
[prices."claude-sonnet-4"]
input = 3.0
output = 15.0
[prices."text-embedding-3-small"]
input = 0.02
output = 0.0
[[projects]]
id = "sdk"
keys = ["{KEY}"]
[[projects]]
id = "limited"
keys = ["sha256:{limited}"]
allow_models = ["claude-*"]
"""
    path = os.path.join(tmp, "tollgate.toml")
    with open(path, "w") as f:
        f.write(cfg)
    env = dict(os.environ, SDK_OPENAI_KEY="sk-openai-provider-secret", SDK_ANTHROPIC_KEY="sk-ant-provider-secret",
               RUST_LOG="info")
    log = open(os.path.join(tmp, "tollgate.log"), "w")
    p = subprocess.Popen([TOLLGATE, "serve", "--config", path], env=env, stderr=log, stdout=subprocess.PIPE, text=True)
    # Port 0: tollgate prints `LISTENING <addr>` once its listener is bound (it queues
    # connections from then on). EOF means it exited.
    line = p.stdout.readline().strip()
    assert line.startswith("LISTENING "), (line, open(os.path.join(tmp, "tollgate.log")).read())
    base = "http://" + line.split(" ", 1)[1]
    assert urllib.request.urlopen(base + "/healthz", timeout=30).status == 200
    yield {"base": base, "log": os.path.join(tmp, "tollgate.log")}
    p.kill()
    p.wait()
