"""The console in a real browser (headless Debian chromium through chromedriver): sign in, every
view against the admin API and the traffic sent in the test, filters, the live tail, the kill
switch through the UI, the read-only viewer; no off-origin request, at most 5 requests for the
first view, no CSP violation, the token nowhere but sessionStorage. Screenshots of each view go to
target/console-screenshots/. No sleep stands in for synchronisation: WebDriverWait polls the
condition that proves each step."""
import json
import os
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import (ADMIN_TOKEN, KEY_BATCH, KEY_CHECKOUT, SCREENSHOTS, VIEWER_TOKEN)

# An offset with minutes, so a page that showed UTC (or the machine's zone) could not pass.
TZ = "Asia/Kolkata"
WAIT = 20

# Runs before any script of every document: records CSP violations where the test can read them.
CSP_PROBE = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber);
});
"""


def wait(d, cond, what, timeout=WAIT):
    # A view re-rendering between finding an element and reading it is a retry, not a failure.
    return WebDriverWait(d, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda d: cond(d), message=what)


def js(d, script, *args):
    return d.execute_script(script, *args)


def screenshot(d, name):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    w, h = js(d, "return [window.innerWidth, window.innerHeight]")
    path = os.path.join(SCREENSHOTS, f"{name}-{w}x{h}.png")
    assert d.save_screenshot(path), path


def goto(d, hash_):
    """Show a view and wait until it has read what it shows (the page marks it aria-busy until then)."""
    js(d, "location.hash = arguments[0]", hash_)
    section = "v-" + hash_.lstrip("#").split("?")[0]
    wait(d, lambda d: js(d, "const s = document.getElementById(arguments[0]); return !s.hidden && !s.hasAttribute('aria-busy')",
                         section), f"the {hash_} view")


class Browser:
    """One chromium session on the console, with everything it sent and logged so far."""

    def __init__(self, driver, stack):
        self.d = driver
        self.origin = stack.admin
        self.requests = []
        self.console = []
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_PROBE})
        driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": TZ})

    def drain(self):
        for entry in self.d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            # Requests made for the console's documents (not the browser's own start page).
            if msg["method"] == "Network.requestWillBeSent" and \
                    msg["params"].get("documentURL", "").startswith(self.origin + "/"):
                self.requests.append(msg["params"]["request"]["url"])
        self.console.extend(self.d.get_log("browser"))

    def assert_clean(self):
        """No request left the origin, no CSP violation, the token in no log line, no URL."""
        self.drain()
        off = [u for u in self.requests if not (u.startswith(self.origin + "/") or u.startswith(("data:", "blob:")))]
        assert not off, f"requests off the origin {self.origin}: {off}"
        csp = [e["message"] for e in self.console if "Content Security Policy" in e["message"]]
        assert not csp, f"CSP violations in the console: {csp}"
        probe = js(self.d, "return window.__csp || []")
        assert probe == [], f"securitypolicyviolation events: {probe}"
        for text in [e["message"] for e in self.console] + self.requests + [self.d.current_url]:
            assert ADMIN_TOKEN not in text and VIEWER_TOKEN not in text, f"the token leaked into {text!r}"

    def sign_in(self, token):
        d = self.d
        wait(d, lambda d: d.find_element(By.ID, "token").is_displayed(), "the login form")
        field = d.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        d.find_element(By.ID, "login-btn").click()

    def signed_in(self, view="overview"):
        """Signed in, and `view` shown with what it read."""
        wait(self.d, lambda d: d.find_element(By.ID, "shell").is_displayed()
             and js(d, "const s = document.getElementById(arguments[0]); return !s.hidden && !s.hasAttribute('aria-busy')",
                    "v-" + view), f"the {view} view after signing in")
        if view == "overview":
            assert len(self.d.find_elements(By.CSS_SELECTOR, "#ov-stats .stat")) == 4


@pytest.fixture(scope="module")
def admin(stack, traffic, browser_factory):
    """Signed in with the admin token at 1280x800; the first view's requests kept aside."""
    b = Browser(browser_factory(1280, 800), stack)
    b.d.get(stack.admin + "/")
    b.sign_in(ADMIN_TOKEN)
    b.signed_in()
    b.first_view = js(b.d, """
        return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
            .map(e => e.name)""")
    yield b
    b.assert_clean()


