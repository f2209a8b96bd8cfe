#!/usr/bin/env bash
# Check systemd/tollgate.service the way CI does:
#   1. `systemd-analyze verify` on a copy whose ExecStart points at the built binary (verify
#      insists that the binary exists). Any output at all counts as a failure: systemd reports
#      unknown keys and bad values as warnings and still exits 0.
#   2. `systemd-analyze security --offline=yes`: the unit's exposure score must stay at or
#      below MAX_EXPOSURE (default 2.0; the unit scores 1.1 with systemd 252).
# Usage: systemd/verify.sh [path/to/tollgate]   (default: target/release, else target/debug)
# Needs systemd-analyze (Debian: apt-get install systemd); no running systemd is required.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=systemd/tollgate.service
bin=${1:-}
if [ -z "$bin" ]; then
  for b in target/release/tollgate target/debug/tollgate; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "verify.sh: no tollgate binary; run cargo build first or pass its path" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -q '^ExecStart=/usr/local/bin/tollgate ' "$unit" || { echo "verify.sh: $unit: unexpected ExecStart" >&2; exit 1; }
sed "s#^ExecStart=/usr/local/bin/tollgate #ExecStart=$bin #" "$unit" > "$tmp/tollgate.service"

status=0
if ! out=$(systemd-analyze verify "$tmp/tollgate.service" 2>&1) || [ -n "$out" ]; then
  echo "systemd-analyze verify: problems in $unit:" >&2
  echo "$out" >&2
  status=1
else
  echo "systemd-analyze verify: OK"
fi

max=${MAX_EXPOSURE:-2.0}
if sec=$(systemd-analyze security --offline=yes "$tmp/tollgate.service" 2>&1); then
  score=$(echo "$sec" | sed -n 's/.*Overall exposure level for tollgate.service: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "systemd-analyze security: no score in its output:" >&2; echo "$sec" >&2; status=1
  elif awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
    echo "systemd-analyze security: exposure $score is above $max:" >&2
    echo "$sec" | grep -v '^✓' >&2
    status=1
  else
    echo "systemd-analyze security: exposure $score (at most $max): OK"
  fi
else
  echo "systemd-analyze security failed:" >&2; echo "$sec" >&2; status=1
fi
exit $status
