#!/usr/bin/env bash
# Real clients through Tollgate, unchanged: Claude Code (`claude -p`), Codex CLI (`codex exec`,
# over HTTP and with its WebSocket try), and the official OpenAI and Anthropic SDKs for Node and
# Python configured by environment variables alone. The npm packages are installed at the
# versions pinned in tests/agents/package.json (package-lock.json committed; the Python SDKs come
# from .venv, which tests/run-all.sh makes from tests/sdk/requirements.txt). Each client runs
# against target/debug/tollgate, which forwards to target/debug/mock-provider. Nothing leaves
# the machine: the agents' HOME, config and working directory are fresh temp directories, their
# environment is built from nothing (env -i), telemetry, auto-update and non-essential traffic
# are off.
#
# Each client has its own project. Afterwards the admin API (GET /admin/decisions) must show for
# it at least one call, every call allowed with a 2xx, every charged call priced from the
# provider's reported usage (usage_source "reported", cost_usd > 0; count_tokens is free); the
# agent's own cost figure (Claude Code) and token count (Codex) must equal Tollgate's; every
# request the client made of the gateway must get a 2xx (a 404 is a route a client needs); the
# provider must see its own credential and never the project key. A summary table is printed;
# the exit status is non-zero if any client failed (each failure is named).
#
# Builds nothing: run `cargo build --bins` first. Bounded: each step has its own deadline and the
# whole script stops after TOLLGATE_AGENTS_TIMEOUT_S (default 300) seconds. Every process it
# starts is killed on exit.
#
#   tests/agents/run.sh                         # all: claude codex codex-ws node-sdk python-sdk
#   tests/agents/run.sh claude codex            # a subset, by name
#   KEEP_TMP=1 tests/agents/run.sh              # keep the temp dir (configs, logs, agent output)
set -euo pipefail

