"""Key expiry through the official SDKs: a key past its `expires` is each SDK's AuthenticationError
with Tollgate's `key_expired` code; a key of the same project that has not expired works."""
import os
import subprocess
import tempfile
import urllib.request

import anthropic
import openai
import pytest

from conftest import TOLLGATE

KEY_OK = "tg_sdk_budget_key_valid_0001"
KEY_EXPIRED = "tg_sdk_budget_key_expired_02"
KEY_LATER = "tg_sdk_budget_key_later_0003"


@pytest.fixture(scope="module")
def budget_gateway(mock):
    tmp = tempfile.mkdtemp()
    cfg = f"""
[server]
listen = "127.0.0.1:0"
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
prefix = "gpt-"
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
[[projects]]
id = "expiring"
keys = [
  "{KEY_OK}",
  {{ key = "{KEY_EXPIRED}", name = "old", expires = "2020-01-01T00:00:00Z" }},
  {{ key = "{KEY_LATER}", name = "later", expires = "2099-01-01T00:00:00Z" }},
]
"""
    path = os.path.join(tmp, "tollgate.toml")
    with open(path, "w") as f:
        f.write(cfg)
    env = dict(os.environ, SDK_OPENAI_KEY="sk-openai-provider-secret", SDK_ANTHROPIC_KEY="sk-ant-provider-secret",
               RUST_LOG="info")
    log_path = os.path.join(tmp, "tollgate.log")
    log = open(log_path, "w")
    p = subprocess.Popen([TOLLGATE, "serve", "--config", path], env=env, stderr=log, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("LISTENING "), (line, open(log_path).read())
    base = "http://" + line.split(" ", 1)[1]
    assert urllib.request.urlopen(base + "/healthz", timeout=30).status == 200
    yield base
    p.kill()
    p.wait()


def test_openai_sdk_raises_authentication_error_for_an_expired_key(budget_gateway):
    c = openai.OpenAI(base_url=budget_gateway + "/v1", api_key=KEY_EXPIRED, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert e.value.status_code == 401
    assert e.value.code == "key_expired"
    for key in (KEY_OK, KEY_LATER):
        ok = openai.OpenAI(base_url=budget_gateway + "/v1", api_key=key, max_retries=0)
        r = ok.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage.completion_tokens == 3


def test_anthropic_sdk_raises_authentication_error_for_an_expired_key(budget_gateway):
    c = anthropic.Anthropic(base_url=budget_gateway, api_key=KEY_EXPIRED, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        c.messages.create(model="claude-sonnet-4", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["code"] == "key_expired"
    ok = anthropic.Anthropic(base_url=budget_gateway, api_key=KEY_LATER, max_retries=0)
    m = ok.messages.create(model="claude-sonnet-4", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert m.usage.output_tokens == 3
