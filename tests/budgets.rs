//! Budgets everywhere the money is (SPEC): several windows per project, team budgets, key
//! budgets and expiry, end-user budgets, tags, reloads that keep the spend, and `check`'s
//! reports, against the real binary and the mock provider.
//!
//! Every request here has a cost known to the nano-dollar: its model is priced at $1 per
//! million tokens in and out, it asks for [`OUT`] output tokens, and the mock is told to
//! report exactly the gateway's prompt bound and [`OUT`] output tokens. So the true cost of
//! a request equals its worst case, and a budget of N worst cases admits exactly N requests,
//! however they race.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tollgate::scan::{prompt_tokens_upper_bound, Format};

/// Output tokens every request asks for (and the mock produces).
const OUT: u64 = 1000;
/// OpenAI-routed and Anthropic-routed models at $1/M tokens in and out: a token costs 1,000
/// nano-dollars.
const MODEL: &str = "gpt-budget";
const CLAUDE: &str = "claude-budget";
const PRICES: &str = "[prices.\"gpt-budget\"]\ninput = 1.0\noutput = 1.0\n\n[prices.\"claude-budget\"]\ninput = 1.0\noutput = 1.0\n\n";

const KEY_CI: &str = "tg_test_key_ci_budgeted_0003";
const KEY_OLD: &str = "tg_test_key_expired_long_0004";
const KEY_LATER: &str = "tg_test_key_expires_later_0005";

/// One request whose cost is known exactly.
#[derive(Clone)]
struct Req {
    path: &'static str,
    body: String,
    /// The gateway's prompt-token upper bound for `body`.
    bound: u64,
}

impl Req {
    fn chat(user: Option<&str>) -> Req {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": OUT});
        if let Some(u) = user {
            b["user"] = json!(u);
        }
        let body = b.to_string();
        let bound = prompt_tokens_upper_bound(Format::Chat, body.as_bytes());
        Req {
            path: "/v1/chat/completions",
            body,
            bound,
        }
    }

    fn messages(user_id: Option<&str>) -> Req {
        let mut b = json!({"model": CLAUDE, "messages": [{"role": "user", "content": "hello"}], "max_tokens": OUT});
        if let Some(u) = user_id {
            b["metadata"] = json!({ "user_id": u });
        }
        let body = b.to_string();
        let bound = prompt_tokens_upper_bound(Format::Messages, body.as_bytes());
        Req {
            path: "/v1/messages",
            body,
            bound,
        }
    }

    /// The worst case the gateway reserves, and (see [`Req::try_send`]) the true cost.
    fn worst(&self) -> u64 {
        (self.bound + OUT) * 1000
    }

    /// POST it to `base` with `key`; the mock reports usage equal to the worst case.
    fn try_send(&self, base: &str, key: &str, extra: &[(&str, &str)]) -> Result<Resp, String> {
        let prompt = self.bound.to_string();
        let out = OUT.to_string();
        let mut h = vec![
            ("x-api-key", key),
            ("x-mock-prompt-tokens", prompt.as_str()),
            ("x-mock-tokens", out.as_str()),
        ];
        h.extend_from_slice(extra);
        try_request(
            "POST",
            &format!("{base}{}", self.path),
            &h,
            Some(self.body.as_bytes()),
        )
    }

    fn send(&self, base: &str, key: &str, extra: &[(&str, &str)]) -> Resp {
        self.try_send(base, key, extra)
            .unwrap_or_else(|e| panic!("POST {}: {e}", self.path))
    }
}

/// A request's status, its error code (if any) and its request id.
type Outcome = (u16, Option<String>, String);

fn base(gw: &Gateway) -> String {
    format!("http://{}", gw.addr)
}

/// Nano-dollars as a config amount (exact: the config rounds to the nano-dollar).
fn usd(nanos: u64) -> String {
    format!("{}", nanos as f64 / 1e9)
}

/// An admin JSON amount in nano-dollars.
fn nanos(v: &Value) -> u64 {
    let f = v.as_f64().unwrap_or_else(|| panic!("not an amount: {v}"));
    (f * 1e9).round() as u64
}

