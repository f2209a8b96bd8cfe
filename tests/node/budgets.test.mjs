// Key expiry through the official Node SDKs: a key past its `expires` is the SDK's
// AuthenticationError with Tollgate's `key_expired` code; a key of the same project that has not
// expired works. Starts its own mock and gateway (a config with expiring keys), like harness.mjs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { MOCK, TOLLGATE, WAIT_MS } from './harness.mjs';

const KEY_OK = 'tg_node_budget_key_valid_001';
const KEY_EXPIRED = 'tg_node_budget_key_expired_2';
const KEY_LATER = 'tg_node_budget_key_later_003';
const T = { timeout: 60_000 };

const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

/** Spawn `cmd args` and resolve with the address it reports on its `LISTENING` line. */
function listening(cmd, args, env, stderr) {
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', stderr ? 'pipe' : 'inherit'] });
  children.push(child);
  if (stderr) child.stderr.pipe(stderr);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not report LISTENING`)), WAIT_MS);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code}) before LISTENING`));
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
      const [tag, addr] = line.trim().split(' ');
      if (tag === 'LISTENING' && addr) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve(`http://${addr}`);
      }
    });
  });
}

let base;
let logPath;

before(async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'tollgate-node-budgets-'));
  const mock = await listening(MOCK, ['--listen', '127.0.0.1:0', '--threads', '1'], process.env);
  const cfg = join(tmp, 'tollgate.toml');
  writeFileSync(
    cfg,
    `
[server]
listen = "127.0.0.1:0"
[store]
path = "${tmp}/ledger.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "${mock}"
api_key_env = "NODE_OPENAI_KEY"
read_timeout_ms = 10000
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "${mock}"
api_key_env = "NODE_ANTHROPIC_KEY"
read_timeout_ms = 10000
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
  "${KEY_OK}",
  { key = "${KEY_EXPIRED}", name = "old", expires = "2020-01-01T00:00:00Z" },
  { key = "${KEY_LATER}", name = "later", expires = "2099-01-01T00:00:00Z" },
]
`,
  );
  logPath = join(tmp, 'tollgate.log');
  const env = {
    ...process.env,
    NODE_OPENAI_KEY: 'sk-openai-provider-secret',
    NODE_ANTHROPIC_KEY: 'sk-ant-provider-secret',
    RUST_LOG: 'info',
  };
  try {
    base = await listening(TOLLGATE, ['serve', '--config', cfg], env, createWriteStream(logPath));
  } catch (e) {
    throw new Error(`${e.message}\n--- tollgate log ---\n${readFileSync(logPath, 'utf8')}`);
  }
});
after(() => {
  children.forEach((c) => c.kill('SIGKILL'));
});

const openai = (apiKey) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
const anthropic = (apiKey) => new Anthropic({ baseURL: base, apiKey, maxRetries: 0, timeout: 30_000 });
const chat = (c) => c.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
const message = (c) => c.messages.create({ model: 'claude-sonnet-4', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] });

describe('401 key_expired', () => {
  test('openai: AuthenticationError with code key_expired; unexpired keys work', T, async () => {
    await assert.rejects(chat(openai(KEY_EXPIRED)), (e) => {
      assert.ok(e instanceof OpenAI.AuthenticationError, `want AuthenticationError, got ${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'key_expired', JSON.stringify(e.error));
      return true;
    });
    for (const key of [KEY_OK, KEY_LATER]) {
      const r = await chat(openai(key));
      assert.equal(r.usage.completion_tokens, 3);
    }
  });
  test('anthropic: AuthenticationError with code key_expired; an unexpired key works', T, async () => {
    await assert.rejects(message(anthropic(KEY_EXPIRED)), (e) => {
      assert.ok(e instanceof Anthropic.AuthenticationError, `want AuthenticationError, got ${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 401);
      assert.equal(e.error?.type, 'error', JSON.stringify(e.error));
      assert.equal(e.error.error.code, 'key_expired', JSON.stringify(e.error));
      return true;
    });
    const m = await message(anthropic(KEY_LATER));
    assert.equal(m.usage.output_tokens, 3);
  });
});
