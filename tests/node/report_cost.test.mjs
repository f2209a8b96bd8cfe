// `report_cost = true` (issue 16) through the official `openai` and `@anthropic-ai/sdk` npm
// packages: they parse the responses and hand the extra usage fields through (`usage.cost`,
// `usage.duration_ms`), equal to the decision record's `cost_usd` and `latency_ms`. JSON and
// streams, every endpoint; an unpriced model's cost is null.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { KEY_COSTLY, decisionFor, requestIdOf, startStack } from './harness.mjs';

const T = { timeout: 60_000 };
let stack;
let oai;
let claude;

before(async () => {
  stack = await startStack();
  oai = new OpenAI({ baseURL: `${stack.base}/v1`, apiKey: KEY_COSTLY, maxRetries: 0, timeout: 30_000 });
  claude = new Anthropic({ baseURL: stack.base, apiKey: KEY_COSTLY, maxRetries: 0, timeout: 30_000 });
});
after(async () => {
  await stack?.stop();
});

/** Both fields are numbers the SDK passed through, and they are what the record says. */
async function assertReported(usage, response, { priced = true } = {}) {
  assert.ok(usage && 'cost' in usage, `no cost in ${JSON.stringify(usage)}`);
  const d = await decisionFor(stack, 'costly', requestIdOf(response));
  if (priced) {
    assert.equal(typeof usage.cost, 'number', JSON.stringify(usage));
    assert.ok(usage.cost > 0, JSON.stringify(usage));
  } else {
    assert.equal(usage.cost, null, JSON.stringify(usage));
  }
  assert.equal(usage.cost, d.cost_usd, `${JSON.stringify(usage)} vs ${JSON.stringify(d)}`);
  assert.equal(typeof usage.duration_ms, 'number', JSON.stringify(usage));
  assert.ok(usage.duration_ms > 0, JSON.stringify(usage));
  assert.equal(usage.duration_ms, d.latency_ms, `${JSON.stringify(usage)} vs ${JSON.stringify(d)}`);
}

async function collect(stream) {
  const out = [];
  for await (const x of stream) out.push(x);
  return out;
}

const messages = [{ role: 'user', content: 'hi' }];

describe('openai', () => {
  test('chat completions, JSON and stream', T, async () => {
    let { data, response } = await oai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, max_tokens: 5 })
      .withResponse();
    assert.equal(data.usage.completion_tokens, 5);
    await assertReported(data.usage, response);

    ({ data, response } = await oai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } })
      .withResponse());
    const chunks = await collect(data);
    const withUsage = chunks.filter((c) => c.usage);
    assert.equal(withUsage.length, 1, JSON.stringify(chunks));
    assert.equal(withUsage[0].usage.completion_tokens, 4);
    await assertReported(withUsage[0].usage, response);
  });

  test('legacy completions, JSON and stream', T, async () => {
    let { data, response } = await oai.completions
      .create({ model: 'gpt-4o-mini', prompt: 'hi', max_tokens: 3 })
      .withResponse();
    assert.equal(data.usage.completion_tokens, 3);
    await assertReported(data.usage, response);

    ({ data, response } = await oai.completions
      .create({ model: 'gpt-4o-mini', prompt: 'hi', max_tokens: 3, stream: true, stream_options: { include_usage: true } })
      .withResponse());
    const chunks = await collect(data);
    await assertReported(chunks.at(-1).usage, response);
  });

  test('responses, JSON and the response.completed event', T, async () => {
    let { data, response } = await oai.responses
      .create({ model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 4 })
      .withResponse();
    assert.ok(data.output_text);
    await assertReported(data.usage, response);

    ({ data, response } = await oai.responses
      .create({ model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 4, stream: true })
      .withResponse());
    const events = await collect(data);
    const done = events.filter((e) => e.type === 'response.completed');
    assert.equal(done.length, 1);
    await assertReported(done[0].response.usage, response);
  });

  test('an unpriced model: cost is null', T, async () => {
    const { data, response } = await oai.chat.completions
      .create({ model: 'gpt-unpriced-1', messages, max_tokens: 2 })
      .withResponse();
    await assertReported(data.usage, response, { priced: false });
  });
});

describe('anthropic', () => {
  test('messages, JSON and the message_delta event', T, async () => {
    let { data, response } = await claude.messages
      .create({ model: 'claude-sonnet-4', max_tokens: 6, messages })
      .withResponse();
    assert.equal(data.usage.output_tokens, 6);
    await assertReported(data.usage, response);

    ({ data, response } = await claude.messages
      .create({ model: 'claude-sonnet-4', max_tokens: 6, messages, stream: true })
      .withResponse());
    const events = await collect(data);
    const deltas = events.filter((e) => e.type === 'message_delta');
    assert.equal(deltas.length, 1);
    assert.equal(deltas[0].usage.output_tokens, 6);
    await assertReported(deltas[0].usage, response);
    const start = events.find((e) => e.type === 'message_start');
    assert.ok(!('cost' in start.message.usage), 'only message_delta carries it');
  });

  test('the stream helper still accumulates the message', T, async () => {
    const s = claude.messages.stream({ model: 'claude-sonnet-4', max_tokens: 6, messages });
    const final = await s.finalMessage();
    assert.equal(final.usage.output_tokens, 6);
    assert.ok(final.content[0].text);
  });
});