/// The 402's (or any error's) `error.code`, and its message.
fn code_of(r: &Resp) -> (u16, String, String) {
    let v = r.json();
    (
        r.status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// A window of an `/admin/projects` or `/admin/teams` entry, by period.
fn window(entry: &Value, period: &str) -> Value {
    entry["budgets"]
        .as_array()
        .unwrap_or_else(|| panic!("no budgets list in {entry}"))
        .iter()
        .find(|w| w["period"] == period)
        .cloned()
        .unwrap_or_else(|| panic!("no {period} window in {entry}"))
}

/// Every field a window carries.
fn assert_window_shape(w: &Value) {
    for f in [
        "period",
        "limit_usd",
        "spent_usd",
        "reserved_usd",
        "remaining_usd",
    ] {
        assert!(!w[f].is_null(), "window without {f}: {w}");
    }
}

fn team(admin: u16, id: &str) -> Value {
    let r = admin_get(admin, "/admin/teams");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["teams"]
        .as_array()
        .unwrap_or_else(|| panic!("no teams list: {}", r.body))
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no team {id} in {}", r.body))
}

/// A project's decision records, newest first, once there are at least `n`.
fn decisions(admin: u16, project: &str, n: usize) -> Vec<Value> {
    let path = format!("/admin/decisions?project={project}&limit=1000");
    let mut got = Vec::new();
    eventually(&format!("{n} decision records of {project}"), || {
        got = admin_get(admin, &path).json()["decisions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        got.len() >= n
    });
    got
}

fn settled(admin: u16, id: &str) {
    eventually(&format!("{id}'s reservations released"), || {
        project(admin, id)["reserved_usd"] == 0.0
    });
}

/// SIGHUP, then wait for reload number `n` to be counted; a rejected reload fails the test
/// with the gateway's log.
fn sighup(gw: &Gateway, admin: u16, n: f64) {
    gw.signal("HUP");
    eventually("the reload is counted", || {
        reloads(admin, "ok") >= n || reloads(admin, "error") > 0.0
    });
    assert_eq!(
        reloads(admin, "error"),
        0.0,
        "the reload was rejected:\n{}",
        gw.log()
    );
}

fn key_name_of(key: &str) -> String {
    tollgate::hex(&tollgate::key_digest(key.as_bytes()))[..8].to_string()
}

#[test]
fn day_and_month_windows_apply_at_once_and_the_tighter_one_refuses() {
    let mock = Mock::start();
    let w = Req::chat(None).worst();
    let req = Req::chat(None);

    // The day window is the tighter: 3 worst cases a day, 10 a month.
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudgets = [{{ limit_usd = {}, period = \"month\" }}, {{ limit_usd = {}, period = \"day\" }}]\n",
            usd(10 * w),
            usd(3 * w)
        ),
    ));
    let s = project(admin, "p1");
    let budgets = s["budgets"].as_array().expect("budgets list");
    assert_eq!(budgets.len(), 2, "one object per window: {s}");
    budgets.iter().for_each(assert_window_shape);
    assert_eq!(
        (s["period"].as_str(), nanos(&s["limit_usd"])),
        (Some("day"), 3 * w),
        "the flat fields describe the tightest window: {s}"
    );
    for n in 0..3 {
        let r = req.send(&base(&gw), KEY, &[]);
        assert_eq!(r.status, 200, "request {n} fits the day window: {}", r.body);
    }
    let r = req.send(&base(&gw), KEY, &[]);
    let (status, code, msg) = code_of(&r);
    assert_eq!(
        (status, code.as_str()),
        (402, "budget_exceeded"),
        "{}",
        r.body
    );
    assert!(
        msg.contains("day budget"),
        "the message names the window: {msg}"
    );
    assert_eq!(
        mock.count(),
        3,
        "the refused request never reached the provider"
    );
    settled(admin, "p1");
    let s = project(admin, "p1");
    let (day, month) = (window(&s, "day"), window(&s, "month"));
    assert_eq!(
        (
            nanos(&day["spent_usd"]),
            nanos(&day["limit_usd"]),
            nanos(&day["remaining_usd"])
        ),
        (3 * w, 3 * w, 0),
        "{s}"
    );
    assert_eq!(
        (
            nanos(&month["spent_usd"]),
            nanos(&month["limit_usd"]),
            nanos(&month["remaining_usd"])
        ),
        (3 * w, 10 * w, 7 * w),
        "the month still has room: {s}"
    );
    assert_eq!(nanos(&month["reserved_usd"]), 0);
    assert_eq!(
        (
            s["period"].as_str(),
            nanos(&s["spent_usd"]),
            nanos(&s["remaining_usd"])
        ),
        (Some("day"), 3 * w, 0),
        "flat fields = the tightest window: {s}"
    );
    drop(gw);

    // The month is the tighter (`budget = {…}` and `budgets = […]` together): 2 worst cases
    // a month, 5 a day.
    mock.reset();
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = {}, period = \"month\" }}\nbudgets = [{{ limit_usd = {}, period = \"day\" }}]\n",
            usd(2 * w),
            usd(5 * w)
        ),
    ));
    for n in 0..2 {
        let r = req.send(&base(&gw), KEY, &[]);
        assert_eq!(
            r.status, 200,
            "request {n} fits the month window: {}",
            r.body
        );
    }
    let r = req.send(&base(&gw), KEY, &[]);
    let (status, code, msg) = code_of(&r);
    assert_eq!(
        (status, code.as_str()),
        (402, "budget_exceeded"),
        "{}",
        r.body
    );
    assert!(
        msg.contains("month budget") && !msg.contains("day budget"),
        "the month refused: {msg}"
    );
    assert_eq!(mock.count(), 2);
    settled(admin, "p1");
    let s = project(admin, "p1");
    assert_eq!(s["budgets"].as_array().map(Vec::len), Some(2), "{s}");
    assert_eq!(
        nanos(&window(&s, "day")["remaining_usd"]),
        3 * w,
        "the day still has room: {s}"
    );
    assert_eq!(
        (
            s["period"].as_str(),
            nanos(&s["limit_usd"]),
            nanos(&s["remaining_usd"])
        ),
        (Some("month"), 2 * w, 0),
        "{s}"
    );
}

