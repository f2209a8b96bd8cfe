#!/usr/bin/env bash
# Runs README's first commands exactly as written, so README can never rot:
#   1. the demo command of "## Try it offline": it must exit 0 (`tollgate demo --run` checks
#      every answer itself: the proxied call, the 403s, the 402, the decision records);
#   2. the serve command of "## Two commands": the gateway it starts must answer GET /healthz
#      (on the `listen` address of the config the command names); then it is stopped.
# (The other command of "Two commands" is tests/run-all.sh, which runs this script.)
#
# Usage: tests/readme-commands.sh [--debug]
#   --debug runs the commands with `--release` dropped (target/debug instead of target/release),
#   a quick check while developing; CI runs them as written. The first release build takes
#   minutes, hence the long time limits.
set -euo pipefail
cd "$(dirname "$0")/.."

rewrite=(cat)
if [ "${1:-}" = "--debug" ]; then
  rewrite=(sed -e 's/ --release//g' -e 's#target/release/#target/debug/#g')
fi
BUILD_WITHIN=${README_BUILD_WITHIN:-2400}   # seconds: a first release build on two busy cores

fail() { echo "README command failed: $*" >&2; exit 1; }

# The command lines of the first ```sh block after the heading "$1" (comments, blank lines dropped).
block() {
  awk -v h="$1" '$0 == h {found = 1; next}
                 found && /^```sh/ {inside = 1; next}
                 inside && /^```/ {exit}
                 inside' README.md | grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' || true
}

healthz() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/healthz" 2>/dev/null || true; }

# ---- 1. the demo ----------------------------------------------------------------------------
demo=$(block "## Try it offline" | grep 'tollgate demo' | "${rewrite[@]}")
[ -n "$demo" ] || fail 'no `tollgate demo` command in the "## Try it offline" block of README.md'
[ "$(printf '%s\n' "$demo" | wc -l)" = 1 ] || fail "more than one demo command: $demo"
echo "== README demo: $demo"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
timeout "$BUILD_WITHIN" bash -c "$demo" >"$out" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
  cat "$out" >&2
  [ "$rc" = 124 ] && fail "$demo: not done within ${BUILD_WITHIN}s (README_BUILD_WITHIN raises the limit)"
  fail "$demo (exit $rc)"
fi
cat "$out"
grep -q 'Every answer was the expected one' "$out" || fail "$demo: its summary line is missing"

# ---- 2. the serve command -------------------------------------------------------------------
serve=$(block "## Two commands" | grep ' serve ' | "${rewrite[@]}")
[ -n "$serve" ] || fail 'no serve command in the "## Two commands" block of README.md'
[ "$(printf '%s\n' "$serve" | wc -l)" = 1 ] || fail "more than one serve command: $serve"
config=$(printf '%s\n' "$serve" | sed -n 's/.*--config[ =]\([^ ]*\).*/\1/p')
[ -f "$config" ] || fail "$serve: its config file ${config:-(none)} does not exist"
listen=$(sed -n 's/^listen[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config" | head -n 1)
listen=${listen:-127.0.0.1:8080}
[ "$(healthz "$listen")" = 000 ] || fail "something already answers on $listen: stop it first"
echo "== README serve: $serve (waiting for http://$listen/healthz)"
log=$(mktemp)
trap 'rm -f "$out" "$log"' EXIT
# Its own process group, so cargo and the gateway it runs stop together.
setsid bash -c "$serve" >"$log" 2>&1 &
pid=$!
stop() {
  kill -INT -- "-$pid" 2>/dev/null || true   # SIGINT: the fast stop (SIGTERM waits grace_period_s)
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
trap 'stop; rm -f "$out" "$log"' EXIT
start=$SECONDS
until [ "$(healthz "$listen")" = 200 ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log" >&2
    fail "$serve: it exited before answering /healthz"
  fi
  [ $((SECONDS - start)) -lt "$BUILD_WITHIN" ] || { tail -n 20 "$log" >&2; fail "$serve: no /healthz answer within ${BUILD_WITHIN}s"; }
  sleep 0.5
done
echo "== the gateway answers http://$listen/healthz; stopping it"
stop
echo "README commands: OK"
