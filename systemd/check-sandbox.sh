#!/usr/bin/env bash
# Run the built gateway inside the parts of the unit's sandbox that can be reproduced without a
# running systemd, through a short operating scenario, and fail if it needs anything the unit
# forbids:
#   * an unprivileged user (as DynamicUser= gives it);
#   * MemoryDenyWriteExecute=yes, reproduced with the kernel's PR_SET_MDWE (Linux >= 6.3), which
#     refuses writable+executable mappings the same way;
#   * SystemCallFilter=: every system call the process makes (strace -f) must be in the unit's
#     allow list and not in its deny list, expanded with `systemd-analyze syscall-filter`.
# Scenario: JSON and streamed requests, SIGHUP and admin reloads, metrics, the SIGQUIT binary
# upgrade hand-over to a successor, SIGTERM. Needs root (to switch user), strace, python3,
# curl and the debug or release build of tollgate and mock-provider.
# Usage: systemd/check-sandbox.sh [target/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(cd "${1:-target/debug}" && pwd)
for t in strace python3 curl setpriv systemd-analyze; do
  command -v "$t" >/dev/null || { echo "check-sandbox.sh: needs $t" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "check-sandbox.sh: run as root (it drops to nobody)" >&2; exit 2; }
[ -x "$dir/tollgate" ] && [ -x "$dir/mock-provider" ] || { echo "check-sandbox.sh: build first (cargo build --bins)" >&2; exit 2; }
py=$(command -v python3)
[ -x /usr/bin/python3 ] && py=/usr/bin/python3   # nobody cannot use a python under /root

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/mdwe.py" <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE failed (errno %d): needs Linux >= 6.3" % ctypes.get_errno())
os.execvp(sys.argv[1], sys.argv[1:])
PY

"$dir/mock-provider" --listen 127.0.0.1:0 --threads 1 > "$work/mock.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/mock.out" ] && break; sleep 0.05; done
mock=$(cut -d' ' -f2 < "$work/mock.out")
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(port); adm=$(port)
mkdir "$work/state"; chown nobody "$work/state"
cat > "$work/tollgate.toml" <<TOML
[server]
listen = "127.0.0.1:$gw"
admin_listen = "127.0.0.1:$adm"
admin_token_env = "ADMIN_TOKEN"
grace_period_s = 1
upgrade_sock = "$work/state/upgrade.sock"
[store]
path = "$work/state/tollgate.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://$mock"
api_key_env = "MOCK_KEY"
[[routes]]
prefix = "gpt-"
provider = "openai"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[[projects]]
id = "p1"
keys = ["tg_sandbox_check_key_0001"]
budget = { limit_usd = 5.0, period = "month" }
TOML
export MOCK_KEY=x ADMIN_TOKEN=sandbox-admin RUST_LOG=info

run() {  # run LOGNAME ARGS...: tollgate as nobody, under MDWE, traced
  local name=$1; shift
  setpriv --reuid=65534 --regid=65534 --clear-groups "$py" "$work/mdwe.py" \
    strace -f -qq -o "$work/state/$name.trace" "$dir/tollgate" serve --config "$work/tollgate.toml" "$@" \
    2> "$work/$name.log" &
  pids+=($!)
}
pid_of() { pgrep -f "^$dir/tollgate serve --config $work/tollgate.toml$1\$"; }
fail() { echo "check-sandbox.sh: $*" >&2; for l in "$work"/*.log; do echo "== $l" >&2; tail -20 "$l" >&2; done; exit 1; }
req() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: tg_sandbox_check_key_0001' \
    -H 'content-type: application/json' -d "$1" "http://127.0.0.1:$gw/v1/chat/completions")
  [ "$code" = "${2:-200}" ] || fail "request $1: HTTP $code"
}
admin() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $ADMIN_TOKEN" "$@")
  [ "$code" = 200 ] || fail "admin $*: HTTP $code"
}

run old
for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$gw/healthz" && break; sleep 0.05; done
old=$(pid_of "") || fail "the gateway did not start"
[ "$(stat -c %u "/proc/$old")" = 65534 ] || fail "not running as nobody"
req '{"model":"gpt-4o-mini","messages":[],"max_tokens":3}'
req '{"model":"gpt-4o-mini","messages":[],"max_tokens":3,"stream":true}'
req '{"model":"nope","messages":[]}' 404
kill -HUP "$old"
admin -X POST "http://127.0.0.1:$adm/admin/reload"
admin "http://127.0.0.1:$adm/metrics"
admin "http://127.0.0.1:$adm/admin/decisions?limit=5"

run new --upgrade
for _ in $(seq 200); do [ -S "$work/state/upgrade.sock" ] && break; sleep 0.05; done
[ -S "$work/state/upgrade.sock" ] || fail "the successor did not wait for the sockets"
kill -QUIT "$old"
for _ in $(seq 300); do kill -0 "$old" 2>/dev/null || break; sleep 0.05; done
kill -0 "$old" 2>/dev/null && fail "the old process did not exit after SIGQUIT"
req '{"model":"gpt-4o-mini","messages":[],"max_tokens":3}'
new=$(pid_of " --upgrade") || fail "the successor is not running"
kill -TERM "$new"
for _ in $(seq 300); do kill -0 "$new" 2>/dev/null || break; sleep 0.05; done
kill -0 "$new" 2>/dev/null && fail "the successor did not stop on SIGTERM"
grep -q "tollgate stopped" "$work/new.log" || fail "the successor did not stop cleanly"
sleep 0.2  # let strace write its last lines

unit=systemd/tollgate.service
"$py" - "$unit" "$work"/state/old.trace "$work"/state/new.trace <<'PY'
import re, subprocess, sys
unit, traces = sys.argv[1], sys.argv[2:]
groups, cur = {}, None
for line in subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True).stdout.splitlines():
    s = line.strip()
    if line.startswith("@"):
        cur = s; groups[cur] = []
    elif s and not s.startswith("#") and cur:
        groups[cur].append(s)
def expand(items, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for x in items:
        if x.startswith("@"):
            if x not in seen:
                seen.add(x); out |= expand(groups.get(x, []), seen)
        else:
            out.add(x)
    return out
allow, deny = set(), set()
for line in open(unit):
    if line.startswith("SystemCallFilter="):
        v = line.split("=", 1)[1].split()
        if v and v[0].startswith("~"):
            deny |= expand([v[0][1:]] + v[1:])
        else:
            allow |= expand(v)
allow |= expand(["@default"])  # always permitted by systemd
used = set()
for t in traces:
    for line in open(t):
        m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
        if m:
            used.add(m.group(1))
bad = sorted(s for s in used if s not in allow or s in deny)
print(f"system calls used: {len(used)}; outside the unit's SystemCallFilter: {bad or 'none'}")
sys.exit(1 if bad or not used else 0)
PY
echo "check-sandbox.sh: OK (nobody, MDWE, SystemCallFilter)"
