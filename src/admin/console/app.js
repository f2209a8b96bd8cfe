// The Tollgate console: one page, plain JS, no framework, nothing from elsewhere. It reads the
// admin API with the token the operator typed, kept in this tab's sessionStorage only (never in
// the URL, the DOM or the console). Everything is built with createElement/textContent (values
// from clients, such as user ids and tags, are never parsed as HTML), and no style attribute is
// written in markup: the CSP allows CSSOM (`el.style.width = …`) and SVG attributes.
"use strict";

(function () {
  const TOKEN_KEY = "tollgate.console.token";
  const HOUR = 3600e3;
  const DAY = 86400e3;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SERIES_MAX = 8; // colours; further series are folded into "other"

  const state = {
    token: null,
    role: null,
    overview: null,
    projects: null,
    view: null,
    tail: null, // {controller}
    next: null, // decisions cursor
    filter: {},
    spend: null,
  };

  // ---------- small DOM helpers ----------

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    set(el, attrs);
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    set(el, attrs);
    append(el, children);
    return el;
  }

  function set(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k === "cls" ? "class" : k, v === true ? "" : String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function fill(el, ...children) {
    el.replaceChildren();
    append(el, children);
    return el;
  }

  // ---------- formatting ----------

  /** Every digit of an amount (the API keeps nano-dollars): for a title tooltip. */
  function usdFull(v) {
    if (v === null || v === undefined) return "unknown";
    let s = Math.abs(v).toFixed(9).replace(/0+$/, "").replace(/\.$/, ".00");
    if (/\.\d$/.test(s)) s += "0";
    return (v < 0 ? "-$" : "$") + s;
  }

  /** Sensible precision: $1,234.56, $0.0123, and small amounts with two significant digits. */
  function usdShort(v) {
    if (v === null || v === undefined) return "—";
    const a = Math.abs(v);
    const sign = v < 0 ? "-" : "";
    if (a === 0) return "$0.00";
    if (a >= 1) {
      return sign + "$" + a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    if (a >= 0.0001) {
      let s = a.toFixed(4);
      while (s.endsWith("0") && s.length > 4) s = s.slice(0, -1);
      return sign + "$" + s;
    }
    const digits = Math.min(20, 1 - Math.floor(Math.log10(a)));
    return sign + "$" + a.toFixed(digits);
  }

  function usd(v, cls) {
    return h("span", { cls: cls || "usd", title: usdFull(v), text: usdShort(v) });
  }

  const int = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString());
  const plural = (n, one, many) => `${int(n)} ${Number(n) === 1 ? one : many || one + "s"}`;
  function share(part, whole) {
    const v = pct(part, whole);
    return v > 0 && v < 1 ? "<1%" : Math.round(v) + "%";
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  /** `2026-11-22 10:30:00 UTC` for a title. */
  function utcText(ms) {
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  const fmtDateTime = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const fmtHour = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
  const fmtDay = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  const fmtDayUtc = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

  /** A time in the viewer's zone, UTC on hover. */
  function timeEl(iso, fmt) {
    const ms = Date.parse(iso);
    if (Number.isNaN(ms)) return h("span", { text: iso || "—" });
    return h("time", { datetime: iso, title: utcText(ms), text: (fmt || fmtDateTime).format(ms) });
  }

  function pct(part, whole) {
    if (!whole) return 0;
    return Math.max(0, Math.min(100, (part / whole) * 100));
  }

  // ---------- the API ----------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, opts) {
    const o = opts || {};
    if (!state.token) throw new ApiError(401, "unauthorized", "Not signed in");
    let res;
    try {
      res = await fetch(path, {
        method: o.method || "GET",
        headers: { authorization: "Bearer " + state.token },
        cache: "no-store",
        credentials: "omit",
        signal: o.signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "Cannot reach the admin API: " + e.message);
    }
    if (o.raw && res.ok) return res;
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (res.status === 401) {
      signOut("The token was refused (401 unauthorized): sign in again with the admin or viewer token.");
      throw new ApiError(401, "unauthorized", "The token was refused");
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      throw new ApiError(res.status, err.code || String(res.status), err.message || text || res.statusText);
    }
    return o.text ? text : body;
  }

  function toast(message, kind) {
    const t = $("toast");
    t.className = "toast " + (kind || "ok");
    t.textContent = message;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, kind === "error" ? 12000 : 6000);
  }

  function showError(e) {
    if (e && e.status === 401) return;
    if (e && e.name === "AbortError") return;
    const msg = e && e.status ? `${e.message} (${e.status} ${e.code})` : String((e && e.message) || e);
    toast(msg, "error");
  }

  function banner(text) {
    const b = $("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  // ---------- signing in and out ----------

  function showLogin(message) {
    $("shell").hidden = true;
    $("login").hidden = false;
    const m = $("login-msg");
    m.textContent = message || "";
    m.hidden = !message;
    $("token").value = "";
    $("token").focus();
  }

  function signOut(message) {
    stopTail();
    state.token = null;
    state.overview = null;
    state.projects = null;
    state.role = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage refused: nothing kept anyway */ }
    showLogin(message);
  }

  async function signIn(token) {
    state.token = token;
    $("login-btn").disabled = true;
    try {
      await loadOverview();
    } catch (e) {
      if (e.status !== 401) {
        state.token = null;
        showLogin(e.message);
      }
      return;
    } finally {
      $("login-btn").disabled = false;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) { /* private mode: the token lives in memory for this page only */ }
    $("login").hidden = true;
    $("shell").hidden = false;
    route();
  }

  // ---------- the overview (the first view: one request) ----------

  async function loadOverview() {
    const ov = await api("/admin/overview");
    state.overview = ov;
    state.projects = ov.projects || [];
    state.role = ov.role;
    renderHeader();
    return ov;
  }

  function renderHeader() {
    const ov = state.overview;
    const viewer = state.role !== "admin";
    document.body.classList.toggle("viewer", viewer);
    const role = $("role");
    role.textContent = viewer ? "viewer · read-only" : "admin";
    role.className = "badge " + (viewer ? "warn" : "ok");
    role.title = viewer ? "The viewer token can see everything and change nothing" : "The admin token";
    $("reload").disabled = viewer;
    $("reload").title = viewer ? "The viewer token is read-only" : "POST /admin/reload: read the config file again";
    const inst = $("instance");
    inst.hidden = !ov.instance;
    inst.textContent = ov.instance ? "instance " + ov.instance : "";
    const now = Date.parse(ov.now);
    fill($("updated"), "as of ", timeEl(ov.now, fmtHour));
    if (!Number.isNaN(now)) $("updated").title = utcText(now);
    const reasons = new Set(["ok"]);
    for (const r of ov.top_reasons || []) reasons.add(r.reason);
    fill($("reasons"), [...reasons].map((r) => h("option", { value: r })));
    const sel = $("f-project");
    const current = sel.value;
    fill(sel, h("option", { value: "", text: "any" }),
      state.projects.map((p) => h("option", { value: p.id, text: p.id })));
    sel.value = current;
    const tags = ov.tags || [];
    const tagSel = $("people-tag");
    const curTag = tagSel.value;
    fill(tagSel, tags.map((t) => h("option", { value: t, text: t })));
    if (tags.includes(curTag)) tagSel.value = curTag;
    $("people-tag-label").hidden = tags.length === 0;
  }

  function stat(title, hourValue, dayValue, cls) {
    return h("div", { cls: "stat card " + (cls || "") },
      h("h3", { text: title }),
      h("div", { cls: "big" }, hourValue),
      h("div", { cls: "stat-foot small" }, h("span", { cls: "muted", text: "last hour" }),
        h("span", null, h("span", { cls: "muted", text: "24 h " }), h("b", null, dayValue))));
  }

  function renderOverview() {
    const ov = state.overview;
    if (!ov) return;
    const hr = ov.totals.hour;
    const day = ov.totals.day;
    fill($("ov-stats"),
      stat("Requests", int(hr.requests), int(day.requests)),
      stat("Spend", usd(hr.cost_usd), usd(day.cost_usd)),
      stat("Blocked", int(hr.blocked), int(day.blocked), hr.blocked ? "warn" : ""),
      stat("Errors", int(hr.errors), int(day.errors), hr.errors ? "bad" : ""));
    const buckets = ov.hourly.map((b) => Date.parse(b.bucket));
    fill($("ov-req-chart"), barChart({
      el: $("ov-req-chart"),
      height: 170,
      buckets,
      bucketMs: HOUR,
      series: [
        { key: "allowed", label: "allowed", cls: "c-allow", values: ov.hourly.map((b) => b.allowed) },
        { key: "blocked", label: "blocked", cls: "c-block", values: ov.hourly.map((b) => b.blocked) },
      ],
      yFormat: (v) => int(v),
      integer: true,
    }));
    fill($("ov-spend-chart"), barChart({
      el: $("ov-spend-chart"),
      height: 170,
      buckets,
      bucketMs: HOUR,
      series: [{ key: "spend", label: "spend", cls: "c0", values: ov.hourly.map((b) => b.cost_usd) }],
      yFormat: usdShort,
      valueFormat: usdFull,
    }));
    renderProviders(ov.providers);
    renderBudgetsSummary(state.projects);
    renderFleet(ov.fleet);
  }

  function renderProviders(p) {
    const list = (p && p.providers) || [];
    const el = $("ov-providers");
    if (!list.length) return fill(el, h("p", { cls: "muted", text: "No providers configured." }));
    const rows = list.map((x) => {
      const cls = x.state === "closed" ? "ok" : x.state === "open" ? "bad" : "warn";
      const label = x.state === "closed" ? "up (circuit closed)" : x.state === "open" ? "down (circuit open)" : "probing (half open)";
      return h("tr", { "data-provider": x.name, "data-state": x.state },
        h("td", null, h("b", { text: x.name })),
        h("td", null, h("span", { cls: "badge " + cls, text: label })),
        h("td", { cls: "num" }, int(x.consecutive_failures), h("span", { cls: "muted small", text: " failures" })),
        h("td", { cls: "muted small" }, x.open_until ? ["retry at ", timeEl(x.open_until)] : ""));
    });
    const c = p.circuit || {};
    fill(el, h("table", { cls: "plain" }, h("tbody", null, rows)),
      h("p", { cls: "muted small", text: `A circuit opens after ${c.failures} consecutive failures, for ${(c.cooldown_ms || 0) / 1000} s.` }));
  }

  function renderBudgetsSummary(projects) {
    const el = $("ov-budgets");
    const rows = (projects || []).map((p) => {
      const w = tightest(p);
      return h("tr", null,
        h("td", null, h("a", { href: "#projects", text: p.id })),
        h("td", { cls: "wide" }, w ? budgetBar(w, null, true) : h("span", { cls: "muted small", text: "no budget" })),
        h("td", { cls: "num" }, w ? h("span", { cls: "small", text: Math.round(pct(w.spent_usd + w.reserved_usd, w.limit_usd)) + "% of " + w.period }) : usd(p.spent_usd)),
        h("td", null, p.frozen ? h("span", { cls: "badge bad", text: "frozen" }) : ""));
    });
    fill(el, rows.length ? h("table", { cls: "plain" }, h("tbody", null, rows)) : h("p", { cls: "muted", text: "No projects." }));
  }

  /** The window with the least room left, as a share of its limit. */
  function tightest(p) {
    let best = null;
    for (const w of p.budgets || []) {
      const used = pct(w.spent_usd + w.reserved_usd, w.limit_usd);
      if (!best || used > best.used) best = { used, w };
    }
    return best && best.w;
  }

  function renderFleet(fleet) {
    const card = $("ov-fleet-card");
    card.hidden = !fleet;
    if (!fleet) return;
    const redis = fleet.redis || {};
    const rows = (fleet.instances || []).map((i) => h("tr", { "data-instance": i.id },
      h("td", null, h("b", { text: i.id }), i.self ? h("span", { cls: "badge", text: "this one" }) : ""),
      h("td", { text: i.version || "" }),
      h("td", null, "seen ", timeEl(i.last_seen)),
      h("td", { cls: "num" }, int(i.in_flight), h("span", { cls: "muted small", text: " in flight" }))));
    fill($("ov-fleet"),
      h("p", null, "Redis: ", h("span", { cls: "badge " + (redis.ok ? "ok" : "bad"), text: redis.ok ? "reachable" : "unreachable" }),
        redis.generation ? h("span", { cls: "muted small", text: " generation " + redis.generation }) : ""),
      rows.length ? h("table", { cls: "plain" }, h("tbody", null, rows)) : h("p", { cls: "muted", text: "No live instances." }));
  }

  // ---------- projects ----------

  function budgetBar(w, projection, compact) {
    const used = w.spent_usd + w.reserved_usd;
    const bar = h("div", {
      cls: "bar" + (used >= w.limit_usd ? " full" : used >= 0.8 * w.limit_usd ? " high" : "") + (compact ? " compact" : ""),
      role: "img",
      "aria-label": `${w.period}: ${usdShort(w.spent_usd)} spent, ${usdShort(w.reserved_usd)} reserved of ${usdShort(w.limit_usd)}`,
      "data-period": w.period,
      "data-spent": w.spent_usd,
      "data-reserved": w.reserved_usd,
      "data-limit": w.limit_usd,
    });
    const spent = h("div", { cls: "fill spent" });
    const reserved = h("div", { cls: "fill reserved" });
    spent.style.width = pct(w.spent_usd, w.limit_usd) + "%";
    reserved.style.width = Math.min(pct(w.reserved_usd, w.limit_usd), 100 - pct(w.spent_usd, w.limit_usd)) + "%";
    bar.append(spent, reserved);
    if (projection !== null && projection !== undefined && w.limit_usd > 0) {
      const m = h("div", { cls: "marker" + (projection > w.limit_usd ? " over" : ""), title: "Month-end at this pace: " + usdFull(projection) });
      m.style.left = Math.min(100, pct(projection, w.limit_usd)) + "%";
      bar.append(m);
    }
    bar.title = `${usdFull(w.spent_usd)} spent + ${usdFull(w.reserved_usd)} reserved of ${usdFull(w.limit_usd)}`;
    return bar;
  }

  function renderProjects() {
    const list = $("projects-list");
    const projects = state.projects || [];
    if (!projects.length) return fill(list, h("p", { cls: "card muted", text: "No projects are configured." }));
    const viewer = state.role !== "admin";
    fill(list, projects.map((p) => {
      const windows = (p.budgets || []).map((w) => {
        const proj = w.period === "month" ? p.projection_usd : null;
        return h("div", { cls: "window" },
          h("div", { cls: "window-head" },
            h("b", { text: w.period }),
            h("span", { cls: "small" }, usd(w.spent_usd), " spent",
              w.reserved_usd > 0 ? [" + ", usd(w.reserved_usd), " reserved"] : "",
              " of ", usd(w.limit_usd),
              h("span", { cls: "muted", text: ` (${Math.round(pct(w.spent_usd + w.reserved_usd, w.limit_usd))}%)` }))),
          budgetBar(w, proj),
          w.leased_usd !== undefined ? h("div", { cls: "muted small" }, "leased to instances: ", usd(w.leased_usd)) : "");
      });
      const month = (p.budgets || []).find((w) => w.period === "month");
      const over = month && p.projection_usd > month.limit_usd;
      const btn = h("button", {
        type: "button",
        cls: p.frozen ? "unfreeze" : "danger freeze",
        "data-project": p.id,
        "data-action": p.frozen ? "unfreeze" : "freeze",
        text: p.frozen ? "Unfreeze" : "Freeze",
        disabled: viewer,
        title: viewer ? "The viewer token is read-only" : p.frozen ? "Let this project's requests through again" : "Kill switch: refuse every request of this project (403 project_frozen)",
        onclick: () => askFreeze(p.id, !p.frozen),
      });
      return h("article", { cls: "card project" + (p.frozen ? " is-frozen" : ""), "data-project": p.id, "data-frozen": String(p.frozen) },
        h("div", { cls: "project-head" },
          h("div", null,
            h("h2", { text: p.id }),
            h("div", { cls: "meta" },
              p.frozen ? h("span", { cls: "badge bad state", text: "frozen" }) : h("span", { cls: "badge ok state", text: "serving" }),
              p.team ? h("span", { cls: "badge", text: "team " + p.team }) : "")),
          btn),
        windows.length ? windows : h("p", { cls: "muted small" }, "No budget: ", usd(p.spent_usd), " spent this month."),
        h("p", { cls: "projection small" + (over ? " over" : "") },
          "Month-end at this pace: ", usd(p.projection_usd),
          month ? [" of ", usd(month.limit_usd), over ? " — over budget" : ""] : ""),
        p.source === "local" ? h("p", { cls: "warn small", text: "Redis could not be read: this instance's own figures." }) : "");
    }));
  }

  async function loadProjects() {
    const r = await api("/admin/projects");
    state.projects = r.projects || [];
    if (state.view === "projects") renderProjects();
  }

  function confirmDialog(title, text, okLabel) {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    return new Promise((resolve) => {
      const done = (v) => {
        $("confirm-ok").onclick = null;
        $("confirm-cancel").onclick = null;
        d.onclose = null;
        if (d.open) d.close();
        resolve(v);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      d.onclose = () => done(false);
      d.showModal();
      $("confirm-cancel").focus();
    });
  }

  async function askFreeze(id, freeze) {
    const ok = await confirmDialog(
      freeze ? `Freeze ${id}?` : `Unfreeze ${id}?`,
      freeze
        ? `Every request of project ${id} will be refused with 403 project_frozen, from its next request on, until it is unfrozen.`
        : `Requests of project ${id} will be admitted again (budgets and controls still apply).`,
      freeze ? "Freeze project" : "Unfreeze project");
    if (!ok) return;
    try {
      const r = await api(`/admin/projects/${encodeURIComponent(id)}/${freeze ? "freeze" : "unfreeze"}`, { method: "POST" });
      toast(r.frozen ? `${r.id} is frozen: its requests now get 403 project_frozen.` : `${r.id} is unfrozen: its requests are admitted again.`, "ok");
    } catch (e) {
      showError(e);
    }
    try {
      await loadProjects();
    } catch (e) {
      showError(e);
    }
  }

  // ---------- charts ----------

  /** A stacked bar chart in SVG: one column per bucket, one `<g class="series">` per series. */
  function barChart(o) {
    const width = Math.max(280, Math.floor((o.el && o.el.clientWidth) || 600));
    const height = o.height || 260;
    const m = { l: 62, r: 10, t: 10, b: 26 };
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const n = o.buckets.length;
    const totals = o.buckets.map((_, i) => o.series.reduce((s, x) => s + (x.values[i] || 0), 0));
    const max = niceMax(Math.max(0, ...totals), o.integer);
    const root = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img", cls: "barchart",
      "aria-label": o.label || "chart", "data-buckets": n, "data-series-count": o.series.length,
    });
    const grid = svg("g", { cls: "grid" });
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const y = m.t + ph - (ph * i) / 4;
      grid.append(
        svg("line", { x1: m.l, x2: m.l + pw, y1: y, y2: y }),
        svg("text", { x: m.l - 6, y: y + 4, "text-anchor": "end", text: o.yFormat(v) }));
    }
    root.append(grid);
    const bw = n ? pw / n : pw;
    const barW = Math.max(1, bw * (n > 60 ? 0.9 : 0.72));
    const base = o.buckets.map(() => 0);
    const fmt = o.valueFormat || o.yFormat;
    for (const s of o.series) {
      const g = svg("g", { cls: "series " + s.cls, "data-series": s.key });
      s.values.forEach((v, i) => {
        if (!v) return;
        const hgt = max ? (v / max) * ph : 0;
        const y = m.t + ph - base[i] - hgt;
        base[i] += hgt;
        const iso = new Date(o.buckets[i]).toISOString().replace(/\.000Z$/, "Z");
        g.append(svg("rect", {
          x: (m.l + i * bw + (bw - barW) / 2).toFixed(2), y: y.toFixed(2), width: barW.toFixed(2), height: Math.max(0.5, hgt).toFixed(2),
          "data-bucket": iso, "data-value": v,
        }, svg("title", { text: `${s.label} · ${bucketLabel(o.buckets[i], o.bucketMs, true)} · ${fmt(v)}` })));
      });
      root.append(g);
    }
    // x labels, at least ~80 px apart
    const every = Math.max(1, Math.ceil(80 / Math.max(bw, 1)));
    const axis = svg("g", { cls: "axis" });
    axis.append(svg("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }));
    for (let i = 0; i < n; i += every) {
      axis.append(svg("text", { x: (m.l + i * bw + bw / 2).toFixed(2), y: height - 8, "text-anchor": "middle", text: bucketLabel(o.buckets[i], o.bucketMs, false) }));
    }
    root.append(axis);
    if (!totals.some((t) => t > 0)) {
      root.append(svg("text", { x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle", cls: "empty", text: "nothing in this range" }));
    }
    return root;
  }

  function bucketLabel(ms, bucketMs, long) {
    if (bucketMs >= DAY) return fmtDayUtc.format(ms) + (long ? " (UTC day)" : "");
    const d = new Date(ms);
    if (long) return fmtDateTime.format(ms).replace(/:00$/, "");
    return d.getHours() === 0 ? fmtDay.format(ms) : fmtHour.format(ms);
  }

  function niceMax(v, integer) {
    if (!(v > 0)) return integer ? 4 : 0.01;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
      const c = f * exp;
      if (c >= v) return integer ? Math.max(4, Math.ceil(c / 4) * 4) : c;
    }
    return v;
  }

  // ---------- ranges ----------

  function isoSeconds(ms) {
    return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  /** [from, to] in unix ms for a range preset (the API rounds out to whole hours). */
  function rangeOf(preset, fromDate, toDate) {
    const now = Date.now();
    const hourEnd = Math.floor(now / HOUR) * HOUR + HOUR;
    switch (preset) {
      case "7d": return [hourEnd - 7 * DAY, hourEnd];
      case "30d": return [hourEnd - 30 * DAY, hourEnd];
      case "month": {
        const d = new Date(now);
        return [Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1), hourEnd];
      }
      case "custom": {
        const f = Date.parse(fromDate + "T00:00:00Z");
        const t = Date.parse(toDate + "T00:00:00Z") + DAY;
        if (Number.isNaN(f) || Number.isNaN(t)) return null;
        return [f, t];
      }
      default: return [hourEnd - 24 * HOUR, hourEnd];
    }
  }

  // ---------- spend over time ----------

  function spendQuery(csv) {
    const group = $("spend-group").value;
    const bucket = $("spend-bucket").value;
    const r = rangeOf($("spend-range").value, $("spend-from").value, $("spend-to").value);
    if (!r) throw new ApiError(400, "invalid_range", "Pick a from and a to date");
    const q = new URLSearchParams({ group_by: group, bucket, from: isoSeconds(r[0]), to: isoSeconds(r[1]) });
    if (csv) q.set("format", "csv");
    return { q: q.toString(), group, bucket, range: r };
  }

  async function loadSpend() {
    let sq;
    try {
      sq = spendQuery(false);
    } catch (e) {
      return showError(e);
    }
    const chart = $("spend-chart");
    chart.classList.add("loading");
    try {
      const r = await api("/admin/spend?" + sq.q);
      state.spend = { sq, r };
      drawSpend();
    } finally {
      chart.classList.remove("loading");
    }
  }

  function drawSpend() {
    if (!state.spend) return;
    const { sq, r } = state.spend;
    const step = sq.bucket === "day" ? DAY : HOUR;
    const from = Date.parse(r.from);
    const to = Date.parse(r.to);
    const start = step === DAY ? Math.floor(from / DAY) * DAY : from;
    const buckets = [];
    for (let t = start; t < to; t += step) buckets.push(t);
    const index = new Map(buckets.map((b, i) => [b, i]));
    const by = new Map();
    for (const row of r.rows || []) {
      const key = row[sq.group] === null || row[sq.group] === undefined ? "(none)" : row[sq.group];
      const i = index.get(Date.parse(row.bucket));
      if (i === undefined || !row.cost_usd) continue;
      if (!by.has(key)) by.set(key, { key, total: 0, requests: 0, values: buckets.map(() => 0) });
      const s = by.get(key);
      s.values[i] += row.cost_usd;
      s.total += row.cost_usd;
      s.requests += row.requests;
    }
    let series = [...by.values()].sort((a, b) => b.total - a.total || (a.key < b.key ? -1 : 1));
    if (series.length > SERIES_MAX) {
      const rest = series.slice(SERIES_MAX - 1);
      const other = { key: "(other)", total: 0, requests: 0, values: buckets.map(() => 0) };
      for (const s of rest) {
        other.total += s.total;
        other.requests += s.requests;
        s.values.forEach((v, i) => { other.values[i] += v; });
      }
      series = series.slice(0, SERIES_MAX - 1).concat([other]);
    }
    series.forEach((s, i) => { s.cls = "c" + i; s.label = s.key; });
    const first = new Date(buckets[0] || from);
    const last = new Date((buckets[buckets.length - 1] || from) + step - 1);
    $("spend-title").textContent = `Spend by ${sq.group}, per ${sq.bucket}: ${fmtDay.format(first)} – ${fmtDay.format(last)}`;
    fill($("spend-chart"), barChart({
      el: $("spend-chart"), height: window.innerWidth < 600 ? 220 : 300, buckets, bucketMs: step, series,
      yFormat: usdShort, valueFormat: usdFull, label: `spend by ${sq.group}`,
    }));
    const total = (r.totals && r.totals.cost_usd) || 0;
    fill($("spend-legend"),
      series.map((s) => h("li", { "data-series": s.key },
        h("span", { cls: "swatch " + s.cls }), h("b", { text: s.key }), " ", usd(s.total),
        h("span", { cls: "muted small", text: ` · ${share(s.total, total)} · ${plural(s.requests, "request")}` }))),
      h("li", { cls: "total" }, "Total ", usd(total), h("span", { cls: "muted small", text: ` · ${plural((r.totals && r.totals.requests) || 0, "request")} (${int(r.totals && r.totals.blocked)} blocked)` })));
  }

  async function downloadCsv() {
    try {
      const sq = spendQuery(true);
      const text = await api("/admin/spend?" + sq.q, { text: true });
      const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      const a = h("a", { href: url, download: `tollgate-spend-${sq.group}-${sq.bucket}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      showError(e);
    }
  }

  // ---------- blocks ----------

  function hbars(items, opts) {
    const max = Math.max(0, ...items.map((i) => i.value));
    if (!items.length) return h("p", { cls: "muted", text: opts.empty });
    return h("table", { cls: "plain hbars" }, h("tbody", null, items.map((it) => {
      const b = h("div", { cls: "hbar " + (opts.cls || "") });
      b.style.width = Math.max(1, pct(it.value, max)) + "%";
      return h("tr", { "data-key": it.key, "data-value": it.value },
        h("td", { cls: "label" }, it.link ? h("a", { href: it.link, text: it.label }) : it.label),
        h("td", { cls: "wide" }, h("div", { cls: "track" }, b)),
        h("td", { cls: "num" }, opts.format(it.value), it.extra ? h("span", { cls: "muted small" }, it.extra) : ""));
    })));
  }

  async function loadBlocks() {
    const ov = state.overview;
    fill($("blocks-reasons"), hbars((ov.top_reasons || []).map((r) => ({
      key: r.reason, label: r.reason, value: r.count,
      link: "#decisions?" + new URLSearchParams({ decision: "block", reason: r.reason }).toString(),
    })), { cls: "c-block", format: int, empty: "Nothing was blocked in the last 24 hours." }));
    fill($("blocks-chart"), barChart({
      el: $("blocks-chart"), height: 170, bucketMs: HOUR,
      buckets: ov.hourly.map((b) => Date.parse(b.bucket)),
      series: [{ key: "blocked", label: "blocked", cls: "c-block", values: ov.hourly.map((b) => b.blocked) }],
      yFormat: int, integer: true,
    }));
    const r = rangeOf("24h");
    const q = new URLSearchParams({ group_by: "project", from: isoSeconds(r[0]), to: isoSeconds(r[1]) });
    const spend = await api("/admin/spend?" + q.toString());
    const rows = (spend.rows || []).filter((x) => x.blocked > 0).sort((a, b) => b.blocked - a.blocked);
    fill($("blocks-projects"), hbars(rows.map((x) => ({
      key: x.project, label: x.project || "(no project)", value: x.blocked,
      extra: ` of ${int(x.requests)}`,
      link: x.project ? "#decisions?" + new URLSearchParams({ decision: "block", project: x.project }).toString() : null,
    })), { cls: "c-block", format: int, empty: "No project had a request blocked in the last 24 hours." }));
  }

  // ---------- decisions ----------

  const FILTERS = ["project", "decision", "reason", "model", "user", "tag", "from", "to"];

  function localInputToIso(v) {
    if (!v) return "";
    const ms = new Date(v).getTime();
    return Number.isNaN(ms) ? "" : isoSeconds(ms);
  }

  function isoToLocalInput(iso) {
    const ms = Date.parse(iso);
    if (Number.isNaN(ms)) return "";
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function filterFromForm() {
    const f = {};
    for (const k of ["project", "decision", "reason", "model", "user", "tag"]) {
      const v = $("f-" + k).value.trim();
      if (v) f[k] = v;
    }
    const from = localInputToIso($("f-from").value);
    const to = localInputToIso($("f-to").value);
    if (from) f.from = from;
    if (to) f.to = to;
    return f;
  }

  function filterToForm(f) {
    for (const k of ["project", "decision", "reason", "model", "user", "tag"]) $("f-" + k).value = f[k] || "";
    $("f-from").value = f.from ? isoToLocalInput(f.from) : "";
    $("f-to").value = f.to ? isoToLocalInput(f.to) : "";
  }

  /** The same test the server applies, for records arriving on the live tail. */
  function matches(d, f) {
    for (const k of ["project", "decision", "reason", "model", "user"]) {
      if (f[k] && d[k] !== f[k]) return false;
    }
    if (f.tag) {
      const i = f.tag.indexOf(":");
      const name = f.tag.slice(0, i);
      const value = f.tag.slice(i + 1);
      if (!d.tags || d.tags[name] !== value) return false;
    }
    const t = Date.parse(d.time);
    if (f.from && t < Date.parse(f.from)) return false;
    if (f.to && t >= Date.parse(f.to)) return false;
    return true;
  }

  function decisionRow(d, live) {
    const tags = Object.entries(d.tags || {}).map(([k, v]) => h("span", { cls: "tag", text: `${k}=${v}` }));
    const blocked = d.decision === "block";
    return h("tr", {
      cls: (blocked ? "blocked" : "") + (live ? " new" : ""),
      "data-id": d.id, "data-project": d.project || "", "data-decision": d.decision, "data-reason": d.reason,
      "data-model": d.model || "", "data-user": d.user || "",
    },
      h("td", { cls: "nowrap" }, timeEl(d.time)),
      h("td", { text: d.project || "—" }),
      h("td", null,
        h("span", { cls: "badge " + (blocked ? "bad" : d.status >= 400 ? "warn" : "ok"), text: d.decision }),
        " ", h("span", { cls: "reason", text: d.reason }),
        h("span", { cls: "muted small", text: " " + d.status }),
        d.cache ? h("span", { cls: "badge", text: "cache " + d.cache }) : ""),
      h("td", { cls: "opt", text: d.model || "—" }),
      h("td", { cls: "opt", text: d.user || "" }),
      h("td", { cls: "num" }, usd(d.cost_usd)),
      h("td", { cls: "num opt" }, `${int(d.prompt_tokens)} / ${int(d.completion_tokens)}`),
      h("td", { cls: "num opt" }, d.latency_ms === null ? "—" : `${Math.round(d.latency_ms)} ms`),
      h("td", { cls: "opt tags" }, tags));
  }

  function decisionsQuery(f, cursor) {
    const q = new URLSearchParams(f);
    q.set("limit", "50");
    return "/admin/decisions?" + q.toString() + (cursor ? "&" + cursor : "");
  }

  async function loadDecisions(f) {
    state.filter = f;
    filterToForm(f);
    const r = await api(decisionsQuery(f));
    const rows = $("dec-rows");
    fill(rows, (r.decisions || []).map((d) => decisionRow(d, false)));
    state.next = r.next || null;
    $("dec-more").hidden = !state.next;
    summarize();
    if (state.tail) startTail(); // the project filter is the stream's own
  }

  function summarize() {
    const n = $("dec-rows").children.length;
    const active = Object.entries(state.filter).map(([k, v]) => `${k} = ${v}`);
    $("dec-summary").textContent = (n ? `${n} record${n === 1 ? "" : "s"}, newest first` : "No record matches") +
      (active.length ? " · " + active.join(", ") : "");
  }

  async function moreDecisions() {
    if (!state.next) return;
    const r = await api(decisionsQuery(state.filter, state.next));
    const rows = $("dec-rows");
    const have = new Set([...rows.children].map((tr) => tr.dataset.id));
    append(rows, (r.decisions || []).filter((d) => !have.has(d.id)).map((d) => decisionRow(d, false)));
    state.next = r.next || null;
    $("dec-more").hidden = !state.next;
    summarize();
  }

  function liveStatus(text, on) {
    $("live-status").textContent = text;
    const b = $("live");
    b.setAttribute("aria-pressed", on ? "true" : "false");
    b.classList.toggle("on", !!on);
    b.textContent = on ? "Stop live tail" : "Live tail";
  }

  function stopTail() {
    if (state.tail) {
      state.tail.controller.abort();
      clearTimeout(state.tail.retry);
    }
    state.tail = null;
    liveStatus("", false);
  }

  /** The live tail: SSE read through fetch (EventSource cannot send the Authorization header). */
  function startTail() {
    if (state.tail) {
      state.tail.controller.abort();
      clearTimeout(state.tail.retry);
    }
    const tail = { controller: new AbortController(), retry: null };
    state.tail = tail;
    liveStatus("connecting…", true);
    const f = state.filter;
    const path = "/admin/decisions/stream" + (f.project ? "?project=" + encodeURIComponent(f.project) : "");
    (async () => {
      const res = await api(path, { raw: true, signal: tail.controller.signal });
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          onTailEvent(event, tail);
        }
      }
      throw new Error("the gateway closed the stream");
    })().catch((e) => {
      if (state.tail !== tail || e.name === "AbortError") return;
      if (e.status === 401) return;
      if (e.status) {
        stopTail();
        return showError(e);
      }
      liveStatus("disconnected (" + e.message + "); reconnecting…", true);
      tail.retry = setTimeout(() => { if (state.tail === tail) startTail(); }, 3000);
    });
  }

  function onTailEvent(text, tail) {
    if (state.tail !== tail) return;
    let data = "";
    for (const line of text.split("\n")) {
      if (line.startsWith(": connected")) liveStatus("live: new records appear at the top", true);
      else if (line.startsWith(": ") && line.includes("skipped")) liveStatus(line.slice(2), true);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    let d;
    try {
      d = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!matches(d, state.filter)) return;
    const rows = $("dec-rows");
    if (rows.querySelector(`tr[data-id="${CSS.escape(d.id)}"]`)) return;
    rows.prepend(decisionRow(d, true));
    while (rows.children.length > 500) rows.lastElementChild.remove();
    summarize();
  }

  // ---------- users and tags ----------

  async function loadPeople() {
    const r = rangeOf($("people-range").value);
    const base = { from: isoSeconds(r[0]), to: isoSeconds(r[1]) };
    const tag = $("people-tag").value;
    const users = api("/admin/spend?" + new URLSearchParams({ ...base, group_by: "user" }).toString());
    const tags = tag ? api("/admin/spend?" + new URLSearchParams({ ...base, group_by: "tag:" + tag }).toString()) : null;
    const u = await users;
    const list = (u.rows || []).filter((x) => x.user !== null).sort((a, b) => b.cost_usd - a.cost_usd);
    fill($("people-users"), hbars(list.slice(0, 50).map((x) => ({
      key: x.user, label: x.user, value: x.cost_usd, extra: ` · ${plural(x.requests, "req", "req")}`,
      link: "#decisions?" + new URLSearchParams({ user: x.user }).toString(),
    })), { cls: "c0", format: (v) => usd(v), empty: "No end user sent a request in this range (x-tollgate-user or the body's user)." }));
    $("people-tag-title").textContent = tag ? `Spend per value of tag ${tag}` : "Spend per tag";
    if (!tags) {
      fill($("people-tags"), h("p", { cls: "muted", text: "No request carried tags in the last 30 days (x-tollgate-tags)." }));
      return;
    }
    const t = await tags;
    const col = "tag:" + tag;
    const tl = (t.rows || []).filter((x) => x[col] !== null).sort((a, b) => b.cost_usd - a.cost_usd);
    fill($("people-tags"), hbars(tl.slice(0, 50).map((x) => ({
      key: x[col], label: `${tag}=${x[col]}`, value: x.cost_usd, extra: ` · ${plural(x.requests, "req", "req")}`,
      link: "#decisions?" + new URLSearchParams({ tag: `${tag}:${x[col]}` }).toString(),
    })), { cls: "c1", format: (v) => usd(v), empty: `No request carried the tag ${tag} in this range.` }));
  }

  // ---------- routing ----------

  const VIEWS = {
    overview: { show: () => renderOverview(), refresh: async () => { await loadOverview(); renderOverview(); } },
    projects: { show: () => { renderProjects(); return loadProjects(); }, refresh: async () => { await loadOverview(); renderProjects(); } },
    spend: { show: () => (state.spend ? drawSpend() : loadSpend()), refresh: () => loadSpend() },
    blocks: { show: () => loadBlocks(), refresh: async () => { await loadOverview(); await loadBlocks(); } },
    decisions: { show: (q) => loadDecisions(q), refresh: () => loadDecisions(state.filter) },
    people: { show: () => loadPeople(), refresh: () => loadPeople() },
  };

  function parseHash() {
    const raw = location.hash.replace(/^#/, "");
    const [name, query] = raw.split("?");
    const q = {};
    for (const [k, v] of new URLSearchParams(query || "")) if (FILTERS.includes(k) && v) q[k] = v;
    return { name: VIEWS[name] ? name : "overview", q };
  }

  function route() {
    if (!state.token || !state.overview) return;
    const { name, q } = parseHash();
    if (name !== "decisions") stopTail();
    state.view = name;
    for (const a of document.querySelectorAll("#tabs a")) {
      if (a.dataset.view === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    for (const v of Object.keys(VIEWS)) $("v-" + v).hidden = v !== name;
    banner("");
    // aria-busy while the view reads the API (assistive tech and the browser test wait on it).
    const section = $("v-" + name);
    const turn = (route.turn = (route.turn || 0) + 1);
    section.setAttribute("aria-busy", "true");
    Promise.resolve()
      .then(() => VIEWS[name].show(q))
      .catch(showError)
      .finally(() => { if (route.turn === turn) section.removeAttribute("aria-busy"); });
  }

  // ---------- wiring ----------

  function init() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("token");
      const token = input.value.trim();
      input.value = "";
      if (!token) return showLogin("Enter the admin or viewer token.");
      signIn(token);
    });
    $("signout").addEventListener("click", () => signOut("Signed out."));
    $("refresh").addEventListener("click", () => {
      const v = VIEWS[state.view];
      if (v) Promise.resolve(v.refresh()).catch(showError);
    });
    $("reload").addEventListener("click", async () => {
      const ok = await confirmDialog("Reload the configuration?",
        "Tollgate reads its config file again and applies it, or keeps the running one if the file is invalid.", "Reload");
      if (!ok) return;
      try {
        await api("/admin/reload", { method: "POST" });
        toast("The configuration was reloaded.", "ok");
        await loadOverview();
        route();
      } catch (e) {
        showError(e);
      }
    });
    $("spend-form").addEventListener("submit", (e) => {
      e.preventDefault();
      loadSpend().catch(showError);
    });
    $("spend-range").addEventListener("change", () => {
      const custom = $("spend-range").value === "custom";
      $("spend-custom").hidden = !custom;
      if (custom && !$("spend-from").value) {
        const now = new Date();
        $("spend-to").value = now.toISOString().slice(0, 10);
        $("spend-from").value = new Date(now.getTime() - 6 * DAY).toISOString().slice(0, 10);
      }
      if (!custom) loadSpend().catch(showError);
    });
    for (const id of ["spend-group", "spend-bucket"]) {
      $(id).addEventListener("change", () => loadSpend().catch(showError));
    }
    $("spend-csv").addEventListener("click", downloadCsv);
    $("dec-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const f = filterFromForm();
      if (f.tag && f.tag.indexOf(":") < 1) return showError(new Error("A tag filter is NAME:VALUE, e.g. env:prod"));
      const hash = "#decisions" + (Object.keys(f).length ? "?" + new URLSearchParams(f).toString() : "");
      if (location.hash === hash) loadDecisions(f).catch(showError);
      else location.hash = hash;
    });
    $("dec-clear").addEventListener("click", () => { location.hash = "#decisions"; });
    $("dec-more").addEventListener("click", () => moreDecisions().catch(showError));
    $("live").addEventListener("click", () => (state.tail ? stopTail() : startTail()));
    $("people-form").addEventListener("submit", (e) => {
      e.preventDefault();
      loadPeople().catch(showError);
    });
    $("people-range").addEventListener("change", () => loadPeople().catch(showError));
    $("people-tag").addEventListener("change", () => loadPeople().catch(showError));
    window.addEventListener("hashchange", route);
    let resize = null;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => {
        if (state.view === "overview") renderOverview();
        else if (state.view === "spend") drawSpend();
        else if (state.view === "blocks" && state.overview) loadBlocks().catch(showError);
      }, 150);
    });

    let saved = null;
    try {
      saved = sessionStorage.getItem(TOKEN_KEY);
    } catch (_) { /* no storage: sign in each time */ }
    if (saved) {
      state.token = saved;
      loadOverview().then(() => {
        $("login").hidden = true;
        $("shell").hidden = false;
        route();
      }).catch((e) => {
        if (e.status !== 401) showLogin(e.message);
      });
    } else {
      showLogin("");
    }
  }

  init();
})();
