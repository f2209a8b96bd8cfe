#!/usr/bin/env python3
"""How fast the reports answer from a big store: `GET /admin/spend` and `GET /admin/overview`
with millions of decision records in Tollgate's SQLite ledger (issue 16: with 10 million
records, a month's spend by project and model by day answers in under 100 ms at the median).

What one run does (loopback only, bounded, everything started is stopped):
  1. Tollgate (release build) is started once on an empty store, so that it writes its own
     schema, and stopped.
  2. N decision records (default 10,000,000) are written into that file with one SQL statement
     (a recursive CTE; deterministic), spread evenly over November 2026: 20 projects in 5
     teams, 4 users per project each with their own key, 6 models on 2 providers, a third of
     the records tagged (env=prod or env=ci), 95% allowed, 5% blocked for one of 3 reasons,
     1% of the allowed ones errors (status 502), costs of 1,000 to 200,000 nano-dollars. The
     rollups are then dropped and the file marked schema v6, as a store written by an older
     Tollgate would be: the next start builds the rollups from the records (the migration a
     user upgrading with a big store goes through), and its time is reported.
  3. Tollgate is started on that file (its open time = the migration), and each report is
     asked Q times (default 21) over HTTP on one keep-alive connection after 3 unmeasured
     warm-up asks; the median and the maximum are printed. The month-by-project-and-model-by-
     day report is checked against the records: its totals must equal SUM(cost_nanos) and
     COUNT(*) over November read with sqlite3, to the nano-dollar.

Usage: load-tests/reports.py [--records N] [--queries Q] [--bin-dir DIR] [--smoke]
  --smoke: 100,000 records, 5 queries, the debug build: CI runs it so the script cannot rot
  (no timing is asserted; the totals are).
"""
import argparse
import http.client
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REL, ROOT, free_port, wait_port  # noqa: E402

ADMIN_TOKEN = "reports-bench-admin-token"
NOV = 1_793_491_200_000  # 2026-11-01T00:00:00Z in unix ms
DEC = 1_796_083_200_000  # 2026-12-01T00:00:00Z
PROJECTS = 20
TEAMS = 5
USERS = 4
MODELS = [("gpt-4o-mini", "openai"), ("gpt-4o", "openai"), ("gpt-4.1", "openai"),
          ("claude-3-5-haiku-latest", "anthropic"), ("claude-sonnet-4", "anthropic"),
          ("claude-opus-4", "anthropic")]
REASONS = ["budget_exhausted", "secret_detected", "model_not_allowed"]


def config(port, admin_port, store):
    teams = "".join(f'[[teams]]\nid = "team-{t}"\n' for t in range(TEAMS))
    projects = ""
    for p in range(PROJECTS):
        keys = ", ".join(f'{{ key = "tg_reports_key_{p:02}_{u}_000000", name = "key-{u}" }}'
                         for u in range(USERS))
        projects += (f'[[projects]]\nid = "proj-{p:02}"\nteam = "team-{p % TEAMS}"\n'
                     f'keys = [{keys}]\nbudget = {{ limit_usd = 100000.0, period = "month" }}\n')
    return f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token_env = "REPORTS_ADMIN_TOKEN"
threads = 1
[store]
path = "{store}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9"
api_key_env = "REPORTS_PROVIDER_KEY"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key_env = "REPORTS_PROVIDER_KEY"
[[routes]]
prefix = "gpt-"
provider = "openai"
[[routes]]
prefix = "claude-"
provider = "anthropic"
{teams}{projects}"""


def case(values, expr):
    """A SQL CASE mapping expr = 0.. to the quoted values."""
    arms = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"CASE {expr} {arms} END"


def fill_sql(n):
    """One INSERT writing n deterministic records spread over November (see the docstring)."""
    step = (DEC - NOV) // n
    models = case([m for m, _ in MODELS], "m")
    providers = case([p for _, p in MODELS], "m")
    reasons = case(REASONS, "h % 3")
    return f"""
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < {n - 1}),
r AS (SELECT i, {NOV} + i * {step} AS t, (i * 2654435761) % 4294967296 AS h FROM c),
s AS (SELECT i, t, h, h % {PROJECTS} AS p, (h / 32) % {USERS} AS u, (h / 256) % {len(MODELS)} AS m,
             (h / 4096) % 100 AS d, (h / 524288) % 3 AS g FROM r)
INSERT INTO decisions(id, time_ms, time, project, key_id, endpoint, model, provider, decision,
                      reason, status, prompt_tokens, completion_tokens, usage_source, cost_nanos,
                      cost_usd, latency_ms, stream, attempts, providers_tried, overrun_nanos,
                      team, key_name, user, tags, cache, saved_nanos)
SELECT printf('req-%010d', i), t, strftime('%Y-%m-%dT%H:%M:%fZ', t / 1000.0, 'unixepoch'),
       printf('proj-%02d', p), printf('k%02d%d', p, u), 'chat', {models}, {providers},
       CASE WHEN d < 95 THEN 'allow' ELSE 'block' END,
       CASE WHEN d < 95 THEN 'ok' ELSE {reasons} END,
       CASE WHEN d >= 95 THEN 403 WHEN d = 94 THEN 502 ELSE 200 END,
       CASE WHEN d < 94 THEN 100 + h % 2000 ELSE 0 END,
       CASE WHEN d < 94 THEN 10 + h % 500 ELSE 0 END,
       CASE WHEN d < 94 THEN 'reported' ELSE 'none' END,
       CASE WHEN d < 94 THEN 1000 + h % 199001 ELSE 0 END,
       CASE WHEN d < 94 THEN (1000 + h % 199001) / 1e9 ELSE 0.0 END,
       1.5, h % 2, CASE WHEN d < 95 THEN 1 ELSE 0 END, NULL, 0,
       printf('team-%d', p % {TEAMS}), printf('key-%d', u), printf('user-%02d-%d', p, u),
       CASE g WHEN 0 THEN '{{"env":"prod"}}' WHEN 1 THEN '{{"env":"ci"}}' ELSE NULL END,
       NULL, 0