def test_signing_in_shows_the_overview_in_at_most_five_requests(admin, stack, traffic):
    d = admin.d
    paths = [u[len(stack.admin):] for u in admin.first_view if u.startswith(stack.admin)]
    assert len(admin.first_view) <= 5, f"first view made {len(admin.first_view)} requests: {admin.first_view}"
    assert len(paths) == len(admin.first_view), f"off-origin: {admin.first_view}"
    assert {"/", "/console/app.js", "/console/app.css", "/admin/overview"} <= set(paths), paths
    assert "#" not in d.current_url or "token" not in d.current_url
    # The token: in this tab's sessionStorage, nowhere in the document.
    assert js(d, "return Object.values(sessionStorage)") == [ADMIN_TOKEN]
    assert ADMIN_TOKEN not in d.page_source
    assert js(d, "return document.getElementById('token').value") == ""
    ov = stack.admin_get("/admin/overview").json()
    cards = {c.find_element(By.TAG_NAME, "h3").text.lower(): c for c in d.find_elements(By.CSS_SELECTOR, "#ov-stats .stat")}
    n = len(traffic["allowed"]) + len(traffic["blocked"])
    assert ov["totals"]["day"]["requests"] == n
    assert cards["requests"].find_element(By.CSS_SELECTOR, "b").text == str(n)
    assert cards["blocked"].find_element(By.CSS_SELECTOR, "b").text == str(len(traffic["blocked"]))
    spend = cards["spend"].find_element(By.CSS_SELECTOR, "b span.usd")
    assert spend.get_attribute("title") == usd_full(ov["totals"]["day"]["cost_usd"])
    assert spend.text.startswith("$0.0"), spend.text
    # The 24 hourly buckets: the requests chart holds exactly the traffic.
    req = d.find_element(By.CSS_SELECTOR, "#ov-req-chart svg")
    assert req.get_attribute("data-buckets") == "24"
    allowed = sum(float(r.get_attribute("data-value")) for r in req.find_elements(By.CSS_SELECTOR, "g[data-series=allowed] rect"))
    blocked = sum(float(r.get_attribute("data-value")) for r in req.find_elements(By.CSS_SELECTOR, "g[data-series=blocked] rect"))
    assert (allowed, blocked) == (len(traffic["allowed"]), len(traffic["blocked"]))
    states = {r.get_attribute("data-provider"): r.get_attribute("data-state")
              for r in d.find_elements(By.CSS_SELECTOR, "#ov-providers tr[data-provider]")}
    assert states == {"openai": "closed", "anthropic": "closed"}
    assert not d.find_element(By.ID, "ov-fleet-card").is_displayed(), "fleet is off"
    assert d.find_element(By.ID, "role").text == "admin"
    screenshot(d, "overview")
    admin.assert_clean()


def usd_full(v):
    s = f"{abs(v):.9f}".rstrip("0")
    s = s + "00" if s.endswith(".") else s + "0" if len(s.split(".")[1]) == 1 else s
    return ("-$" if v < 0 else "$") + s