#[test]
fn a_team_budget_caps_its_projects_together_under_concurrency() {
    let mock = Mock::start();
    let req = Req::chat(None);
    let w = req.worst();
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[teams]]\nid = \"pay\"\nbudget = {{ limit_usd = {team}, period = \"month\" }}\n\n\
             [[projects]]\nid = \"pa\"\nteam = \"pay\"\nkeys = [\"{KEY}\"]\nbudget = {{ limit_usd = {own}, period = \"month\" }}\n\n\
             [[projects]]\nid = \"pb\"\nteam = \"pay\"\nkeys = [\"{KEY2}\"]\nbudget = {{ limit_usd = {own}, period = \"month\" }}\n",
            team = usd(5 * w),
            own = usd(4 * w)
        ),
    ));
    let url = base(&gw);
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let (url, req) = (url.clone(), req.clone());
            let key = if i % 2 == 0 { KEY } else { KEY2 };
            std::thread::spawn(move || {
                req.try_send(&url, key, &[("x-mock-latency-ms", "100")])
                    .map(|r| {
                        let code = r.json()["error"]["code"].as_str().map(str::to_string);
                        (r.status, code)
                    })
                    .unwrap_or((0, None))
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&str> = results
        .iter()
        .filter(|(s, _)| *s == 402)
        .map(|(_, c)| c.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(ok + refused.len(), 100, "only 200 or 402: {results:?}");
    assert!(
        refused
            .iter()
            .all(|c| *c == "team_budget_exceeded" || *c == "budget_exceeded"),
        "refusals name the team's or the project's budget: {refused:?}"
    );
    assert!(
        refused.contains(&"team_budget_exceeded"),
        "the team's budget binds before a project's own: {refused:?}"
    );
    assert_eq!(
        ok, 5,
        "the team's budget fits exactly 5 worst cases (each project's 4)"
    );
    assert_eq!(mock.count(), ok as u64, "one upstream call per 200");
    settled(admin, "pa");
    settled(admin, "pb");
    let t = team(admin, "pay");
    let tw = window(&t, "month");
    assert_window_shape(&tw);
    let team_spent = nanos(&t["spent_usd"]);
    assert!(
        team_spent <= 5 * w,
        "team spent {team_spent} > {}: {t}",
        5 * w
    );
    assert_eq!(team_spent, 5 * w, "{t}");
    assert_eq!(nanos(&tw["spent_usd"]), team_spent, "{t}");
    assert_eq!(nanos(&tw["limit_usd"]), 5 * w, "{t}");
    assert_eq!(nanos(&tw["remaining_usd"]), 0, "{t}");
    let (a, b) = (
        nanos(&project(admin, "pa")["spent_usd"]),
        nanos(&project(admin, "pb")["spent_usd"]),
    );
    assert!(
        a <= 4 * w && b <= 4 * w,
        "projects within their own: {a}, {b}"
    );
    assert_eq!(a + b, team_spent, "the team's spend is its projects' spend");
    assert_eq!(project(admin, "pa")["team"], "pay");
    // The records name the team.
    for p in ["pa", "pb"] {
        for d in decisions(admin, p, 50) {
            assert_eq!(d["team"], "pay", "{d}");
        }
    }
}

#[test]
fn a_key_budget_refuses_that_key_only_and_records_name_keys_never_show_them() {
    let mock = Mock::start();
    let req = Req::chat(None);
    let w = req.worst();
    let digest2 = tollgate::hex(&tollgate::key_digest(KEY2.as_bytes()));
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\", \"sha256:{digest2}\", {{ key = \"{KEY_CI}\", name = \"ci\", budget = {{ limit_usd = {}, period = \"week\" }} }}]\nbudget = {{ limit_usd = {}, period = \"month\" }}\n",
            usd(2 * w),
            usd(100 * w)
        ),
    ));
    let mut ids: BTreeMap<String, &str> = BTreeMap::new();
    for _ in 0..2 {
        let r = req.send(&base(&gw), KEY_CI, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        ids.insert(r.request_id(), "ci");
    }
    let r = req.send(&base(&gw), KEY_CI, &[]);
    let (status, code, msg) = code_of(&r);
    assert_eq!(
        (status, code.as_str()),
        (402, "key_budget_exceeded"),
        "{}",
        r.body
    );
    assert!(msg.contains("ci"), "the message names the key: {msg}");
    assert!(msg.contains("week budget"), "and its window: {msg}");
    assert!(!msg.contains(KEY_CI), "never the key itself: {msg}");
    ids.insert(r.request_id(), "ci");
    // On /v1/messages, Anthropic's shape with the same code.
    let r = Req::messages(None).send(&base(&gw), KEY_CI, &[]);
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(r.json()["type"], "error", "{}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        "key_budget_exceeded",
        "{}",
        r.body
    );
    ids.insert(r.request_id(), "ci");
    assert_eq!(mock.count(), 2);

    // The project's other keys are not limited by ci's budget.
    let r = req.send(&base(&gw), KEY, &[]);
    assert_eq!(r.status, 200, "the plain key still works: {}", r.body);
    ids.insert(r.request_id(), "plain");
    let r = req.send(&base(&gw), KEY2, &[]);
    assert_eq!(r.status, 200, "the sha256 key still works: {}", r.body);
    ids.insert(r.request_id(), "digest");
    assert_eq!(mock.count(), 4);

    let all = decisions(admin, "p1", ids.len());
    for d in &all {
        let id = d["id"].as_str().unwrap_or("");
        let want = match ids.get(id) {
            Some(&"ci") => "ci".to_string(),
            Some(&"plain") => key_name_of(KEY),
            Some(_) => digest2[..8].to_string(),
            None => continue,
        };
        assert_eq!(d["key_name"], want.as_str(), "{d}");
    }
    let blocked: Vec<&Value> = all.iter().filter(|d| d["decision"] == "block").collect();
    assert_eq!(blocked.len(), 2, "{all:?}");
    assert!(blocked.iter().all(|d| d["reason"] == "key_budget_exceeded"));
    let raw = admin_get(admin, "/admin/decisions?project=p1&limit=1000").body;
    for k in [KEY, KEY2, KEY_CI] {
        assert!(!raw.contains(k), "a decision record shows a key: {raw}");
    }
}

