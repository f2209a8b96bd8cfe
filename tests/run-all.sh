#!/usr/bin/env bash
# Tollgate's whole test suite on a fresh Debian machine: installs what the build and the tests
# need (apt: cmake for pingora's zlib-ng, redis-server for the fleet store's tests and fleet.py,
# sqlite3 for looking into the store,
# openssl for the TLS tests, systemd for `systemd-analyze`, prometheus for `promtool`,
# python3-venv for the SDK tests, nodejs and npm for the Node SDK tests, chromium and
# chromium-driver for the console's browser test,
# wrk and nginx-light for the load-test smoke run; PyPI: the official openai and anthropic
# SDKs and selenium; npm: the official openai and @anthropic-ai/sdk packages, pinned by
# tests/node/package-lock.json), then runs the Rust unit and integration tests, the SDK
# end-to-end tests (Python, then Node), the console in headless chromium and a few seconds of the load-test harnesses, fleet mode on
# Redis included (so they cannot rot; no timing is asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "== installing with apt: ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust 1.85 or newer with rustup (https://rustup.rs), then re-run" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt \
  -r tests/console/requirements.txt
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

echo "== cargo test"
cargo build --bins --example bare_pingora
cargo test --all-targets

echo "== README's commands, as written (the demo and serve; release build)"
tests/readme-commands.sh

echo "== alert rules (promtool check and unit tests)"
promtool check rules conf/alerts.yml
promtool test rules conf/alerts.test.yml

echo "== systemd unit (systemd-analyze verify and security score)"
systemd/verify.sh target/debug/tollgate

echo "== SDK end-to-end tests (official openai and anthropic Python SDKs)"
.venv/bin/python -m pytest -q tests/sdk

echo "== SDK end-to-end tests (official openai and @anthropic-ai/sdk npm packages, node --test)"
(cd tests/node && node --test *.test.mjs)

echo "== the console in a real browser (headless Debian chromium + chromedriver, Selenium)"
for exe in /usr/bin/chromium /usr/bin/chromedriver; do
  if [ ! -x "$exe" ]; then
    echo "$exe is missing: the console test needs Debian's chromium and chromium-driver" >&2
    exit 1
  fi
done
.venv/bin/python -m pytest -q tests/console

echo "== real clients: Claude Code, Codex CLI and the Node and Python SDKs through Tollgate (pinned in tests/agents)"
tests/agents/run.sh

echo "== load-test harness smoke run (debug build, a few seconds, no peers)"
python3 load-tests/bench.py --smoke --bin-dir target/debug
python3 load-tests/fleet.py --smoke --bin-dir target/debug
python3 load-tests/agents.py --smoke --bin-dir target/debug
python3 load-tests/reports.py --smoke
