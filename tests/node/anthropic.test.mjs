// The official `@anthropic-ai/sdk` npm package pointed at Tollgate with a project key: messages
// plain and streamed, countTokens, models, each call's decision record.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';

import { KEY, WAIT_MS, decisionFor, decisions, pause, requestIdOf, startStack } from './harness.mjs';

const T = { timeout: 60_000 };
let stack;
let client;
let charged = 0; // messages that reached the provider and must be charged from reported usage

before(async () => {
  stack = await startStack();
  client = new Anthropic({ baseURL: stack.base, apiKey: KEY, maxRetries: 0, timeout: 30_000 });
});
after(async () => {
  await stack?.stop();
});

async function assertCharged(response, { prompt, completion, stream }) {
  const d = await decisionFor(stack, 'sdk', requestIdOf(response));
  const j = JSON.stringify(d);
  assert.equal(d.decision, 'allow', j);
  assert.equal(d.status, 200, j);
  assert.equal(d.usage_source, 'reported', j);
  assert.equal(d.endpoint, 'messages', j);
  assert.equal(d.model, 'claude-sonnet-4', j);
  assert.equal(d.provider, 'anthropic', j);
  assert.equal(d.stream, stream, j);
  assert.equal(d.prompt_tokens, prompt, j);
  assert.equal(d.completion_tokens, completion, j);
  // $3/M input, $15/M output: the record carries the exact charge.
  const want = (prompt * 3 + completion * 15) / 1e6;
  assert.ok(Math.abs(d.cost_usd - want) < 1e-12, `cost ${d.cost_usd}, want ${want}: ${j}`);
  return d;
}

const hi = [{ role: 'user', content: 'hi' }];

describe('anthropic messages', () => {
  test('plain', T, async () => {
    charged++;
    const { data: m, response } = await client.messages
      .create({ model: 'claude-sonnet-4', max_tokens: 6, messages: hi })
      .withResponse();
    assert.equal(m.type, 'message');
    assert.ok(m.content[0].text, JSON.stringify(m));
    assert.equal(m.usage.output_tokens, 6);
    await assertCharged(response, { prompt: m.usage.input_tokens, completion: 6, stream: false });
  });

  test('with a system prompt', T, async () => {
    charged++;
    const m = await client.messages.create({
      model: 'claude-sonnet-4',
      max_tokens: 3,
      system: 'You are terse.',
      messages: hi,
    });
    assert.equal(m.usage.output_tokens, 3);
  });

  test('messages.stream: text events and finalMessage', T, async () => {
    charged++;
    const s = client.messages.stream({ model: 'claude-sonnet-4', max_tokens: 6, messages: hi });
    let text = '';
    s.on('text', (t) => {
      text += t;
    });
    const final = await s.finalMessage();
    assert.equal(text.trim().split(/\s+/).length, 6, JSON.stringify(text));
    assert.equal(final.content[0].text, text);
    assert.equal(final.usage.output_tokens, 6);
    assert.equal(final.stop_reason, 'end_turn');
    await assertCharged(s.response, { prompt: final.usage.input_tokens, completion: 6, stream: true });
  });

  test('messages.create with stream: true, iterated', T, async () => {
    charged++;
    const { data: stream, response } = await client.messages
      .create({ model: 'claude-sonnet-4', max_tokens: 4, messages: hi, stream: true })
      .withResponse();
    let text = '';
    let input;
    let output;
    for await (const ev of stream) {
      if (ev.type === 'message_start') input = ev.message.usage.input_tokens;
      if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
      if (ev.type === 'message_delta') output = ev.usage.output_tokens;
    }
    assert.equal(text.trim().split(/\s+/).length, 4, JSON.stringify(text));
    assert.equal(output, 4);
    await assertCharged(response, { prompt: input, completion: 4, stream: true });
  });
});

describe('anthropic countTokens', () => {
  test('messages.countTokens is forwarded and recorded as count_tokens, free', T, async () => {
    const { data, response } = await client.messages
      .countTokens({ model: 'claude-sonnet-4', messages: hi })
      .withResponse();
    assert.ok(Number.isInteger(data.input_tokens) && data.input_tokens > 0, JSON.stringify(data));
    const d = await decisionFor(stack, 'sdk', requestIdOf(response));
    const j = JSON.stringify(d);
    assert.equal(d.endpoint, 'count_tokens', j);
    assert.equal(d.decision, 'allow', j);
    assert.equal(d.status, 200, j);
    assert.equal(d.model, 'claude-sonnet-4', j);
    assert.equal(d.cost_usd, 0, j);
  });
});

describe('anthropic models', () => {
  test('models.list: the Anthropic shape (anthropic-version is sent)', T, async () => {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    for (const m of page.data) {
      assert.equal(m.type, 'model', JSON.stringify(m));
      assert.equal(typeof m.display_name, 'string', JSON.stringify(m));
      assert.ok(!Number.isNaN(Date.parse(m.created_at)), JSON.stringify(m));
    }
    assert.ok(ids.includes('claude-sonnet-4'), JSON.stringify(ids));
    assert.equal(page.has_more, false);
    assert.equal(page.first_id, ids[0]);
    assert.equal(page.last_id, ids.at(-1));
    const all = [];
    for await (const m of client.models.list()) all.push(m.id);
    assert.deepEqual(all, ids, 'auto-pagination stops after the one page');
  });

  test('models.retrieve: one model, in the Anthropic shape', T, async () => {
    const m = await client.models.retrieve('claude-sonnet-4');
    assert.equal(m.type, 'model');
    assert.equal(m.id, 'claude-sonnet-4');
    assert.equal(typeof m.display_name, 'string');
    assert.ok(!Number.isNaN(Date.parse(m.created_at)), JSON.stringify(m));
  });

  test('models.retrieve of a model the project cannot use: NotFoundError', T, async () => {
    await assert.rejects(client.models.retrieve('mistral-large'), (e) => {
      assert.ok(e instanceof Anthropic.NotFoundError, `${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 404);
      assert.equal(e.error?.error?.type, 'not_found', JSON.stringify(e.error));
      return true;
    });
  });
});

describe('anthropic charges', () => {
  test('every message has one decision record, charged from reported usage', T, async () => {
    const deadline = Date.now() + WAIT_MS;
    let records;
    do {
      records = (await decisions(stack, 'sdk')).filter((d) => d.endpoint === 'messages');
    } while (records.length < charged && Date.now() < deadline && (await pause()));
    assert.equal(records.length, charged, JSON.stringify(records));
    for (const d of records) {
      assert.equal(d.decision, 'allow', JSON.stringify(d));
      assert.equal(d.usage_source, 'reported', JSON.stringify(d));
      assert.ok(d.completion_tokens > 0 && d.cost_usd > 0, JSON.stringify(d));
    }
    const counts = (await decisions(stack, 'sdk')).filter((d) => d.endpoint === 'count_tokens');
    assert.equal(counts.length, 1, JSON.stringify(counts));
    assert.equal(counts[0].cost_usd, 0, JSON.stringify(counts));
  });
});