#[test]
fn an_expired_key_gets_401_key_expired_and_the_projects_other_keys_work() {
    let mock = Mock::start();
    let (gw, _admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\", {{ key = \"{KEY_OLD}\", expires = \"2020-01-01T00:00:00Z\" }}, {{ key = \"{KEY_LATER}\", name = \"later\", expires = \"2099-01-01T00:00:00Z\" }}]\n"
        ),
    ));
    let req = Req::chat(None);
    let (k, bearer_old) = bearer(KEY_OLD);
    for headers in [
        vec![("x-api-key", KEY_OLD)],
        vec![(k, bearer_old.as_str())],
        vec![("x-tollgate-key", KEY_OLD)],
    ] {
        let r = post(&gw.url("/v1/chat/completions"), &headers, &req.body);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], "key_expired", "{}", r.body);
        assert_eq!(v["error"]["type"], "unauthorized", "{}", r.body);
        assert_eq!(v["error"]["reason"], "key_expired", "{}", r.body);
        assert!(r.header("x-tollgate-request-id").is_some());
    }
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY_OLD)],
        &Req::messages(None).body,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["type"].as_str(), v["error"]["code"].as_str()),
        (Some("error"), Some("key_expired")),
        "Anthropic's shape on /v1/messages: {}",
        r.body
    );
    assert_eq!(
        mock.count(),
        0,
        "an expired key's request never reaches the provider"
    );
    // An unknown key is still the plain 401.
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("x-api-key", "tg_test_key_nobody_has_this_99")],
        &req.body,
    );
    assert_eq!(r.status, 401);
    assert_ne!(r.json()["error"]["code"], "key_expired", "{}", r.body);

    assert_eq!(
        req.send(&base(&gw), KEY, &[]).status,
        200,
        "a key without expires"
    );
    let r = req.send(&base(&gw), KEY_LATER, &[]);
    assert_eq!(r.status, 200, "a key that expires later: {}", r.body);
    assert_eq!(mock.count(), 2);
}