def test_projects_show_each_budget_window_the_projection_and_the_frozen_state(admin, stack, traffic):
    d = admin.d
    goto(d, "#projects")
    api = {p["id"]: p for p in stack.admin_get("/admin/projects").json()["projects"]}
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.project")) == len(api), "every project")
    for pid, p in api.items():
        card = d.find_element(By.CSS_SELECTOR, f"article.project[data-project='{pid}']")
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("data-period") for b in bars] == [w["period"] for w in p["budgets"]], pid
        for b, w in zip(bars, p["budgets"]):
            assert float(b.get_attribute("data-spent")) == w["spent_usd"]
            assert float(b.get_attribute("data-limit")) == w["limit_usd"]
            fill = b.find_element(By.CSS_SELECTOR, ".spent")
            # The drawn width is the share spent (CSSOM, which the CSP allows).
            share = float(fill.value_of_css_property("width").rstrip("px")) / b.size["width"]
            assert abs(share - min(1.0, w["spent_usd"] / w["limit_usd"])) < 0.02, (pid, share, w)
        proj = card.find_element(By.CSS_SELECTOR, ".projection span.usd")
        # The projection moves with the clock (the pace since the month began): near the API's.
        shown = float(proj.get_attribute("title").lstrip("$"))
        assert abs(shown - p["projection_usd"]) <= 0.01 * p["projection_usd"] + 1e-9, (shown, p)
        # "over budget" exactly when the API's projection passes the month's limit (which of the
        # two it is depends on the day of the month: the pace since it began).
        month = next((w for w in p["budgets"] if w["period"] == "month"), None)
        over = month is not None and p["projection_usd"] > month["limit_usd"]
        assert ("over budget" in card.find_element(By.CSS_SELECTOR, ".projection").text) == over, (pid, p)
        assert bool(card.find_elements(By.CSS_SELECTOR, ".bar[data-period=month] .marker.over")) == over, (pid, p)
        assert card.get_attribute("data-frozen") == "false"
        btn = card.find_element(By.CSS_SELECTOR, "button[data-action=freeze]")
        assert btn.is_enabled()
    batch = d.find_element(By.CSS_SELECTOR, "article.project[data-project='batch']")
    assert "No budget" in batch.text
    # An operator lowers checkout-bot's month below half of what it spent this month: the
    # projection is past the limit on any day of the month, and the console says so.
    spent = next(w for w in api["checkout-bot"]["budgets"] if w["period"] == "month")["spent_usd"]
    assert spent > 0, api["checkout-bot"]
    lowered = f"{spent / 2:.9f}"
    with stack.config_changed('{ limit_usd = 0.05, period = "month" }', '{ limit_usd = %s, period = "month" }' % lowered):
        goto(d, "#overview")
        goto(d, "#projects")
        p = next(p for p in stack.admin_get("/admin/projects").json()["projects"] if p["id"] == "checkout-bot")
        month = next(w for w in p["budgets"] if w["period"] == "month")
        assert month["limit_usd"] == float(lowered) and p["projection_usd"] > month["limit_usd"], p
        checkout = d.find_element(By.CSS_SELECTOR, "article.project[data-project='checkout-bot']")
        assert "over budget" in checkout.find_element(By.CSS_SELECTOR, ".projection").text
        assert checkout.find_elements(By.CSS_SELECTOR, ".bar[data-period=month] .marker.over")
        bar = checkout.find_element(By.CSS_SELECTOR, ".bar[data-period=month]")
        share = float(bar.find_element(By.CSS_SELECTOR, ".spent").value_of_css_property("width").rstrip("px")) / bar.size["width"]
        assert abs(share - 1.0) < 0.02, share
        screenshot(d, "projects")
    admin.assert_clean()


def chart_series(d):
    return js(d, """
        const out = {};
        for (const g of document.querySelectorAll('#spend-chart svg g.series')) {
          out[g.dataset.series] = [...g.querySelectorAll('rect')].map(r => [r.dataset.bucket, Number(r.dataset.value)]);
        }
        return out""")


