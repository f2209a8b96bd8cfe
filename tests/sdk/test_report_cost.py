"""`report_cost = true` (issue 16) through the official OpenAI and Anthropic Python SDKs: they
parse the responses and expose the extra usage fields (pydantic extras: `usage.cost`,
`usage.duration_ms`, also in `usage.model_extra`), equal to the decision record's `cost_usd`
and `latency_ms`.

A gateway of its own (the session one has no admin listener), in front of the session's mock.
"""
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import anthropic
import openai
import pytest

from conftest import TOLLGATE

KEY = "tg_sdk_test_key_costly_0003"
ADMIN_TOKEN = "sdk-admin-token-for-tests"


@pytest.fixture(scope="module")
def costly(mock):
    tmp = tempfile.mkdtemp()
    cfg = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "SDK_ADMIN_TOKEN"
[store]
path = "{tmp}/ledger.db"
flush_interval_ms = 20
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
id = "costly"
keys = ["{KEY}"]
report_cost = true
unpriced = "allow"
"""
    path = os.path.join(tmp, "tollgate.toml")
    with open(path, "w") as f:
        f.write(cfg)
    env = dict(os.environ, SDK_OPENAI_KEY="sk-openai-provider-secret", SDK_ANTHROPIC_KEY="sk-ant-provider-secret",
               SDK_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="info")
    log_path = os.path.join(tmp, "tollgate.log")
    log = open(log_path, "w")
    p = subprocess.Popen([TOLLGATE, "serve", "--config", path], env=env, stderr=log, stdout=subprocess.PIPE, text=True)
    found = {}
    # Both listeners report their address on stdout; EOF means the process exited.
    while len(found) < 2:
        line = p.stdout.readline()
        assert line, open(log_path).read()
        tag, _, addr = line.strip().partition(" ")
        if tag in ("LISTENING", "ADMIN_LISTENING"):
            found[tag] = "http://" + addr
    assert urllib.request.urlopen(found["LISTENING"] + "/healthz", timeout=30).status == 200
    yield {"base": found["LISTENING"], "admin": found["ADMIN_LISTENING"]}
    p.kill()
    p.wait()


@pytest.fixture
def oai(costly):
    return openai.OpenAI(base_url=costly["base"] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def claude(costly):
    return anthropic.Anthropic(base_url=costly["base"], api_key=KEY, max_retries=0)


def record(costly, request_id):
    """The decision record of `request_id`, once the store has it (bounded poll)."""
    deadline = time.time() + 30
    while True:
        req = urllib.request.Request(costly["admin"] + "/admin/decisions?project=costly&limit=100",
                                     headers={"authorization": "Bearer " + ADMIN_TOKEN})
        decisions = json.load(urllib.request.urlopen(req, timeout=30))["decisions"]
        for d in decisions:
            if d["id"] == request_id:
                return d
        assert time.time() < deadline, f"no record {request_id} in {decisions}"
        time.sleep(0.025)


def check(costly, usage, request_id, priced=True):
    """The SDK exposes both fields, as numbers equal to the record's."""
    assert usage.model_extra is not None and "cost" in usage.model_extra, usage
    d = record(costly, request_id)
    if priced:
        assert isinstance(usage.cost, float) and usage.cost > 0, usage
    else:
        assert usage.cost is None, usage
    assert usage.cost == d["cost_usd"], (usage, d)
    assert usage.model_extra["cost"] == d["cost_usd"]
    assert isinstance(usage.duration_ms, float) and usage.duration_ms > 0, usage
    assert usage.duration_ms == d["latency_ms"], (usage, d)


def test_openai_chat_json_and_stream_cost(oai, costly):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    r = raw.parse()
    assert r.choices[0].message.content and r.usage.completion_tokens == 5
    check(costly, r.usage, raw.headers["x-tollgate-request-id"])

    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens == 4
    check(costly, last.usage, raw.headers["x-tollgate-request-id"])


def test_openai_legacy_completions_cost(oai, costly):
    raw = oai.completions.with_raw_response.create(model="gpt-4o-mini", prompt="hi", max_tokens=3)
    r = raw.parse()
    assert r.choices[0].text and r.usage.completion_tokens == 3
    check(costly, r.usage, raw.headers["x-tollgate-request-id"])

    raw = oai.completions.with_raw_response.create(model="gpt-4o-mini", prompt="hi", max_tokens=3, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(raw.parse())
    check(costly, chunks[-1].usage, raw.headers["x-tollgate-request-id"])


def test_openai_responses_json_and_stream_cost(oai, costly):
    raw = oai.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", max_output_tokens=4)
    r = raw.parse()
    assert r.output_text and r.usage.output_tokens == 4
    check(costly, r.usage, raw.headers["x-tollgate-request-id"])

    raw = oai.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", max_output_tokens=4, stream=True)
    done = [e for e in raw.parse() if e.type == "response.completed"]
    assert len(done) == 1
    assert done[0].response.output_text
    check(costly, done[0].response.usage, raw.headers["x-tollgate-request-id"])


def test_anthropic_message_json_and_stream_cost(claude, costly):
    raw = claude.messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=6,
                                                   messages=[{"role": "user", "content": "hi"}])
    m = raw.parse()
    assert m.content[0].text and m.usage.output_tokens == 6
    check(costly, m.usage, raw.headers["x-tollgate-request-id"])

    raw = claude.messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=6, stream=True,
                                                   messages=[{"role": "user", "content": "hi"}])
    events = list(raw.parse())
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text
    deltas = [e for e in events if e.type == "message_delta"]
    assert len(deltas) == 1 and deltas[0].usage.output_tokens == 6
    check(costly, deltas[0].usage, raw.headers["x-tollgate-request-id"])
    start = [e for e in events if e.type == "message_start"][0]
    assert "cost" not in (start.message.usage.model_extra or {}), "only message_delta carries it"


def test_an_unpriced_model_reports_cost_none(oai, costly):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-unpriced-1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    check(costly, raw.parse().usage, raw.headers["x-tollgate-request-id"], priced=False)