#[test]
fn each_end_user_has_its_own_budget_under_concurrency_and_after_a_restart() {
    let mock = Mock::start();
    // Users 0-9 named by the header, 10-17 by the body's `user`, 18-19 by Anthropic's
    // `metadata.user_id`. Ids distinctive enough to search /metrics for.
    let users: Vec<String> = (0..20).map(|i| format!("enduser-{i:02}-qzx")).collect();
    let how = |i: usize| -> (Req, bool) {
        match i {
            0..=9 => (Req::chat(None), true),
            10..=17 => (Req::chat(Some(&users[i])), false),
            _ => (Req::messages(Some(&users[i])), false),
        }
    };
    let w_max = (0..20).map(|i| how(i).0.worst()).max().unwrap();
    let w_min = (0..20).map(|i| how(i).0.worst()).min().unwrap();
    let limit = 2 * w_max;
    assert!(
        3 * w_min > limit,
        "the limit fits exactly 2 of every user's requests"
    );
    let (mut gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nuser_budget = {{ limit_usd = {}, period = \"day\" }}\n",
            usd(limit)
        ),
    ));
    let url = base(&gw);
    let threads: Vec<_> = (0..200)
        .map(|n| {
            let i = n % 20;
            let (req, header) = how(i);
            let (url, user) = (url.clone(), users[i].clone());
            std::thread::spawn(move || {
                let mut extra = vec![("x-mock-latency-ms", "200")];
                if header {
                    extra.push(("x-tollgate-user", user.as_str()));
                }
                let r = req.try_send(&url, KEY, &extra);
                let r = r.map(|r| {
                    let code = r.json()["error"]["code"].as_str().map(str::to_string);
                    (r.status, code, r.request_id())
                });
                (i, r.unwrap_or((0, None, String::new())))
            })
        })
        .collect();
    let results: Vec<(usize, Outcome)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ok_per_user = vec![0; 20];
    for (i, (status, code, _)) in &results {
        match status {
            200 => ok_per_user[*i] += 1,
            402 => assert_eq!(
                code.as_deref(),
                Some("user_budget_exceeded"),
                "{}",
                users[*i]
            ),
            s => panic!("{}: status {s}", users[*i]),
        }
    }
    assert!(
        ok_per_user.iter().all(|n| *n == 2),
        "each user gets exactly the 2 requests its budget fits: {ok_per_user:?}"
    );
    assert_eq!(mock.count(), 40, "one upstream call per 200");
    settled(admin, "p1");

    // The list is read from the store (how soon a user appears there is the subject of
    // `a_new_end_user_is_listed_with_its_hold_and_its_spend_at_once`).
    eventually("every user listed", || {
        admin_get(admin, "/admin/users?project=p1&limit=1000").json()["users"]
            .as_array()
            .map_or(0, Vec::len)
            == 20
    });
    let r = admin_get(admin, "/admin/users?project=p1&limit=1000");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["next"].is_null(), "one page: {}", r.body);
    let list = v["users"].as_array().expect("users");
    let listed: BTreeSet<&str> = list.iter().filter_map(|u| u["user"].as_str()).collect();
    let want: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    assert_eq!(listed, want, "{}", r.body);
    for u in list {
        let i = users.iter().position(|x| u["user"] == x.as_str()).unwrap();
        assert_eq!(u["period"], "day", "{u}");
        assert_eq!(nanos(&u["limit_usd"]), limit, "{u}");
        let spent = nanos(&u["spent_usd"]);
        assert!(spent <= limit, "{u}");
        assert_eq!(spent, 2 * how(i).0.worst(), "{u}");
        assert_eq!(nanos(&u["reserved_usd"]), 0, "{u}");
        assert_eq!(nanos(&u["remaining_usd"]), limit - spent, "{u}");
    }

    // The records carry the user, whichever way it was named.
    let records = decisions(admin, "p1", 200);
    let by_id: BTreeMap<&str, &Value> = records
        .iter()
        .map(|d| (d["id"].as_str().unwrap_or(""), d))
        .collect();
    for (i, (status, _, id)) in &results {
        let d = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no record of {id}"));
        assert_eq!(d["user"], users[*i].as_str(), "{d}");
        if *status == 402 {
            assert_eq!(
                (d["decision"].as_str(), d["reason"].as_str()),
                (Some("block"), Some("user_budget_exceeded")),
                "{d}"
            );
        }
    }

    // Never a metric label.
    let metrics = get(&admin_url(admin, "/metrics"), &[]).body;
    for u in &users {
        assert!(!metrics.contains(u.as_str()), "{u} in /metrics:\n{metrics}");
    }
    assert!(!metrics.contains("enduser-"), "{metrics}");

    // Spend survives a graceful restart on the same store.
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );
    mock.reset();
    let mut again = Gateway::spawn_on(&gw.config_path, &[], &env_with_admin());
    again.wait_listening();
    let admin2 = again.admin_port();
    for i in [0, 10, 19] {
        let (req, header) = how(i);
        let extra: Vec<(&str, &str)> = if header {
            vec![("x-tollgate-user", users[i].as_str())]
        } else {
            vec![]
        };
        let r = req.send(&base(&again), KEY, &extra);
        let (status, code, _) = code_of(&r);
        assert_eq!(
            (status, code.as_str()),
            (402, "user_budget_exceeded"),
            "{} after the restart: {}",
            users[i],
            r.body
        );
    }
    assert_eq!(mock.count(), 0);
    let r = admin_get(admin2, "/admin/users?project=p1&limit=1000");
    let list = r.json()["users"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 20, "{}", r.body);
    for u in &list {
        let i = users.iter().position(|x| u["user"] == x.as_str()).unwrap();
        assert_eq!(nanos(&u["spent_usd"]), 2 * how(i).0.worst(), "{u}");
    }
    // A new user of the same project still gets through.
    let r = Req::chat(Some("enduser-new-qzx")).send(&base(&again), KEY, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    drop(again);
}

