"""The official OpenAI and Anthropic Python SDKs, pointed at Tollgate with a project key."""
import anthropic
import openai
import pytest

from conftest import KEY, KEY_LIMITED


@pytest.fixture
def oai(gateway):
    return openai.OpenAI(base_url=gateway["base"] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway["base"], api_key=KEY, max_retries=0)


def test_openai_chat_completion(oai):
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 5


def test_openai_chat_with_prefix_routing(oai):
    r = oai.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.model == "gpt-4o-mini", "the provider saw the stripped name"


def test_openai_stream_without_usage_request_gets_no_usage_chunk(oai):
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "the injected usage chunk (empty choices) was removed"
    assert all(c.usage is None for c in chunks)


def test_openai_stream_with_usage_request_gets_usage(oai):
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_openai_legacy_completions(oai):
    r = oai.completions.create(model="gpt-4o-mini", prompt="hi", max_tokens=3)
    assert r.choices[0].text
    assert r.usage.completion_tokens == 3


def test_openai_embeddings(oai):
    r = oai.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(r.data[0].embedding) > 0
    assert r.usage.prompt_tokens > 0


def test_openai_responses_api_and_stream(oai):
    r = oai.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=4)
    assert r.output_text
    assert r.usage.output_tokens == 4
    with oai.responses.stream(model="gpt-4o-mini", input="hi", max_output_tokens=4) as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.usage.output_tokens == 4


def test_anthropic_message_and_stream(claude):
    m = claude.messages.create(model="claude-sonnet-4", max_tokens=6, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text
    assert m.usage.output_tokens == 6
    with claude.messages.stream(model="claude-sonnet-4", max_tokens=6,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text
    assert final.usage.output_tokens == 6


def test_openai_sdk_raises_authentication_error_with_our_message(gateway):
    c = openai.OpenAI(base_url=gateway["base"] + "/v1", api_key="tg_wrong_key_0000000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert e.value.status_code == 401
    assert e.value.code == "unauthorized"
    assert "Unknown project key" in str(e.value)


def test_openai_sdk_raises_not_found_and_bad_request(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="llama-3", messages=[])
    assert "No route for model llama-3" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[], max_tokens=-1)
    assert e.value.code == "invalid_request"


def test_openai_sdk_raises_permission_denied_for_a_policy_block(gateway):
    c = openai.OpenAI(base_url=gateway["base"] + "/v1", api_key=KEY_LIMITED, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert e.value.code == "model_not_allowed"
    assert "may not use model gpt-4o-mini" in str(e.value)


def test_openai_sdk_sees_413_for_an_oversized_body(oai):
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 200000}])
    assert e.value.status_code == 413
    assert e.value.code == "request_too_large"


def test_anthropic_sdk_raises_its_own_error_classes(gateway, claude):
    bad = anthropic.Anthropic(base_url=gateway["base"], api_key="tg_wrong_key_0000000000", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-sonnet-4", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "unauthorized"
    assert "Unknown project key" in str(e.value)
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="mistral-large", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "No route for model mistral-large" in str(e.value)
    limited = anthropic.Anthropic(base_url=gateway["base"], api_key=KEY_LIMITED, max_retries=0)
    m = limited.messages.create(model="claude-sonnet-4", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert m.usage.output_tokens == 2


def test_the_provider_secret_never_appears_in_the_gateway_log(gateway, oai, claude):
    oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    claude.messages.create(model="claude-sonnet-4", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    log = open(gateway["log"]).read()
    assert "provider-secret" not in log
    assert KEY not in log