def test_the_spend_chart_draws_the_traffic_by_project_and_by_model(admin, stack, traffic):
    d = admin.d
    goto(d, "#spend")
    wait(d, lambda d: chart_series(d), "the spend chart")
    svg = d.find_element(By.CSS_SELECTOR, "#spend-chart svg")
    assert svg.get_attribute("data-buckets") == "24", "last 24 hours, one bar per hour"
    records = stack.admin_get("/admin/decisions?limit=1000").json()["decisions"]

    def expected(field):
        sums = {}
        for r in records:
            if r["cost_usd"]:
                sums[r[field]] = sums.get(r[field], 0) + r["cost_usd"]
        return sums

    def check(field):
        want = expected(field)
        got = chart_series(d)
        assert set(got) == set(want), (field, got, want)
        for k, points in got.items():
            assert abs(sum(v for _, v in points) - want[k]) < 1e-9, (k, points, want[k])
            for bucket, _ in points:
                hour = datetime.strptime(bucket, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                assert (datetime.now(timezone.utc) - hour).total_seconds() < 2 * 3600, bucket
        legend = [li.get_attribute("data-series") for li in d.find_elements(By.CSS_SELECTOR, "#spend-legend li[data-series]")]
        assert legend == sorted(want, key=lambda k: -want[k]), "legend: the biggest first"

    check("project")
    screenshot(d, "spend")
    Select(d.find_element(By.ID, "spend-group")).select_by_value("model")
    wait(d, lambda d: set(chart_series(d)) == set(expected("model")), "the chart by model")
    check("model")
    assert set(expected("model")) == {"gpt-4o-mini", "gpt-4o", "claude-sonnet-4"}
    # Day buckets over 7 days: 7 or 8 columns (whole UTC days), the same totals.
    Select(d.find_element(By.ID, "spend-bucket")).select_by_value("day")
    Select(d.find_element(By.ID, "spend-range")).select_by_value("7d")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "#spend-chart svg").get_attribute("data-buckets") in ("7", "8"),
         "the 7-day chart")
    got = chart_series(d)
    assert abs(sum(v for pts in got.values() for _, v in pts) - sum(expected("model").values())) < 1e-9
    Select(d.find_element(By.ID, "spend-group")).select_by_value("project")
    Select(d.find_element(By.ID, "spend-bucket")).select_by_value("hour")
    Select(d.find_element(By.ID, "spend-range")).select_by_value("24h")
    wait(d, lambda d: set(chart_series(d)) == set(expected("project")), "back to projects")
    admin.assert_clean()


def test_blocks_show_the_top_reasons_and_the_blocked_projects(admin):
    d = admin.d
    goto(d, "#blocks")

    def rows(sel):
        return {r.get_attribute("data-key"): int(r.get_attribute("data-value"))
                for r in d.find_elements(By.CSS_SELECTOR, sel + " tr[data-key]")}

    wait(d, lambda d: rows("#blocks-projects"), "blocked per project")
    assert rows("#blocks-reasons") == {"model_not_allowed": 2, "secret_detected": 1}
    assert rows("#blocks-projects") == {"search": 2, "checkout-bot": 1}
    first = d.find_element(By.CSS_SELECTOR, "#blocks-reasons tr[data-key] a")
    assert first.text == "model_not_allowed", "the most frequent first"
    screenshot(d, "blocks")
    first.click()
    wait(d, lambda d: d.find_element(By.ID, "v-decisions").is_displayed() and row_ids(d), "the decisions of that reason")
    wait(d, lambda d: {r["reason"] for r in row_data(d)} == {"model_not_allowed"}, "only that reason")
    assert Select(d.find_element(By.ID, "f-decision")).first_selected_option.get_attribute("value") == "block"
    admin.assert_clean()


def row_ids(d):
    return [tr.get_attribute("data-id") for tr in d.find_elements(By.CSS_SELECTOR, "#dec-rows tr")]


def row_data(d):
    return js(d, "return [...document.querySelectorAll('#dec-rows tr')].map(tr => Object.assign({}, tr.dataset))")


def apply_filters(d, **f):
    for name in ["reason", "model", "user", "tag"]:
        el = d.find_element(By.ID, "f-" + name)
        el.clear()
        if f.get(name):
            el.send_keys(f[name])
    Select(d.find_element(By.ID, "f-project")).select_by_value(f.get("project", ""))
    Select(d.find_element(By.ID, "f-decision")).select_by_value(f.get("decision", ""))
    for name in ["from", "to"]:
        js(d, "document.getElementById(arguments[0]).value = arguments[1]", "f-" + name, f.get(name, ""))
    d.find_element(By.CSS_SELECTOR, "#dec-form button[type=submit]").click()