#[test]
fn a_new_end_user_is_listed_with_its_hold_and_its_spend_at_once() {
    let mock = Mock::start();
    let req = Req::chat(None);
    let w = req.worst();
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!(
            "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\nuser_budget = {{ limit_usd = {}, period = \"day\" }}\n",
            usd(10 * w)
        ),
    ));
    let listed = |user: &str| -> Option<Value> {
        let r = admin_get(admin, "/admin/users?project=p1&limit=1000");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["users"]
            .as_array()?
            .iter()
            .find(|u| u["user"] == user)
            .cloned()
    };
    // A request in flight: its hold is on the project the moment it is admitted, and on its
    // user in the same step.
    let url = base(&gw);
    let slow = std::thread::spawn({
        let req = req.clone();
        move || {
            req.send(
                &url,
                KEY,
                &[
                    ("x-tollgate-user", "inflight"),
                    ("x-mock-latency-ms", "1500"),
                ],
            )
            .status
        }
    });
    eventually("the hold is taken", || {
        project(admin, "p1")["reserved_usd"] != 0.0
    });
    let u = listed("inflight");
    assert!(
        u.as_ref().is_some_and(|u| nanos(&u["reserved_usd"]) == w),
        "a user with a request in flight is listed with its hold: {u:?}"
    );
    assert_eq!(slow.join().unwrap(), 200);
    // A settled request: its spend is listed as soon as /admin/projects shows it.
    assert_eq!(
        req.send(&base(&gw), KEY, &[("x-tollgate-user", "fresh")])
            .status,
        200
    );
    settled(admin, "p1");
    assert_eq!(nanos(&project(admin, "p1")["spent_usd"]), 2 * w);
    let u = listed("fresh");
    assert!(
        u.as_ref().is_some_and(|u| nanos(&u["spent_usd"]) == w),
        "a user's settled spend is listed at once, as the project's is: {u:?}"
    );
}

