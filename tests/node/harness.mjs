// Start the mock provider and the real tollgate binary (both from target/debug, like
// tests/sdk/conftest.py) on loopback port 0, and read the addresses they report on stdout
// (`LISTENING <addr>`, and tollgate's `ADMIN_LISTENING <addr>`). Every wait is bounded and
// polls the state that proves its condition; no sleep stands in for synchronisation. Every
// child is killed when the test file ends, whether its tests passed, failed or threw.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
export const TOLLGATE = process.env.TOLLGATE_BIN || join(TARGET, 'debug', 'tollgate');
export const MOCK = process.env.MOCK_BIN || join(TARGET, 'debug', 'mock-provider');

/** Project keys: `sdk` can use everything; the others exist to be refused. */
export const KEY = 'tg_node_test_key_sdk_000001';
export const KEY_LIMITED = 'tg_node_test_key_limited_02'; // allow_models matches nothing priced: 403
export const KEY_BROKE = 'tg_node_test_key_broke_0003'; // a budget of $0.000001: 402
export const KEY_SLOW = 'tg_node_test_key_slow_00004'; // rpm = 1: the second request is 429
export const KEY_COSTLY = 'tg_node_test_key_costly_005'; // report_cost = true: usage.cost, usage.duration_ms
export const WRONG_KEY = 'tg_node_test_key_unknown_99';
export const ADMIN_TOKEN = 'node-admin-token-for-tests';

/** How long any wait lasts at most: generous for a loaded 2-core machine. */
export const WAIT_MS = 30_000;

const children = new Set();
const killAll = () => {
  for (const c of children) c.kill('SIGKILL');
};
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killAll();
    process.exit(1);
  });
}

/**
 * Spawn `cmd args` and resolve once it has printed a line starting with each of `tags`
 * (`{TAG: addr}`); reject if it exits first or `WAIT_MS` passes (the child is then killed).
 */
function spawnListening(cmd, args, { env, stderr, tags }) {
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', stderr ? 'pipe' : 'inherit'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  if (stderr) child.stderr.pipe(stderr);
  return new Promise((resolvePromise, reject) => {
    const found = {};
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} did not report ${tags.join(', ')} within ${WAIT_MS} ms (got ${JSON.stringify(found)})`));
    }, WAIT_MS);
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} ${why} before reporting ${tags.join(', ')}`));
    };
    child.on('error', (e) => fail(`failed to start: ${e.message}`));
    child.on('exit', (code, sig) => fail(`exited (code ${code}, signal ${sig})`));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const [tag, addr] = line.trim().split(' ');
      if (tags.includes(tag) && addr) found[tag] = addr;
      if (tags.every((t) => t in found)) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.on('exit', () => children.delete(child));
        resolvePromise({ child, found });
      }
    });
  });
}

function kill(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    child.once('exit', res);
    child.kill('SIGKILL');
  });
}

const sha256 = (s) => createHash('sha256').update(s).digest('hex');

function config(tmp, mock) {
  return `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "NODE_TEST_ADMIN_TOKEN"
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
prefix = "openai/"
provider = "openai"
strip_prefix = true
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
id = "sdk"
keys = ["${KEY}"]
[[projects]]
id = "limited"
keys = ["sha256:${sha256(KEY_LIMITED)}"]
allow_models = ["claude-haiku-*"]
[[projects]]
id = "broke"
keys = ["${KEY_BROKE}"]
budget = { limit_usd = 0.000001, period = "total" }
[[projects]]
id = "slow"
keys = ["${KEY_SLOW}"]
rate_limit = { rpm = 1 }
[[projects]]
id = "costly"
keys = ["${KEY_COSTLY}"]
report_cost = true
unpriced = "allow"
`;
}

/**
 * The mock provider and a gateway in front of it. `stop()` kills both (call it from `after`;
 * a process exit kills them too).
 */
export async function startStack() {
  const tmp = mkdtempSync(join(tmpdir(), 'tollgate-node-'));
  const mock = await spawnListening(MOCK, ['--listen', '127.0.0.1:0', '--threads', '1'], {
    env: process.env,
    tags: ['LISTENING'],
  });
  const mockUrl = `http://${mock.found.LISTENING}`;
  const cfgPath = join(tmp, 'tollgate.toml');
  writeFileSync(cfgPath, config(tmp, mockUrl));
  const logPath = join(tmp, 'tollgate.log');
  const log = createWriteStream(logPath);
  const env = {
    ...process.env,
    NODE_OPENAI_KEY: 'sk-openai-provider-secret',
    NODE_ANTHROPIC_KEY: 'sk-ant-provider-secret',
    NODE_TEST_ADMIN_TOKEN: ADMIN_TOKEN,
    RUST_LOG: 'info',
  };
  let gw;
  try {
    gw = await spawnListening(TOLLGATE, ['serve', '--config', cfgPath], {
      env,
      stderr: log,
      tags: ['LISTENING', 'ADMIN_LISTENING'],
    });
  } catch (e) {
    await kill(mock.child);
    throw new Error(`${e.message}\n--- tollgate log ---\n${readLog(logPath)}`);
  }
  const stack = {
    base: `http://${gw.found.LISTENING}`,
    admin: `http://${gw.found.ADMIN_LISTENING}`,
    mock: mockUrl,
    logPath,
    log: () => readLog(logPath),
    stop: async () => {
      await Promise.all([kill(gw.child), kill(mock.child)]);
    },
  };
  try {
    const r = await fetch(`${stack.base}/healthz`, { signal: AbortSignal.timeout(WAIT_MS) });
    if (r.status !== 200) throw new Error(`/healthz answered ${r.status}`);
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return stack;
}

function readLog(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** `GET /admin/decisions` for a project, newest first. */
export async function decisions(stack, project, limit = 200) {
  const r = await fetch(`${stack.admin}/admin/decisions?project=${project}&limit=${limit}`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    signal: AbortSignal.timeout(WAIT_MS),
  });
  if (r.status !== 200) throw new Error(`/admin/decisions answered ${r.status}: ${await r.text()}`);
  return (await r.json()).decisions;
}

/**
 * The decision record whose id is `requestId` (the response's `x-tollgate-request-id`).
 * Records reach the store asynchronously, after the response ends: poll until it is there.
 */
export async function decisionFor(stack, project, requestId) {
  if (!requestId) throw new Error('the response carried no x-tollgate-request-id');
  const deadline = Date.now() + WAIT_MS;
  let seen = [];
  for (;;) {
    seen = await decisions(stack, project);
    const d = seen.find((x) => x.id === requestId);
    if (d) return d;
    if (Date.now() > deadline) {
      throw new Error(`no decision record ${requestId} for ${project} within ${WAIT_MS} ms; have ${JSON.stringify(seen)}`);
    }
    await pause();
  }
}

/** The request id of a fetch Response / SDK `withResponse()` response. */
export const requestIdOf = (response) => response.headers.get('x-tollgate-request-id');

/** One polling interval (25 ms) of a bounded wait, never a synchronisation; resolves true. */
export const pause = () => new Promise((r) => setTimeout(() => r(true), 25));
