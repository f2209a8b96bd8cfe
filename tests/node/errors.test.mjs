// Every refusal Tollgate itself produces, as each official SDK surfaces it: the SDK's own error
// class, `error.status`, and the body's `type`/`code` (OpenAI's shape on the OpenAI routes,
// Anthropic's on /v1/messages). Blocked requests never reach the provider and are recorded
// as blocks that cost nothing.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { KEY, KEY_BROKE, KEY_LIMITED, KEY_SLOW, WRONG_KEY, decisionFor, requestIdOf, startStack } from './harness.mjs';

const T = { timeout: 60_000 };
let stack;

before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const openai = (apiKey) => new OpenAI({ baseURL: `${stack.base}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
const anthropic = (apiKey) => new Anthropic({ baseURL: stack.base, apiKey, maxRetries: 0, timeout: 30_000 });

const chat = (c, model = 'gpt-4o-mini') =>
  c.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
const message = (c, model = 'claude-sonnet-4') =>
  c.messages.create({ model, max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });

/** An OpenAI SDK error: class, status, and the OpenAI-shaped body's type and code. */
function openaiError(cls, status, type, code, message) {
  return (e) => {
    assert.ok(e instanceof cls, `want ${cls.name}, got ${e.constructor.name}: ${e.message}`);
    assert.ok(e instanceof OpenAI.APIError);
    assert.equal(e.status, status, e.message);
    assert.equal(e.type, type, JSON.stringify(e.error));
    assert.equal(e.code, code, JSON.stringify(e.error));
    assert.equal(e.error.reason, code, JSON.stringify(e.error));
    if (message) assert.match(e.message, message);
    assert.ok(e.headers.get('x-tollgate-request-id'), 'every response carries x-tollgate-request-id');
    return true;
  };
}

/** An Anthropic SDK error: class, status, and the Anthropic-shaped body's type and code. */
function anthropicError(cls, status, type, code, message) {
  return (e) => {
    assert.ok(e instanceof cls, `want ${cls.name}, got ${e.constructor.name}: ${e.message}`);
    assert.ok(e instanceof Anthropic.APIError);
    assert.equal(e.status, status, e.message);
    assert.equal(e.error?.type, 'error', `Anthropic's error shape: ${JSON.stringify(e.error)}`);
    assert.equal(e.error.error.type, type, JSON.stringify(e.error));
    assert.equal(e.type, type, JSON.stringify(e.error));
    assert.equal(e.error.error.code ?? type, code, JSON.stringify(e.error));
    if (message) assert.match(e.message, message);
    assert.ok(e.headers.get('x-tollgate-request-id'), 'every response carries x-tollgate-request-id');
    return true;
  };
}

/** The blocked request's decision record: a block with the reason code, nothing charged. */
async function assertBlocked(e, project, status, reason) {
  const d = await decisionFor(stack, project, e.headers.get('x-tollgate-request-id'));
  const j = JSON.stringify(d);
  assert.equal(d.decision, 'block', j);
  assert.equal(d.status, status, j);
  assert.equal(d.reason, reason, j);
  assert.equal(d.usage_source, 'none', j);
  assert.equal(d.cost_usd, 0, j);
  assert.equal(d.prompt_tokens, 0, j);
  assert.equal(d.completion_tokens, 0, j);
}

/** Run `call`, expect it to throw, check the error with `check`, return it. */
async function refused(call, check) {
  let err;
  await assert.rejects(call, (e) => {
    err = e;
    return check(e);
  });
  return err;
}

describe('401 unknown key', () => {
  test('openai: AuthenticationError, unauthorized', T, async () => {
    await refused(
      chat(openai(WRONG_KEY)),
      openaiError(OpenAI.AuthenticationError, 401, 'unauthorized', 'unauthorized', /Unknown project key/),
    );
  });
  test('anthropic: AuthenticationError, unauthorized', T, async () => {
    await refused(
      message(anthropic(WRONG_KEY)),
      anthropicError(Anthropic.AuthenticationError, 401, 'unauthorized', 'unauthorized', /Unknown project key/),
    );
  });
  test('anthropic countTokens and models with an unknown key: AuthenticationError', T, async () => {
    const c = anthropic(WRONG_KEY);
    await refused(
      c.messages.countTokens({ model: 'claude-sonnet-4', messages: [{ role: 'user', content: 'hi' }] }),
      anthropicError(Anthropic.AuthenticationError, 401, 'unauthorized', 'unauthorized'),
    );
    await assert.rejects(c.models.list(), Anthropic.AuthenticationError);
    await assert.rejects(openai(WRONG_KEY).models.list(), OpenAI.AuthenticationError);
  });
});