def test_the_decision_log_filters_like_the_api(admin, stack, traffic):
    d = admin.d
    goto(d, "#decisions")

    def api_ids(q):
        return [r["id"] for r in stack.admin_get("/admin/decisions?limit=50&" + q).json()["decisions"]]

    def expect(q, **f):
        apply_filters(d, **f)
        want = api_ids(q)
        wait(d, lambda d: row_ids(d) == want, f"rows for {f}: {want}")
        return want

    everything = expect("")
    assert set(traffic["allowed"] + traffic["blocked"]) <= set(everything)
    blocked = expect("decision=block&project=search", decision="block", project="search")
    assert len(blocked) == 2 and set(blocked) <= set(traffic["blocked"])
    assert all(r["decision"] == "block" and r["project"] == "search" for r in row_data(d))
    assert "block" in d.find_element(By.CSS_SELECTOR, "#dec-rows tr").text
    assert len(expect("tag=env%3Aprod", tag="env:prod")) == 4
    alice = expect("user=alice&model=gpt-4o", user="alice", model="gpt-4o")
    assert len(alice) == 1 and all(r["user"] == "alice" for r in row_data(d))
    assert len(expect("reason=secret_detected", reason="secret_detected")) == 1
    # A time range (the inputs are in the viewer's zone): none in 2020, all since then.
    assert expect("from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
                  **{"from": "2020-01-01T05:30:00", "to": "2020-01-02T05:30:00"}) == []
    assert "No record matches" in d.find_element(By.ID, "dec-summary").text
    expect("from=2020-01-01T00:00:00Z", **{"from": "2020-01-01T05:30:00"})
    # Times: the viewer's zone on the page, UTC on hover.
    rec = stack.admin_get("/admin/decisions?limit=1").json()["decisions"][0]
    t = d.find_element(By.CSS_SELECTOR, f"#dec-rows tr[data-id='{rec['id']}'] time")
    at = datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert t.get_attribute("title") == at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert at.astimezone(ZoneInfo(TZ)).strftime("%H:%M:%S") in t.text, (t.text, rec["time"])
    expect("")
    screenshot(d, "decisions")
    admin.assert_clean()


def test_the_live_tail_shows_a_new_request_at_the_top(admin, stack):
    d = admin.d
    goto(d, "#decisions")
    apply_filters(d)
    wait(d, lambda d: row_ids(d), "the log")
    d.find_element(By.ID, "live").click()
    wait(d, lambda d: "live:" in d.find_element(By.ID, "live-status").text, "the tail connected")
    assert d.find_element(By.ID, "live").get_attribute("aria-pressed") == "true"
    r = stack.chat(KEY_CHECKOUT, "gpt-4o-mini", user="dave", tags="env=live", tokens=3)
    assert r.status == 200, r.body
    rid = r.headers["x-tollgate-request-id"]
    wait(d, lambda d: row_ids(d)[:1] == [rid], "the new request at the top")
    row = row_data(d)[0]
    assert row["project"] == "checkout-bot" and row["user"] == "dave" and row["decision"] == "allow"
    # The filters hold for the tail: the project on the server's stream, the rest in the page.
    # batch's request and another user's do not show; checkout-bot's by dave does.
    apply_filters(d, project="checkout-bot", user="dave")
    wait(d, lambda d: "live:" in d.find_element(By.ID, "live-status").text
         and all(r["project"] == "checkout-bot" and r["user"] == "dave" for r in row_data(d)), "the filtered tail")
    others = [stack.chat(KEY_BATCH, "gpt-4o-mini", user="dave", tokens=2),
              stack.chat(KEY_CHECKOUT, "gpt-4o-mini", user="erin", tokens=2)]
    mine = stack.chat(KEY_CHECKOUT, "gpt-4o-mini", user="dave", tokens=2)
    assert all(r.status == 200 for r in others + [mine])
    wait(d, lambda d: row_ids(d)[:1] == [mine.headers["x-tollgate-request-id"]], "checkout-bot's request by dave")
    shown = row_ids(d)
    assert not [r for r in others if r.headers["x-tollgate-request-id"] in shown], "filtered out"
    screenshot(d, "decisions-live")
    d.find_element(By.ID, "live").click()
    wait(d, lambda d: d.find_element(By.ID, "live").get_attribute("aria-pressed") == "false", "the tail stopped")
    admin.assert_clean()