#[test]
fn tags_go_on_the_record_and_a_bad_tag_is_a_400_that_names_it() {
    let mock = Mock::start();
    let (gw, admin) = start_admin(&body_with_projects(
        &mock,
        &format!("{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\"]\n"),
    ));
    let req = Req::chat(None);
    let r = req.send(
        &base(&gw),
        KEY,
        &[("x-tollgate-tags", "team=search,feature=summarize")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = decision(admin, &r.request_id());
    assert_eq!(
        d["tags"],
        json!({"team": "search", "feature": "summarize"}),
        "{d}"
    );
    let plain = req.send(&base(&gw), KEY, &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(decision(admin, &plain.request_id())["tags"], json!({}));
    assert_eq!(mock.count(), 2);

    let eleven: String = (0..11)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let long = format!("k={}", "v".repeat(65));
    for (bad, named) in [
        ("bad tag=1", "bad tag"),
        ("a=b/c", "a=b/c"),
        ("team=search,nokeyvalue", "nokeyvalue"),
        (long.as_str(), "64"),
        (eleven.as_str(), "10"),
    ] {
        for path in ["/v1/chat/completions", "/v1/messages"] {
            let body = if path == "/v1/messages" {
                Req::messages(None).body
            } else {
                req.body.clone()
            };
            let r = post(
                &gw.url(path),
                &[("x-api-key", KEY), ("x-tollgate-tags", bad)],
                &body,
            );
            assert_eq!(r.status, 400, "{bad:?} on {path}: {}", r.body);
            let v = r.json();
            assert_eq!(v["error"]["type"], "invalid_request", "{}", r.body);
            let msg = v["error"]["message"].as_str().unwrap_or("");
            assert!(msg.contains(named), "{bad:?}: the message names it: {msg}");
        }
    }
    let ten: String = (0..10)
        .map(|i| format!("k{i}=v.{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = req.send(&base(&gw), KEY, &[("x-tollgate-tags", &ten)]);
    assert_eq!(r.status, 200, "10 tags are accepted: {}", r.body);
    assert_eq!(
        decision(admin, &r.request_id())["tags"]
            .as_object()
            .map(|o| o.len()),
        Some(10)
    );
    assert_eq!(
        mock.count(),
        3,
        "no request with a bad tag reached the provider"
    );
    // Tags are never metric labels.
    let metrics = get(&admin_url(admin, "/metrics"), &[]).body;
    assert!(!metrics.contains("summarize"), "{metrics}");
}

#[test]
fn a_reload_adds_windows_teams_key_and_user_budgets_without_losing_spend() {
    let mock = Mock::start();
    let req = Req::chat(None);
    let w = req.worst();
    let before = format!(
        "{PRICES}[[projects]]\nid = \"p1\"\nkeys = [\"{KEY}\", \"{KEY_CI}\"]\nbudget = {{ limit_usd = {}, period = \"month\" }}\n",
        usd(100 * w)
    );
    let (gw, admin) = start_admin(&body_with_projects(&mock, &before));
    for _ in 0..3 {
        assert_eq!(req.send(&base(&gw), KEY, &[]).status, 200);
    }
    settled(admin, "p1");
    assert_eq!(nanos(&project(admin, "p1")["spent_usd"]), 3 * w);

    let after_keys = |keys: &str| {
        format!(
            "{PRICES}[[teams]]\nid = \"pay\"\nbudget = {{ limit_usd = {team}, period = \"month\" }}\n\n\
             [[projects]]\nid = \"p1\"\nteam = \"pay\"\nkeys = [{keys}]\n\
             budget = {{ limit_usd = {month}, period = \"month\" }}\n\
             budgets = [{{ limit_usd = {day}, period = \"day\" }}]\n\
             user_budget = {{ limit_usd = {user}, period = \"day\" }}\n",
            team = usd(3 * w),
            month = usd(100 * w),
            day = usd(50 * w),
            user = usd(w),
        )
    };
    let with_ci = format!(
        "\"{KEY}\", {{ key = \"{KEY_CI}\", name = \"ci\", budget = {{ limit_usd = {}, period = \"week\" }} }}",
        usd(w)
    );
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let head = &original[..original.find(PRICES).expect("the prices in the file")];
    rewrite(&gw.config_path, &format!("{head}{}", after_keys(&with_ci)));
    sighup(&gw, admin, 1.0);

    let s = project(admin, "p1");
    assert_eq!(
        nanos(&window(&s, "month")["spent_usd"]),
        3 * w,
        "a reload never resets spend: {s}"
    );
    assert_eq!(nanos(&window(&s, "month")["limit_usd"]), 100 * w, "{s}");
    assert_eq!(nanos(&window(&s, "day")["limit_usd"]), 50 * w, "{s}");
    assert_eq!(s["team"], "pay", "{s}");
    assert_eq!(nanos(&team(admin, "pay")["spent_usd"]), 0);

    // The key's budget: one worst case a week.
    assert_eq!(req.send(&base(&gw), KEY_CI, &[]).status, 200);
    let r = req.send(&base(&gw), KEY_CI, &[]);
    assert_eq!(
        code_of(&r).1,
        "key_budget_exceeded",
        "the new key budget applies: {}",
        r.body
    );
    // The user budget: one worst case a day.
    let user = [("x-tollgate-user", "reload-user")];
    assert_eq!(req.send(&base(&gw), KEY, &user).status, 200);
    let r = req.send(&base(&gw), KEY, &user);
    assert_eq!(
        code_of(&r).1,
        "user_budget_exceeded",
        "the new user budget applies: {}",
        r.body
    );
    // The team: three worst cases a month, two of them spent above.
    assert_eq!(req.send(&base(&gw), KEY, &[]).status, 200);
    let r = req.send(&base(&gw), KEY, &[]);
    assert_eq!(
        code_of(&r).1,
        "team_budget_exceeded",
        "the new team budget applies: {}",
        r.body
    );
    assert_eq!(mock.count(), 6);
    settled(admin, "p1");
    let s = project(admin, "p1");
    assert_eq!(nanos(&window(&s, "month")["spent_usd"]), 6 * w, "{s}");
    let day = nanos(&window(&s, "day")["spent_usd"]);
    assert!(
        (3 * w..=6 * w).contains(&day),
        "the day window is charged from the reload on: {s}"
    );
    assert_eq!(nanos(&team(admin, "pay")["spent_usd"]), 3 * w);

    // A key taken out of the config is refused on the next request.
    rewrite(
        &gw.config_path,
        &format!("{head}{}", after_keys(&format!("\"{KEY}\""))),
    );
    sighup(&gw, admin, 2.0);
    let r = req.send(&base(&gw), KEY_CI, &[]);
    assert_eq!(r.status, 401, "a removed key: {}", r.body);
    assert_eq!(r.json()["error"]["type"], "unauthorized");
    assert_eq!(
        nanos(&window(&project(admin, "p1"), "month")["spent_usd"]),
        6 * w,
        "still no spend lost"
    );
    assert_eq!(mock.count(), 6);
}

/// `tollgate check --config FILE`: exit code and stderr+stdout.
fn check(path: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(path)
        .env("OPENAI_API_KEY", "sk-x")
        .output()
        .expect("run tollgate check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_reports_each_budget_mistake_with_its_place() {
    // (the line as it is wrong, the line as it would be right, what the report must mention,
    // where on the line the report points: the value, or the key table without `key`)
    let mistakes: [(&str, &str, &str, &str); 4] = [
        (
            "team = \"no-such-team\"",
            "team = \"pay\"",
            "no-such-team",
            "\"no-such-team\"",
        ),
        (
            "  { name = \"no-key-here\" },",
            "  { key = \"tg_check_key_000000000000\", name = \"has-key\" },",
            "key",
            "{",
        ),
        (
            "  { key = \"tg_check_key_000000000001\", expires = \"next tuesday\" },",
            "  { key = \"tg_check_key_000000000001\", expires = \"2030-01-01T00:00:00Z\" },",
            "expires",
            "\"next tuesday\"",
        ),
        (
            "  { key = \"tg_check_key_000000000003\", name = \"ci\" },",
            "  { key = \"tg_check_key_000000000003\", name = \"ci-2\" },",
            "ci",
            "\"ci\"",
        ),
    ];
    let file = |wrong: &[bool; 4]| {
        let pick = |i: usize| {
            if wrong[i] {
                mistakes[i].0
            } else {
                mistakes[i].1
            }
        };
        format!(
            "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com\"\napi_key_env = \"OPENAI_API_KEY\"\n\n\
             [[routes]]\nprefix = \"gpt-\"\nprovider = \"openai\"\n\n\
             [[teams]]\nid = \"pay\"\nbudget = {{ limit_usd = 10.0, period = \"month\" }}\n\n\
             [[projects]]\nid = \"p1\"\n{}\nkeys = [\n{}\n{}\n  {{ key = \"tg_check_key_000000000002\", name = \"ci\" }},\n{}\n]\n",
            pick(0),
            pick(1),
            pick(2),
            pick(3)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");

    std::fs::write(&path, file(&[false; 4])).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 0, "the corrected file passes: {out}");

    // The report of mistake `i` in `text`: `bad.toml:LINE:COL: …` on the line where it is.
    let reported = |text: &str, out: &str, i: usize| {
        let (wrong, _, says, at) = mistakes[i];
        let line = text
            .lines()
            .position(|l| l == wrong)
            .expect("the mistake is in the file")
            + 1;
        let prefix = format!("bad.toml:{line}:");
        let report = out
            .lines()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| {
                panic!("mistake {i} ({wrong:?}) not reported at line {line}:\n{out}")
            });
        let rest = &report[report.find(&prefix).unwrap() + prefix.len()..];
        let col: usize = rest
            .split(':')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no column in {report:?}"));
        let want = wrong.rfind(at).expect("the place is on the line") + 1;
        assert_eq!(col, want, "the column of {at:?} in {wrong:?}: {report}");
        assert!(report.contains(says), "{report:?} mentions {says:?}");
    };
    for i in 0..4 {
        let mut wrong = [false; 4];
        wrong[i] = true;
        let text = file(&wrong);
        std::fs::write(&path, &text).unwrap();
        let (code, out) = check(&path);
        assert_eq!(code, 1, "mistake {i} alone: {out}");
        reported(&text, &out, i);
        assert!(!out.contains("panicked"), "{out}");
    }
    let text = file(&[true; 4]);
    std::fs::write(&path, &text).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 1, "{out}");
    for i in 0..4 {
        reported(&text, &out, i);
    }
    assert!(!out.contains("panicked"), "{out}");
}