describe('402 budget exceeded', () => {
  test('openai: APIError with status 402, budget_exceeded', T, async () => {
    const e = await refused(
      chat(openai(KEY_BROKE)),
      openaiError(OpenAI.APIError, 402, 'budget_exceeded', 'budget_exceeded', /total budget/),
    );
    await assertBlocked(e, 'broke', 402, 'budget_exceeded');
  });
  test('anthropic: APIError with status 402, budget_exceeded', T, async () => {
    const e = await refused(
      message(anthropic(KEY_BROKE)),
      anthropicError(Anthropic.APIError, 402, 'budget_exceeded', 'budget_exceeded', /total budget/),
    );
    await assertBlocked(e, 'broke', 402, 'budget_exceeded');
  });
});

describe('403 policy blocked', () => {
  test('openai: PermissionDeniedError, model_not_allowed', T, async () => {
    const e = await refused(
      chat(openai(KEY_LIMITED)),
      openaiError(OpenAI.PermissionDeniedError, 403, 'policy_blocked', 'model_not_allowed', /gpt-4o-mini/),
    );
    await assertBlocked(e, 'limited', 403, 'model_not_allowed');
  });
  test('anthropic: PermissionDeniedError, model_not_allowed', T, async () => {
    const e = await refused(
      message(anthropic(KEY_LIMITED)),
      anthropicError(Anthropic.PermissionDeniedError, 403, 'policy_blocked', 'model_not_allowed', /claude-sonnet-4/),
    );
    await assertBlocked(e, 'limited', 403, 'model_not_allowed');
  });
});

describe('404 no route for the model', () => {
  test('openai: NotFoundError, not_found', T, async () => {
    const e = await refused(
      chat(openai(KEY), 'llama-3'),
      openaiError(OpenAI.NotFoundError, 404, 'not_found', 'not_found', /No route for model llama-3/),
    );
    await assertBlocked(e, 'sdk', 404, 'not_found');
  });
  test('anthropic: NotFoundError, not_found', T, async () => {
    const e = await refused(
      message(anthropic(KEY), 'mistral-large'),
      anthropicError(Anthropic.NotFoundError, 404, 'not_found', 'not_found', /No route for model mistral-large/),
    );
    await assertBlocked(e, 'sdk', 404, 'not_found');
  });
});

describe('429 rate limited (rpm = 1)', () => {
  before(async () => {
    // The project's one request this minute is admitted and charged.
    const { data, response } = await chat(openai(KEY_SLOW)).withResponse();
    assert.equal(data.usage.completion_tokens, 5);
    const d = await decisionFor(stack, 'slow', requestIdOf(response));
    assert.equal(d.decision, 'allow', JSON.stringify(d));
    assert.equal(d.usage_source, 'reported', JSON.stringify(d));
    assert.ok(d.cost_usd > 0, JSON.stringify(d));
  });
  test('openai: RateLimitError, rate_limited, with Retry-After', T, async () => {
    const e = await refused(
      chat(openai(KEY_SLOW)),
      openaiError(OpenAI.RateLimitError, 429, 'rate_limited', 'rate_limited'),
    );
    assert.match(e.headers.get('retry-after') ?? '', /^[1-9][0-9]*$/);
    await assertBlocked(e, 'slow', 429, 'rate_limited');
  });
  test('anthropic: RateLimitError, rate_limited, with Retry-After', T, async () => {
    const e = await refused(
      message(anthropic(KEY_SLOW)),
      anthropicError(Anthropic.RateLimitError, 429, 'rate_limited', 'rate_limited'),
    );
    assert.match(e.headers.get('retry-after') ?? '', /^[1-9][0-9]*$/);
    await assertBlocked(e, 'slow', 429, 'rate_limited');
  });
});