def test_freezing_a_project_through_the_console_blocks_its_next_request(admin, stack):
    d = admin.d
    goto(d, "#projects")
    sel = "article.project[data-project='batch']"
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, sel + " button[data-action=freeze]"), "batch's freeze button")
    # Cancelled: nothing happens.
    d.find_element(By.CSS_SELECTOR, sel + " button[data-action=freeze]").click()
    dialog = d.find_element(By.ID, "confirm")
    wait(d, lambda d: dialog.is_displayed(), "the confirmation")
    assert "Freeze batch?" in dialog.text and "project_frozen" in dialog.text
    d.find_element(By.ID, "confirm-cancel").click()
    wait(d, lambda d: not dialog.is_displayed(), "the dialog closed")
    assert stack.chat(KEY_BATCH, tokens=2).status == 200, "cancelled: still serving"
    # Confirmed: frozen, shown, and the gateway refuses the project's next request.
    d.find_element(By.CSS_SELECTOR, sel + " button[data-action=freeze]").click()
    wait(d, lambda d: dialog.is_displayed(), "the confirmation")
    screenshot(d, "projects-confirm")
    d.find_element(By.ID, "confirm-ok").click()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, sel).get_attribute("data-frozen") == "true", "batch shown frozen")
    toast = d.find_element(By.ID, "toast")
    assert toast.is_displayed() and "batch is frozen" in toast.text
    r = stack.chat(KEY_BATCH, tokens=2)
    assert r.status == 403, r.body
    assert r.json()["error"]["code"] == "project_frozen"
    assert "frozen" in d.find_element(By.CSS_SELECTOR, sel + " .badge.state").text
    screenshot(d, "projects-frozen")
    # And back.
    d.find_element(By.CSS_SELECTOR, sel + " button[data-action=unfreeze]").click()
    wait(d, lambda d: dialog.is_displayed(), "the confirmation")
    d.find_element(By.ID, "confirm-ok").click()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, sel).get_attribute("data-frozen") == "false", "batch unfrozen")
    assert stack.chat(KEY_BATCH, tokens=2).status == 200
    admin.assert_clean()


def test_reload_config_asks_then_reloads(admin):
    d = admin.d
    goto(d, "#overview")
    d.find_element(By.ID, "reload").click()
    dialog = d.find_element(By.ID, "confirm")
    wait(d, lambda d: dialog.is_displayed(), "the confirmation")
    assert "Reload the configuration?" in dialog.text
    d.find_element(By.ID, "confirm-ok").click()
    toast = d.find_element(By.ID, "toast")
    wait(d, lambda d: toast.is_displayed() and "reloaded" in toast.text, "the reload's answer")
    admin.assert_clean()


def test_users_and_tags_show_their_spend(admin, stack):
    d = admin.d
    goto(d, "#people")

    def rows(sel):
        return {r.get_attribute("data-key"): float(r.get_attribute("data-value"))
                for r in d.find_elements(By.CSS_SELECTOR, sel + " tr[data-key]")}

    users = {r["user"]: r["cost_usd"] for r in stack.admin_get("/admin/spend?group_by=user").json()["rows"] if r["user"]}
    wait(d, lambda d: rows("#people-users") == users, f"users {users}")
    assert {"alice", "bob", "carol", "ci-runner"} <= set(users)
    assert Select(d.find_element(By.ID, "people-tag")).first_selected_option.text == "env"
    env = {r["tag:env"]: r["cost_usd"] for r in stack.admin_get("/admin/spend?group_by=tag:env").json()["rows"] if r["tag:env"]}
    wait(d, lambda d: rows("#people-tags") == env, f"env {env}")
    screenshot(d, "people")
    Select(d.find_element(By.ID, "people-tag")).select_by_value("feature")
    feature = {r["tag:feature"]: r["cost_usd"]
               for r in stack.admin_get("/admin/spend?group_by=tag:feature").json()["rows"] if r["tag:feature"]}
    wait(d, lambda d: rows("#people-tags") == feature, f"feature {feature}")
    assert set(feature) == {"cart", "summary", "search"}
    admin.assert_clean()