FROM s;
"""


class Admin:
    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path):
        t0 = time.perf_counter()
        self.c.request("GET", path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        r = self.c.getresponse()
        body = r.read()
        ms = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            sys.exit(f"GET {path}: {r.status} {body[:300]!r}")
        return ms, body


def start(bin_dir, cfg_path, env, log):
    p = subprocess.Popen([os.path.join(bin_dir, "tollgate"), "serve", "--config", cfg_path],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=21)
    ap.add_argument("--bin-dir", default=REL)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.records, a.queries = 100_000, 5
        if a.bin_dir == REL:
            a.bin_dir = os.path.join(os.path.dirname(REL), "debug")
    tmp = tempfile.mkdtemp(prefix="tollgate-reports-")
    store = os.path.join(tmp, "ledger.db")
    port, admin_port = free_port(), free_port()
    cfg_path = os.path.join(tmp, "tollgate.toml")
    with open(cfg_path, "w") as f:
        f.write(config(port, admin_port, store))
    env = dict(os.environ, REPORTS_ADMIN_TOKEN=ADMIN_TOKEN, REPORTS_PROVIDER_KEY="sk-unused",
               RUST_LOG="warn")
    log = open(os.path.join(tmp, "tollgate.log"), "w")

    # 1. Tollgate writes its schema.
    p = start(a.bin_dir, cfg_path, env, log)
    wait_port(admin_port, p, "tollgate")
    stop(p)

    # 2. The records, then the file made to look like an older store (no rollups, v6).
    t0 = time.perf_counter()
    db = sqlite3.connect(store)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -262144")
    db.executescript("BEGIN;" + fill_sql(a.records) + "COMMIT;")
    db.executescript("DROP TABLE rollups; DROP TABLE rollups_day; DROP TABLE rollups_coarse; "
                     "DROP TABLE rollups_coarse_day; PRAGMA user_version = 6;")
    want_nanos, want_requests = db.execute(
        "SELECT sum(cost_nanos), count(*) FROM decisions WHERE time_ms >= ? AND time_ms < ?",
        (NOV, DEC)).fetchone()
    db.close()
    fill_s = time.perf_counter() - t0
    size_mb = os.path.getsize(store) / 2**20
    print(f"store: {a.records:,} decision records written in {fill_s:.1f} s, file {size_mb:,.0f} MiB")

    # 3. Tollgate migrates (builds the rollups), then the reports.
    t0 = time.perf_counter()
    p = start(a.bin_dir, cfg_path, env, log)
    wait_port(admin_port, p, "tollgate", within=1800)
    open_s = time.perf_counter() - t0
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        rollup_rows = ", ".join(
            f"{t} {db.execute(f'SELECT count(*) FROM {t}').fetchone()[0]:,}"
            for t in ("rollups", "rollups_day", "rollups_coarse", "rollups_coarse_day"))
        db.close()
        print(f"start with migration to v7 (rollups built from the records): {open_s:.1f} s, "
              f"rows: {rollup_rows}")
        admin = Admin(admin_port)
        month = "from=2026-11-01&to=2026-12-01"
        reports = [
            ("month by project and model by day", f"/admin/spend?{month}&group_by=project,model&bucket=day"),
            ("month by project", f"/admin/spend?{month}&group_by=project"),
            ("month by model by hour", f"/admin/spend?{month}&group_by=model&bucket=hour"),
            ("month by user, one project", f"/admin/spend?{month}&group_by=user&project=proj-07"),
            ("month by tag env by day", f"/admin/spend?{month}&group_by=tag:env&bucket=day"),
            ("month by project and model by day, CSV", f"/admin/spend?{month}&group_by=project,model&bucket=day&format=csv"),
            ("decisions, newest 50", "/admin/decisions?limit=50"),
            ("overview (the console's first view)", "/admin/overview"),
        ]
        print(f"\n{'report':<42} {'median ms':>10} {'max ms':>8} {'rows':>7}")
        results = {}
        for name, path in reports:
            for _ in range(3):
                admin.get(path)
            times = []
            body = b""
            for _ in range(a.queries):
                ms, body = admin.get(path)
                times.append(ms)
            rows = "-"
            if "format=csv" in path:
                rows = body.count(b"\n") - 1
            elif path.startswith("/admin/spend"):
                doc = json.loads(body, parse_float=Decimal)
                rows = len(doc["rows"])
                results[name] = doc
            print(f"{name:<42} {statistics.median(times):>10.1f} {max(times):>8.1f} {rows:>7}")
        doc = results["month by project and model by day"]
        got_nanos = sum(int(r["cost_usd"] * 1_000_000_000) for r in doc["rows"])
        got_requests = sum(r["requests"] for r in doc["rows"])
        totals = (doc["totals"]["requests"], int(doc["totals"]["cost_usd"] * 1_000_000_000))
        if totals != (got_requests, got_nanos):
            sys.exit(f"FAIL: the report's totals {totals} are not the sum of its rows")
        print(f"\ntotals: records {want_requests:,} requests, {want_nanos:,} nano-dollars; "
              f"report {got_requests:,} requests, {got_nanos:,} nano-dollars")
        if (got_requests, got_nanos) != (want_requests, want_nanos):
            sys.exit("FAIL: the report's totals differ from the records")
    finally:
        stop(p)
    print(f"\nreproduce: python3 load-tests/reports.py --records {a.records} --queries {a.queries}")


if __name__ == "__main__":
    main()
