// The official `openai` npm package pointed at Tollgate with a project key: chat and responses,
// plain and streamed, models, each charged call's decision record.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import { KEY, WAIT_MS, decisionFor, decisions, pause, requestIdOf, startStack } from './harness.mjs';

const T = { timeout: 60_000 };
let stack;
let client;
let charged = 0; // calls that reached the provider and must be charged from reported usage

before(async () => {
  stack = await startStack();
  client = new OpenAI({ baseURL: `${stack.base}/v1`, apiKey: KEY, maxRetries: 0, timeout: 30_000 });
});
after(async () => {
  await stack?.stop();
});

/** The call's decision record: allowed, charged from the provider's reported usage. */
async function assertCharged(response, { endpoint, model, prompt, completion, stream }) {
  const d = await decisionFor(stack, 'sdk', requestIdOf(response));
  assert.equal(d.decision, 'allow', JSON.stringify(d));
  assert.equal(d.status, 200, JSON.stringify(d));
  assert.equal(d.usage_source, 'reported', JSON.stringify(d));
  assert.equal(d.endpoint, endpoint, JSON.stringify(d));
  assert.equal(d.model, model, JSON.stringify(d));
  assert.equal(d.provider, 'openai', JSON.stringify(d));
  assert.equal(d.stream, stream, JSON.stringify(d));
  if (prompt === undefined) assert.ok(d.prompt_tokens > 0, JSON.stringify(d));
  else assert.equal(d.prompt_tokens, prompt, JSON.stringify(d));
  assert.equal(d.completion_tokens, completion, JSON.stringify(d));
  assert.ok(d.cost_usd > 0, JSON.stringify(d));
  return d;
}

describe('openai chat completions', () => {
  test('plain', T, async () => {
    charged++;
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 })
      .withResponse();
    assert.ok(data.choices[0].message.content, JSON.stringify(data));
    assert.equal(data.usage.completion_tokens, 5);
    await assertCharged(response, {
      endpoint: 'chat_completions',
      model: 'gpt-4o-mini',
      prompt: data.usage.prompt_tokens,
      completion: 5,
      stream: false,
    });
  });

  test('through a strip_prefix route the provider sees the bare name', T, async () => {
    charged++;
    const r = await client.chat.completions.create({
      model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 2,
    });
    assert.equal(r.model, 'gpt-4o-mini');
  });

  test('streamed without include_usage: text arrives, no usage chunk reaches the client', T, async () => {
    charged++;
    const { data: stream, response } = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, stream: true })
      .withResponse();
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text.trim().split(/\s+/).length, 4, JSON.stringify(text));
    for (const c of chunks) {
      assert.ok(c.choices.length > 0, `the injected usage chunk (empty choices) was removed: ${JSON.stringify(c)}`);
      assert.ok(c.usage == null, `no usage when the client did not ask: ${JSON.stringify(c)}`);
    }
    // Tollgate asked the provider for usage itself, so the charge is still the reported one.
    await assertCharged(response, {
      endpoint: 'chat_completions',
      model: 'gpt-4o-mini',
      prompt: undefined, // the provider counted the body with Tollgate's stream_options added
      completion: 4,
      stream: true,
    });
  });

  test('streamed with stream_options.include_usage: text and usage arrive', T, async () => {
    charged++;
    const { data: stream, response } = await client.chat.completions
      .create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4,
        stream: true,
        stream_options: { include_usage: true },
      })
      .withResponse();
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text.trim().split(/\s+/).length, 4, JSON.stringify(text));
    const withUsage = chunks.filter((c) => c.usage);
    assert.equal(withUsage.length, 1, JSON.stringify(chunks.map((c) => c.usage)));
    const usage = chunks.at(-1).usage;
    assert.ok(usage, 'the usage chunk is the last one');
    assert.equal(usage.completion_tokens, 4);
    assert.ok(usage.prompt_tokens > 0);
    await assertCharged(response, {
      endpoint: 'chat_completions',
      model: 'gpt-4o-mini',
      prompt: usage.prompt_tokens,
      completion: 4,
      stream: true,
    });
  });
});

describe('openai responses', () => {
  test('plain', T, async () => {
    charged++;
    const { data, response } = await client.responses
      .create({ model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 4 })
      .withResponse();
    assert.ok(data.output_text, JSON.stringify(data));
    assert.equal(data.usage.output_tokens, 4);
    await assertCharged(response, {
      endpoint: 'responses',
      model: 'gpt-4o-mini',
      prompt: data.usage.input_tokens,
      completion: 4,
      stream: false,
    });
  });

  test('streamed: text deltas and the completed response with usage', T, async () => {
    charged++;
    const { data: stream, response } = await client.responses
      .create({ model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 4, stream: true })
      .withResponse();
    let text = '';
    let completed;
    for await (const ev of stream) {
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') completed = ev.response;
    }
    assert.equal(text.trim().split(/\s+/).length, 4, JSON.stringify(text));
    assert.ok(completed, 'a response.completed event arrived');
    assert.equal(completed.usage.output_tokens, 4);
    await assertCharged(response, {
      endpoint: 'responses',
      model: 'gpt-4o-mini',
      prompt: completed.usage.input_tokens,
      completion: 4,
      stream: true,
    });
  });

  test('the responses.stream() helper and finalResponse()', T, async () => {
    charged++;
    const s = client.responses.stream({ model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 3 });
    let text = '';
    s.on('response.output_text.delta', (ev) => {
      text += ev.delta;
    });
    const final = await s.finalResponse();
    assert.ok(text.length > 0);
    assert.equal(final.output_text, text);
    assert.equal(final.usage.output_tokens, 3);
  });
});

describe('openai models', () => {
  test('models.list: the models this project may use, in the OpenAI shape', T, async () => {
    const ids = [];
    for await (const m of client.models.list()) {
      assert.equal(m.object, 'model', JSON.stringify(m));
      assert.equal(typeof m.owned_by, 'string', JSON.stringify(m));
      ids.push(m.id);
    }
    for (const id of ['gpt-4o-mini', 'openai/gpt-4o-mini', 'claude-sonnet-4']) {
      assert.ok(ids.includes(id), `${id} in ${JSON.stringify(ids)}`);
    }
  });

  test('models.retrieve: one model, in the OpenAI shape', T, async () => {
    const m = await client.models.retrieve('gpt-4o-mini');
    assert.equal(m.id, 'gpt-4o-mini');
    assert.equal(m.object, 'model');
    assert.equal(m.owned_by, 'openai');
  });

  test('models.retrieve of a model the project cannot use: NotFoundError', T, async () => {
    await assert.rejects(client.models.retrieve('llama-3'), (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, `${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 404);
      assert.equal(e.code, 'not_found');
      assert.equal(e.type, 'not_found');
      return true;
    });
  });
});

describe('openai charges', () => {
  test('every charged call has one decision record, charged from reported usage', T, async () => {
    const wanted = new Set(['chat_completions', 'responses']);
    const deadline = Date.now() + WAIT_MS;
    let records;
    do {
      records = (await decisions(stack, 'sdk')).filter((d) => wanted.has(d.endpoint));
    } while (records.length < charged && Date.now() < deadline && (await pause()));
    assert.equal(records.length, charged, JSON.stringify(records));
    for (const d of records) {
      assert.equal(d.decision, 'allow', JSON.stringify(d));
      assert.equal(d.usage_source, 'reported', JSON.stringify(d));
      assert.ok(d.completion_tokens > 0 && d.cost_usd > 0, JSON.stringify(d));
    }
  });
});