def test_signing_out_forgets_the_token_and_a_wrong_token_is_refused(admin, stack):
    d = admin.d
    d.find_element(By.ID, "signout").click()
    wait(d, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form")
    assert js(d, "return sessionStorage.length") == 0
    admin.sign_in("not-the-token")
    msg = d.find_element(By.ID, "login-msg")
    wait(d, lambda d: msg.is_displayed(), "the refusal")
    assert "401" in msg.text
    assert not d.find_element(By.ID, "shell").is_displayed()
    screenshot(d, "login-refused")
    # Signing in again, the page reloads from sessionStorage without asking.
    js(d, "location.hash = '#overview'")  # signed out: the page only remembers where to go
    admin.sign_in(ADMIN_TOKEN)
    admin.signed_in()
    goto(d, "#projects")
    d.refresh()
    admin.signed_in("projects")
    assert d.find_elements(By.CSS_SELECTOR, "article.project")
    admin.assert_clean()


def test_the_viewer_token_sees_everything_and_cannot_freeze(stack, traffic, browser_factory):
    b = Browser(browser_factory(1280, 800), stack)
    d = b.d
    d.get(stack.admin + "/#projects")
    b.sign_in(VIEWER_TOKEN)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "article.project"), "the projects")
    assert "viewer" in d.find_element(By.ID, "role").text
    assert not d.find_element(By.ID, "reload").is_displayed()
    buttons = d.find_elements(By.CSS_SELECTOR, "article.project button[data-action]")
    assert buttons and all(not x.is_enabled() for x in buttons)
    assert "read-only" in buttons[0].get_attribute("title")
    screenshot(d, "projects-viewer")
    # Forced anyway (the button enabled by hand): the server's 403 is shown, nothing changes.
    js(d, "document.querySelector(\"article[data-project='batch'] button[data-action=freeze]\").disabled = false")
    d.find_element(By.CSS_SELECTOR, "article[data-project='batch'] button[data-action=freeze]").click()
    wait(d, lambda d: d.find_element(By.ID, "confirm").is_displayed(), "the confirmation")
    d.find_element(By.ID, "confirm-ok").click()
    toast = d.find_element(By.ID, "toast")
    wait(d, lambda d: toast.is_displayed() and "403" in toast.text, "the 403")
    assert "read-only" in toast.text and "read_only_token" in toast.text
    assert [p for p in stack.admin_get("/admin/projects").json()["projects"] if p["id"] == "batch"][0]["frozen"] is False
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "article[data-project='batch']").get_attribute("data-frozen") == "false",
         "still serving")
    assert stack.chat(KEY_BATCH, tokens=2).status == 200
    goto(d, "#decisions")
    wait(d, lambda d: row_ids(d), "the viewer reads the log")
    b.assert_clean()


def test_a_phone_sized_screen(stack, traffic, browser_factory):
    b = Browser(browser_factory(390, 844), stack)
    d = b.d
    d.get(stack.admin + "/")
    b.sign_in(ADMIN_TOKEN)
    b.signed_in()

    def no_sideways_scroll():
        return js(d, "return document.documentElement.scrollWidth") <= js(d, "return window.innerWidth")

    assert no_sideways_scroll(), "the overview fits the width"
    screenshot(d, "overview")
    goto(d, "#projects")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "article.project .bar"), "the projects")
    assert no_sideways_scroll(), "the projects fit the width"
    screenshot(d, "projects")
    for view, ready in [("#spend", "#spend-chart svg g.series"), ("#decisions", "#dec-rows tr")]:
        goto(d, view)
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ready), view)
        assert no_sideways_scroll(), f"{view} fits the width"
    b.assert_clean()