LIMIT_S="${TOLLGATE_AGENTS_TIMEOUT_S:-300}"
if [ -z "${TOLLGATE_AGENTS_INNER:-}" ]; then
  # The whole run under one deadline; the inner script's EXIT trap cleans up on TERM.
  export TOLLGATE_AGENTS_INNER=1
  timeout -k 15 "$LIMIT_S" "$0" "$@" && exit 0
  rc=$?
  [ "$rc" = 124 ] && echo "FAIL: tests/agents/run.sh did not finish within ${LIMIT_S}s" >&2
  exit "$rc"
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
TOLLGATE="${TOLLGATE_BIN:-$TARGET/debug/tollgate}"
MOCK="${MOCK_BIN:-$TARGET/debug/mock-provider}"
AGENTS=("$@")
[ ${#AGENTS[@]} -gt 0 ] || AGENTS=(claude codex codex-ws node-sdk python-sdk)
T0=$(date +%s)
say() { printf '== [%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "FAIL: $*" >&2; exit 1; }

# ---- prerequisites ---------------------------------------------------------------------------
for b in "$TOLLGATE" "$MOCK"; do
  [ -x "$b" ] || die "$b is missing: build it first with 'cargo build --bins' (this script builds nothing)"
done

# ---- processes and temp dir: everything is torn down on exit -------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-agents.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -n "${KEEP_TMP:-}" ] || [ "$rc" != 0 ]; then
    echo "(logs, configs and agent output kept in $TMP)" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  say "installing with apt: ${need_apt[*]}"
  timeout 120 $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 240 $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# npm ci: exactly the lock file's versions, unless node_modules already holds them.
installed_matches_lock() {
  node -e '
    const fs = require("fs"), dir = process.argv[1];
    const lock = JSON.parse(fs.readFileSync(dir + "/package-lock.json", "utf8")).packages;
    for (const [p, v] of Object.entries(lock)) {
      if (!p || v.optional) continue;          // the root; platform packages npm may skip
      const m = JSON.parse(fs.readFileSync(dir + "/" + p + "/package.json", "utf8"));
      if (m.version !== v.version) process.exit(1);
    }' "$HERE" 2>/dev/null \
  && [ -x "$HERE/node_modules/.bin/claude" ] && [ -x "$HERE/node_modules/.bin/codex" ]
}
if ! installed_matches_lock; then
  say "npm ci (versions pinned in tests/agents/package-lock.json)"
  (cd "$HERE" && timeout 240 npm ci --no-audit --no-fund --loglevel=error) \
    || die "npm ci in tests/agents failed (see above)"
fi
CLAUDE="$HERE/node_modules/.bin/claude"
CODEX="$HERE/node_modules/.bin/codex"
# Both ship a native binary in a platform package from npm; Claude Code's postinstall
# (node install.cjs) puts it in place of bin/claude.exe, a stub until then.
"$CLAUDE" --version >/dev/null 2>&1 || die "Claude Code does not start ($CLAUDE --version failed): did its postinstall (node install.cjs) run? $("$CLAUDE" --version 2>&1 | head -c 500)"
"$CODEX" --version >/dev/null 2>&1 || die "Codex does not start ($CODEX --version failed): $("$CODEX" --version 2>&1 | head -c 500)"

# ---- mock provider and gateway on port 0 -----------------------------------------------------
# start NAME TAG... : run "$@" after the tags with stdout on a FIFO, read one `TAG <addr>` line
# per tag (20 s at most each), set ADDR_<TAG>.
start() {
  local name=$1; shift
  local tags=()
  while [ "$1" != -- ]; do tags+=("$1"); shift; done
  shift
  local fifo="$TMP/$name.stdout"
  mkfifo "$fifo"
  "$@" >"$fifo" 2>"$TMP/$name.log" &
  PIDS+=($!)
  local fd
  exec {fd}<"$fifo"
  local want=${#tags[@]} line
  while [ "$want" -gt 0 ]; do
    if ! IFS= read -r -t 20 line <&"$fd"; then
      cat "$TMP/$name.log" >&2
      die "$name did not print its listening address within 20 s (log above)"
    fi
    for t in "${tags[@]}"; do
      if [ "${line%% *}" = "$t" ]; then
        printf -v "ADDR_$t" '%s' "${line#* }"; want=$((want - 1))
      fi
    done
  done
  # The fd stays open (and is never read again): the process never gets SIGPIPE on stdout.
}

say "starting mock-provider and tollgate"
# Replies of 16 tokens (capped by each request's max_tokens): the SDK checks expect the usage
# the mock reported to reach the client unchanged.
start mock LISTENING -- "$MOCK" --listen 127.0.0.1:0 --threads 1 --tokens 16 --log
MOCK_URL="http://$ADDR_LISTENING"

KEY_CLAUDE="tg_agents_claude_code_key_01"
KEY_CODEX="tg_agents_codex_cli_key_0002"
KEY_CODEX_WS="tg_agents_codex_ws_key_00003"
KEY_NODE_SDK="tg_agents_node_sdk_key_00004"
KEY_PYTHON_SDK="tg_agents_python_sdk_key_05"
ADMIN_TOKEN="agents-admin-token-$$-$RANDOM"
ANTHROPIC_SECRET="sk-ant-mock-provider-secret-$RANDOM"
OPENAI_SECRET="sk-openai-mock-provider-secret-$RANDOM"
# Prices per million tokens, the providers' list prices (so Claude Code's own cost figure can
# be compared with Tollgate's charge). Longest prefix wins: "claude-" and "gpt-" price whatever
# model the agent's default is today; the named entries make the common ones exact.
cat >"$TMP/tollgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "AGENTS_ADMIN_TOKEN"
max_body_bytes = 4194304
threads = 2

[store]
path = "$TMP/ledger.db"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "$MOCK_URL"
api_key_env = "AGENTS_ANTHROPIC_KEY"
read_timeout_ms = 30000

[[providers]]
name = "openai"
kind = "openai"
base_url = "$MOCK_URL"
api_key_env = "AGENTS_OPENAI_KEY"
read_timeout_ms = 30000

[[routes]]
prefix = "claude-"
provider = "anthropic"

[[routes]]
prefix = "gpt-"
provider = "openai"

[[routes]]
prefix = "o"
provider = "openai"

[[routes]]
prefix = "codex-"
provider = "openai"

[prices."claude-"]
input = 3.0
output = 15.0
max_output_tokens = 64000

[prices."claude-sonnet-4"]
input = 3.0
output = 15.0
max_output_tokens = 64000

[prices."claude-opus-4"]
input = 5.0
output = 25.0
max_output_tokens = 64000

# Claude Code 2.1.332's default model; the price it computes its own cost figure with
# (modelUsage.costBasis "list"): 4 and 20 dollars per million.
[prices."claude-opus-5"]
input = 4.0
output = 20.0
max_output_tokens = 128000

[prices."claude-haiku-4"]
input = 1.0
output = 5.0
max_output_tokens = 64000

[prices."claude-3-5-haiku"]
input = 0.8
output = 4.0
max_output_tokens = 8192

[prices."gpt-"]
input = 1.25
output = 10.0
max_output_tokens = 128000

[prices."o"]
input = 1.25
output = 10.0
max_output_tokens = 128000

[prices."codex-"]
input = 1.25
output = 10.0
max_output_tokens = 128000

[[projects]]
id = "claude-code"
keys = ["$KEY_CLAUDE"]
budget = { limit_usd = 100.0, period = "total" }

[[projects]]
id = "codex"
keys = ["$KEY_CODEX"]
budget = { limit_usd = 100.0, period = "total" }

[[projects]]
id = "codex-ws"
keys = ["$KEY_CODEX_WS"]
budget = { limit_usd = 100.0, period = "total" }

[[projects]]
id = "node-sdk"
keys = ["$KEY_NODE_SDK"]
budget = { limit_usd = 100.0, period = "total" }

[[projects]]
id = "python-sdk"
keys = ["$KEY_PYTHON_SDK"]
budget = { limit_usd = 100.0, period = "total" }
EOF
start tollgate LISTENING ADMIN_LISTENING -- env AGENTS_ADMIN_TOKEN="$ADMIN_TOKEN" \
  AGENTS_ANTHROPIC_KEY="$ANTHROPIC_SECRET" AGENTS_OPENAI_KEY="$OPENAI_SECRET" \
  RUST_LOG=info "$TOLLGATE" serve --config "$TMP/tollgate.toml"
GW="http://$ADDR_LISTENING"
ADMIN="http://$ADDR_ADMIN_LISTENING"
curl -fsS --max-time 10 "$GW/healthz" >/dev/null || die "gateway $GW/healthz did not answer 200"
curl -fsS --max-time 10 -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/admin/projects" >/dev/null \
  || die "admin API $ADMIN/admin/projects did not answer 200 with the token"
say "mock $MOCK_URL, gateway $GW, admin $ADMIN"

# ---- the agents ------------------------------------------------------------------------------
BASE_PATH="$(dirname "$(command -v node)"):/usr/local/bin:/usr/bin:/bin"
# run_bounded SECONDS OUTFILE CMD...: run in the background and wait (wait is interruptible, so
# the TERM of the outer deadline is handled at once); stdin is /dev/null.
run_bounded() {
  local secs=$1 out=$2; shift 2
  timeout -k 5 "$secs" "$@" </dev/null >"$out" 2>"$out.stderr" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

mock_mark() { curl -fsS --max-time 10 "$MOCK_URL/_mock/count" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).count))'; }

# mock_requests_since MARK AGENT PROJECT_KEY: what the mock received since MARK (method, path,
# model, body size, a few headers). Each request must carry its provider's credential in that
# provider's scheme and nowhere the project key (SPEC: the key is removed before forwarding).
mock_requests_since() {
  local verdict
  verdict="$(curl -fsS --max-time 10 "$MOCK_URL/_mock/requests" | node -e '
    let s=""; process.stdin.on("data",d=>s+=d).on("end",()=>{
      const [from, key, antSecret, oaSecret] = process.argv.slice(1), reqs = JSON.parse(s).requests.slice(+from);
      for (const r of reqs) {
        const h=Object.fromEntries(r.headers);
        const hs = JSON.stringify(r.headers);
        if (hs.includes(key) || r.body.includes(key)) console.log(`BAD\t${r.method} ${r.path}: the project key reached the provider`);
        const ok = r.path.startsWith("/v1/messages") ? h["x-api-key"] === antSecret : h["authorization"] === `Bearer ${oaSecret}`;
        if (!ok) console.log(`BAD\t${r.method} ${r.path}: the provider credential is not in its scheme upstream`);
        let model="-"; try { model=JSON.parse(r.body).model ?? "-" } catch {}
        console.log(`  ${r.method} ${r.path} model=${model} body=${r.body_len}B` +
          (h["anthropic-beta"] ? ` anthropic-beta=${h["anthropic-beta"]}` : "") +
          (h["user-agent"] ? ` ua=${h["user-agent"]}` : ""));
      }
    })' "$1" "$3" "$ANTHROPIC_SECRET" "$OPENAI_SECRET")" || { agent_fail "$2" "GET /_mock/requests failed"; return; }
  grep -v '^BAD' <<<"$verdict" || true
  local b
  while IFS= read -r b; do [ -n "$b" ] && agent_fail "$2" "${b#BAD	}"; done < <(grep '^BAD' <<<"$verdict" || true)
}

# access_count: how many access-log lines the gateway has written.
access_count() { grep -c 'tollgate::access' "$TMP/tollgate.log" || true; }
# check_access AGENT MARK [ALLOWED_STATUS...]: every request the agent made of the gateway got a
# 2xx (or one of the allowed statuses); a 404 or 405 here is a route an agent needs that
# Tollgate does not serve. The access line has no path: rerun with the agent pointed at the
# mock (`mock-provider --log` prints method and path) to see which.
check_access() {
  local agent=$1 mark=$2; shift 2
  local line st
  while IFS= read -r line; do
    st="$(sed -n 's/.* status=\([0-9]*\) .*/\1/p' <<<"$line")"
    case "$st" in 2??) continue ;; esac
    [[ " $* " == *" $st "* ]] && continue
    agent_fail "$agent" "the gateway answered $st: ${line#*tollgate::access\] }"
  done < <(grep 'tollgate::access' "$TMP/tollgate.log" | tail -n +"$((mark + 1))")
}

RESULTS=()
FAILED=()
agent_fail() { FAILED+=("$1: $2"); echo "FAIL: $1: $2" >&2; }

# check_project AGENT VERSION PROJECT SECONDS [AGENT_COST_USD] [AGENT_TOTAL_TOKENS]: the admin
# API's records for the project; the agent's own cost figure and token count, where it prints
# them, must equal what Tollgate charged and counted.
check_project() {
  local agent=$1 version=$2 project=$3 secs=$4 want_cost=${5:-} want_tokens=${6:-}
  local json want n
  # The records reach the store within its flush interval (200 ms) after the response: wait
  # until it has one for every access-log line of the project (an agent may exit at once).
  want="$(grep -c "tollgate::access.* project=$project " "$TMP/tollgate.log" || true)"
  for _ in $(seq 1 50); do
    json="$(curl -fsS --max-time 10 -H "Authorization: Bearer $ADMIN_TOKEN" \
      "$ADMIN/admin/decisions?project=$project&limit=1000")" || { agent_fail "$agent" "GET /admin/decisions failed"; return; }
    n="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(0, "utf8")).decisions.length)' <<<"$json")"
    [ "$n" -ge "$want" ] && [ "$n" -gt 0 ] && break
    sleep 0.1
  done
  local verdict
  verdict="$(node -e '
    const [agent, version, secs] = process.argv.slice(1);
    const ds = JSON.parse(require("fs").readFileSync(0, "utf8")).decisions;
    const bad = [], eps = {}, models = new Set();
    let cost = 0, pin = 0, pout = 0;
    for (const d of ds) {
      eps[d.endpoint] = (eps[d.endpoint] || 0) + 1;
      models.add(d.model);
      cost += d.cost_usd || 0; pin += d.prompt_tokens || 0; pout += d.completion_tokens || 0;
      const free = d.endpoint === "count_tokens";   // SPEC: forwarded, never charged
      const why = [];
      if (d.decision !== "allow") why.push(`decision=${d.decision} reason=${d.reason}`);
      if (!(d.status >= 200 && d.status < 300)) why.push(`status=${d.status}`);
      if (!free && d.usage_source !== "reported") why.push(`usage_source=${d.usage_source}`);
      if (!free && !(d.cost_usd > 0)) why.push(`cost_usd=${d.cost_usd}`);
      if (why.length) bad.push(`${d.endpoint} ${d.model} ${d.id}: ${why.join(", ")}`);
    }
    if (ds.length === 0) bad.push("no decision recorded: the agent made no call through Tollgate");
    const [wantCost, wantTokens] = process.argv.slice(4);
    if (wantCost && Math.abs(+wantCost - cost) > 1e-6)
      bad.push(`${agent} reported its cost as $${wantCost}, Tollgate charged $${cost}`);
    if (wantTokens && +wantTokens !== pin + pout)
      bad.push(`the agent counted ${wantTokens} tokens, Tollgate ${pin} + ${pout} = ${pin + pout}`);
    const e = Object.entries(eps).map(([k, v]) => `${k}x${v}`).join(",") || "-";
    console.log(["ROW", agent, version, ds.length, e, [...models].join(",") || "-",
                 `${pin}/${pout}`, cost.toFixed(6), secs].join("\t"));
    for (const b of bad) console.log("BAD\t" + b);
  ' "$agent" "$version" "$secs" "$want_cost" "$want_tokens" <<<"$json")"
  local row
  row="$(grep '^ROW' <<<"$verdict" | cut -f2-)"
  RESULTS+=("$row")
  local b
  while IFS= read -r b; do
    [ -n "$b" ] && agent_fail "$agent" "${b#BAD	}"
  done < <(grep '^BAD' <<<"$verdict" || true)
}

run_claude() {
  local version home work out t1 rc=0
  version="$("$CLAUDE" --version 2>/dev/null | awk '{print $1}')" || true
  home="$TMP/claude-home"; work="$TMP/claude-work"; out="$TMP/claude.json"
  mkdir -p "$home" "$work"
  say "Claude Code $version: claude -p 'say hi' --output-format json"
  local mark; mark="$(mock_mark)"
  local amark; amark="$(access_count)"
  t1=$(date +%s)
  run_bounded 120 "$out" env -i -C "$work" PATH="$BASE_PATH" HOME="$home" TERM=dumb LANG=C.UTF-8 \
      TMPDIR="$TMP" USER=agents SHELL=/bin/bash \
      ANTHROPIC_BASE_URL="$GW" ANTHROPIC_API_KEY="$KEY_CLAUDE" \
      DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1 DISABLE_ERROR_REPORTING=1 \
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
      "$CLAUDE" -p "say hi" --output-format json || rc=$?
  local secs=$(( $(date +%s) - t1 ))
  echo "-- what the mock received from Claude Code:"; mock_requests_since "$mark" claude "$KEY_CLAUDE"
  if [ "$rc" != 0 ]; then
    local said
    said="$(node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`result ${JSON.stringify(r.result)}, api_error_status ${r.api_error_status}, api_error_type ${r.api_error_type}`)' "$out" 2>/dev/null)" \
      || said="stdout: $(head -c 2000 "$out")"
    agent_fail claude "claude -p exited $rc after ${secs}s; $said; stderr: $(head -c 2000 "$out.stderr")"
  elif ! node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      if (r.is_error || r.subtype !== "success") { console.error(JSON.stringify(r).slice(0, 2000)); process.exit(1) }
      console.log(`-- claude result: ${r.num_turns} turn(s), its own cost figure $${r.total_cost_usd}, result ${JSON.stringify(String(r.result).slice(0, 60))}...`);
    ' "$out"; then
    agent_fail claude "claude -p did not report success (its JSON above)"
  fi
  local cost=""
  cost="$(node -e 'try { const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); if (typeof r.total_cost_usd === "number") console.log(r.total_cost_usd) } catch {}' "$out")"
  check_project claude "$version" claude-code "$secs" "$cost"
  check_access claude "$amark"
}

# run_codex NAME PROJECT KEY [PROVIDER_LINE...]: `codex exec` with Tollgate as a custom model
# provider (extra lines go into its [model_providers.tollgate] table).
run_codex() {
  local name=$1 project=$2 key=$3; shift 3
  local version home work out t1 rc=0
  version="$("$CODEX" --version 2>/dev/null | awk '{print $2}')" || true
  home="$TMP/$name-home"; work="$TMP/$name-work"; out="$TMP/$name.out"
  mkdir -p "$home/codex" "$work"
  cat >"$home/codex/config.toml" <<EOF
model_provider = "tollgate"
check_for_update_on_startup = false

[model_providers.tollgate]
name = "Tollgate"
base_url = "$GW/v1"
env_key = "TOLLGATE_API_KEY"
wire_api = "responses"
$(printf '%s\n' "$@")
[analytics]
enabled = false

[feedback]
enabled = false
EOF
  say "Codex CLI $version ($name): codex exec --skip-git-repo-check 'say hi'${*:+ with $*}"
  local mark; mark="$(mock_mark)"
  local upgrades0; upgrades0="$(grep -c 'status=426 reason=upgrade_required' "$TMP/tollgate.log" || true)"
  local amark; amark="$(access_count)"
  t1=$(date +%s)
  run_bounded 120 "$out" env -i -C "$work" PATH="$BASE_PATH" HOME="$home" TERM=dumb LANG=C.UTF-8 \
      TMPDIR="$TMP" USER=agents SHELL=/bin/bash \
      CODEX_HOME="$home/codex" TOLLGATE_API_KEY="$key" \
      "$CODEX" exec --skip-git-repo-check "say hi" || rc=$?
  local secs=$(( $(date +%s) - t1 ))
  echo "-- what the mock received from Codex ($name):"; mock_requests_since "$mark" "$name" "$key"
  if [ "$rc" != 0 ]; then
    agent_fail "$name" "codex exec exited $rc after ${secs}s; stdout: $(head -c 2000 "$out"); stderr (its end): $(grep -v '^$' "$out.stderr" | tail -n 8 | tail -c 2000)"
  else
    echo "-- codex answered: $(head -c 80 "$out")..."
  fi
  local upgrades; upgrades=$(( $(grep -c 'status=426 reason=upgrade_required' "$TMP/tollgate.log" || true) - upgrades0 ))
  if [[ " $* " == *" supports_websockets = true "* ]]; then
    if [ "$upgrades" -gt 0 ]; then
      echo "-- $name tried a WebSocket on /v1/responses $upgrades time(s), got 426 from Tollgate, fell back to HTTP"
    else
      agent_fail "$name" "no WebSocket attempt (426 upgrade_required) in the gateway's access log: the fallback path was not exercised"
    fi
  fi
  # `codex exec` ends its stderr with "tokens used" and the total on the next line.
  local tokens=""
  tokens="$(awk 'p { gsub(/,/, ""); print; exit } /^tokens used/ { p = 1 }' "$out.stderr")"
  check_project "$name" "$version" "$project" "$secs" "" "$tokens"
  if [[ " $* " == *" supports_websockets = true "* ]]; then check_access "$name" "$amark" 426; else check_access "$name" "$amark"; fi
}

# run_sdk NAME PROJECT KEY CMD...: an SDK script configured by the environment alone
# (OPENAI_BASE_URL = the gateway + /v1, ANTHROPIC_BASE_URL = the gateway, both keys the project's).
run_sdk() {
  local name=$1 project=$2 key=$3; shift 3
  local out="$TMP/$name.out" rc=0 t1 secs mark amark version
  mark="$(mock_mark)"; amark="$(access_count)"
  say "$name: $(basename "${@: -1}")"
  t1=$(date +%s)
  run_bounded 60 "$out" env -i -C "$HERE" PATH="$BASE_PATH" HOME="$TMP" LANG=C.UTF-8 TMPDIR="$TMP" \
      OPENAI_BASE_URL="$GW/v1" OPENAI_API_KEY="$key" ANTHROPIC_BASE_URL="$GW" ANTHROPIC_API_KEY="$key" \
      "$@" || rc=$?
  secs=$(( $(date +%s) - t1 ))
  version="$(head -n 1 "$out")"
  sed -n '2,$p' "$out"
  echo "-- what the mock received from $name:"; mock_requests_since "$mark" "$name" "$key"
  [ "$rc" = 0 ] || agent_fail "$name" "exited $rc after ${secs}s: $(tail -c 2000 "$out.stderr")"
  check_project "$name" "${version:-?}" "$project" "$secs"
  check_access "$name" "$amark"
}

# The Python SDKs: tests/run-all.sh installs them into .venv (tests/sdk/requirements.txt).
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
SKIPPED=()

for a in "${AGENTS[@]}"; do
  case "$a" in
    claude) run_claude ;;
    codex) run_codex codex codex "$KEY_CODEX" ;;
    # Codex's built-in OpenAI provider prefers a WebSocket on /v1/responses; a custom provider
    # does so with supports_websockets = true, and falls back to HTTP on a 426.
    codex-ws) run_codex codex-ws codex-ws "$KEY_CODEX_WS" "supports_websockets = true" ;;
    node-sdk) run_sdk node-sdk node-sdk "$KEY_NODE_SDK" node "$HERE/sdk.mjs" ;;
    python-sdk)
      if "$PYTHON" -c 'import openai, anthropic' 2>/dev/null; then
        run_sdk python-sdk python-sdk "$KEY_PYTHON_SDK" "$PYTHON" "$HERE/sdk.py"
      else
        SKIPPED+=("python-sdk: no Python with the openai and anthropic packages ($PYTHON); tests/run-all.sh makes .venv")
      fi ;;
    *) die "unknown agent '$a' (claude, codex, codex-ws, node-sdk, python-sdk)" ;;
  esac
done

echo "-- gateway access log (one line per request):"
grep 'tollgate::access' "$TMP/tollgate.log" | sed 's/^/  /' || echo "  (none)"

# ---- summary ---------------------------------------------------------------------------------
echo
{
  printf 'agent\tversion\tcalls\tendpoints\tmodels\ttokens in/out\tcost_usd\tagent_s\n'
  for r in "${RESULTS[@]}"; do printf '%s\n' "$r"; done
} | if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi
echo
say "done"
for sk in "${SKIPPED[@]}"; do echo "SKIPPED $sk"; done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "${#FAILED[@]} failure(s):" >&2
  for f in "${FAILED[@]}"; do echo "  $f" >&2; done
  exit 1
fi
echo "all clients worked through Tollgate: ${AGENTS[*]}"
