// The dashboard shell: sign-in, the header (site, live count, theme), the period and filter
// controls, the stale-data banner and the page chosen by the URL hash.

import { ApiError, forgetKey, getJson, storeKey, storedKey } from "./api.js";
import { h, replace } from "./dom.js";
import { formatInteger } from "./format.js";
import { FILTER_OPERATORS, PAGES, PERIODS, navigate, readRoute, reportParams, routeHash } from "./route.js";
import { VIEWS } from "./views.js";

const LIVE_INTERVAL_MS = 5000;
const THEME_KEY = "weir.theme";
const THEMES = ["auto", "light", "dark"];

const root = document.getElementById("app");
const session = { sites: null, controller: null, renderId: 0 };
const live = { site: null, timer: null, node: h("span", { class: "live", "aria-live": "off" }, "live: …") };

// ---- theme ----

function currentTheme() {
  const stored = localStorage.getItem(THEME_KEY);
  return THEMES.includes(stored) ? stored : "auto";
}

function applyTheme(theme = currentTheme()) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

function themeButton() {
  const theme = currentTheme();
  const icons = { auto: "◐", light: "☀", dark: "☾" };
  return h("button", {
    type: "button", class: "button icon", title: `Theme: ${theme} (click to change)`, "aria-label": `Theme: ${theme}`,
    on: {
      click: (event) => {
        const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
        localStorage.setItem(THEME_KEY, next);
        applyTheme(next);
        event.currentTarget.replaceWith(themeButton());
      },
    },
  }, icons[theme]);
}

// ---- sign-in ----

function signIn(message = "") {
  stopLive();
  session.sites = null;
  const input = h("input", {
    class: "input", type: "password", name: "key", required: true, autocomplete: "off", spellcheck: "false",
    "aria-label": "API key", placeholder: "API key",
  });
  const error = h("p", { class: "error", role: "alert", hidden: !message }, message);
  const button = h("button", { type: "submit", class: "button primary" }, "Sign in");
  const form = h("form", { class: "card signin-card" },
    h("div", { class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }), "Weir"),
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Enter one of the API keys from the API_KEYS setting. The key is kept for this tab only."),
    input, error, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const key = input.value.trim();
    try {
      const answer = await getJson("/api/sites", {}, { key });
      storeKey(key);
      session.sites = answer.data;
      await render();
    } catch (failure) {
      error.hidden = false;
      replace(error, failure.status === 401 ? "That API key was rejected." : failure.message);
      button.disabled = false;
    }
  });
  replace(root, h("main", { class: "signin" }, form));
  root.dataset.state = "signin";
  input.focus();
}

function signOut() {
  forgetKey();
  signIn();
}

// ---- live visitors ----

async function pollLive() {
  if (!live.site || document.hidden) return;
  const site = live.site;
  try {
    const answer = await getJson("/api/live", { site });
    if (site !== live.site) return;
    live.node.className = "live on";
    live.node.title = answer.pageviews_last_minute === undefined
      ? "Visitors in the last few minutes" : `${formatInteger(answer.pageviews_last_minute)} pageviews in the last minute`;
    replace(live.node, h("span", { class: "pulse", "aria-hidden": "true" }), `${formatInteger(answer.visitors)} live`);
  } catch (error) {
    if (site !== live.site) return;
    live.node.className = "live off";
    live.node.title = error.message;
    replace(live.node, "live: unavailable");
  }
}

function startLive(site) {
  if (live.site === site && live.timer) return;
  stopLive();
  live.site = site;
  replace(live.node, "live: …");
  pollLive();
  live.timer = setInterval(pollLive, LIVE_INTERVAL_MS);
}

function stopLive() {
  clearInterval(live.timer);
  live.timer = null;
  live.site = null;
}

// ---- toasts and the stale banner ----

function notify(message) {
  const toast = h("div", { class: "toast", role: "status" }, message);
  document.body.append(toast);
  setTimeout(() => toast.remove(), 6000);
}

/** Collects the freshness of every response of one render and shows a banner when any table is stale. */
class FreshnessBanner {
  constructor() {
    this.node = h("div", { class: "banner", role: "alert", hidden: true });
    this.stale = new Map();
    this.notes = new Set();
  }

  add(freshness) {
    if (!freshness) return;
    for (const [table, state] of Object.entries(freshness.tables ?? {})) {
      if (state.stale && !this.stale.has(table)) this.stale.set(table, state);
    }
    for (const warning of freshness.warnings ?? []) this.notes.add(warning);
    this.show();
  }

  show() {
    if (!this.stale.size && !this.notes.size) return;
    const warned = [...this.notes];
    // A stale table that no warning names still gets a line of its own.
    const unnamed = [...this.stale].filter(([table]) => !warned.some((text) => text.includes(table)))
      .map(([table, state]) => `${table} is stale: last written ${state.last_write_at ?? "never"}`);
    const tables = [...this.stale.keys()];
    this.node.className = `banner ${tables.length ? "stale" : "notice"}`;
    this.node.hidden = false;
    this.node.dataset.tables = tables.join(" ");
    replace(this.node,
      h("strong", {}, tables.length
        ? `Out of date: ${tables.join(", ")}. Figures below may be missing recent events.`
        : "Freshness could not be fully checked."),
      h("ul", {}, [...warned, ...unnamed].map((text) => h("li", {}, text))));
  }
}

// ---- controls ----

function siteSwitcher(route) {
  return h("select", {
    class: "select", "aria-label": "Site",
    on: { change: (event) => navigate(route, { site: event.target.value, filters: [] }) },
  }, session.sites.map((site) => h("option", { value: site.domain, selected: site.domain === route.site }, site.domain)));
}

function today() {
  const now = new Date();
  return new Date(now.getTime() - now.getTimezoneOffset() * 60_000).toISOString().slice(0, 10);
}

function daysBefore(day, days) {
  return new Date(Date.parse(day) - days * 86_400_000).toISOString().slice(0, 10);
}

function periodControls(route) {
  const period = h("select", {
    class: "select", "aria-label": "Period",
    on: {
      change: (event) => {
        const value = event.target.value;
        const changes = { period: value };
        if (value === "custom" && !route.from) Object.assign(changes, { from: daysBefore(today(), 6), to: today() });
        navigate(route, changes);
      },
    },
  }, PERIODS.map((p) => h("option", { value: p.id, selected: p.id === route.period }, p.label)));

  const controls = [period];
  if (route.period === "custom") {
    const dateInput = (name, value) => h("input", {
      class: "input date", type: "date", name, value, max: today(), "aria-label": name === "from" ? "From" : "To",
      on: { change: (event) => changeRange(route, name, event.target.value) },
    });
    controls.push(h("span", { class: "range" }, dateInput("from", route.from), "–", dateInput("to", route.to)));
  }
  const compare = h("input", {
    type: "checkbox", checked: route.compare,
    on: { change: (event) => navigate(route, { compare: event.target.checked }) },
  });
  controls.push(h("label", { class: "toggle" }, compare, "Compare to previous period"));
  return h("div", { class: "period" }, controls);
}

function changeRange(route, name, value) {
  if (!value) return;
  const range = { from: route.from, to: route.to, [name]: value };
  // Keep the range the right way round: moving one end past the other moves both.
  if (range.from > range.to) {
    if (name === "from") range.to = value;
    else range.from = value;
  }
  navigate(route, range);
}

function filterChips(route) {
  if (!route.filters.length) return null;
  const remove = (index) => navigate(route, { filters: route.filters.filter((_, i) => i !== index) });
  const chips = route.filters.map((filter, index) => {
    const value = filter.op === "in" ? filter.value.split("|").join(", ") : filter.value;
    const description = `${filter.dimension.replace(/_/g, " ")} ${FILTER_OPERATORS[filter.op]} ${value}`;
    return h("span", { class: "chip", dataset: { filter: `${filter.dimension}:${filter.op}` } },
      h("span", { class: "chip-dimension" }, filter.dimension.replace(/_/g, " ")),
      h("span", { class: "chip-op" }, FILTER_OPERATORS[filter.op]),
      h("span", { class: "chip-value", title: value }, value),
      h("button", {
        type: "button", class: "chip-remove", "aria-label": `Remove filter: ${description}`, title: "Remove filter",
        on: { click: () => remove(index) },
      }, "×"));
  });
  if (route.filters.length > 1) {
    chips.push(h("button", { type: "button", class: "button link", on: { click: () => navigate(route, { filters: [] }) } },
      "Clear all"));
  }
  return h("div", { class: "filters", "aria-label": "Filters" }, chips);
}

function pageNav(route) {
  return h("nav", { class: "nav", "aria-label": "Pages" }, PAGES.map((page) => h("a", {
    href: routeHash({ ...route, page: page.id, view: {} }),
    class: ["nav-link", page.id === route.page && "active"],
    "aria-current": page.id === route.page ? "page" : null,
  }, page.label)));
}

function header(route) {
  return h("header", { class: "topbar" },
    h("a", { class: "brand", href: routeHash({ ...route, page: "overview", view: {} }) },
      h("span", { class: "logo", "aria-hidden": "true" }), "Weir"),
    siteSwitcher(route),
    live.node,
    h("span", { class: "spacer" }),
    themeButton(),
    h("button", { type: "button", class: "button", on: { click: signOut } }, "Sign out"));
}

// ---- render ----

function context(route, renderId, banner, signal) {
  const pending = [];
  const ctx = {
    route,
    params: reportParams(route),
    pending,
    notify,
    setView: (changes) => navigate(route, { view: { ...route.view, ...changes } }),
    addFilter(dimension, value) {
      const exists = route.filters.some((f) => f.dimension === dimension && f.op === "eq" && f.value === value);
      if (!exists) navigate(route, { filters: [...route.filters, { dimension, op: "eq", value }] });
    },
    load(path, params) {
      const promise = getJson(path, params, { signal }).then((answer) => {
        if (renderId === session.renderId) banner.add(answer.freshness);
        return answer;
      }, (error) => {
        if (error instanceof ApiError && error.status === 401) signIn("The API key was rejected; sign in again.");
        throw error;
      });
      pending.push(promise);
      return promise;
    },
  };
  return ctx;
}

async function loadSites() {
  try {
    session.sites = (await getJson("/api/sites")).data;
    return true;
  } catch (error) {
    if (error.status === 401) signIn(storedKey() ? "The API key was rejected; sign in again." : "");
    else replace(root, h("main", { class: "signin" }, h("div", { class: "card signin-card" },
      h("h1", {}, "The API did not answer"), h("p", { class: "error" }, error.message),
      h("button", { type: "button", class: "button primary", on: { click: render } }, "Try again"))));
    return false;
  }
}

async function render() {
  if (!storedKey()) return signIn();
  if (!session.sites && !(await loadSites())) return;
  const route = readRoute();
  if (!session.sites.length) {
    replace(root, h("main", { class: "signin" }, h("div", { class: "card signin-card" }, h("h1", {}, "No sites yet"),
      h("p", {}, "Add a site with the command line, then reload:"),
      h("pre", {}, "weir site add example.com --timezone Europe/Berlin"))));
    root.dataset.state = "ready";
    return;
  }
  if (!session.sites.some((site) => site.domain === route.site)) {
    history.replaceState(null, "", routeHash({ ...route, site: session.sites[0].domain }));
    return render();
  }

  session.controller?.abort();
  session.controller = new AbortController();
  const renderId = ++session.renderId;
  const banner = new FreshnessBanner();
  const ctx = context(route, renderId, banner, session.controller.signal);
  const main = h("main", { class: "content", dataset: { page: route.page } });
  // Keep the old height while the new responses load, so a click low on the page keeps its place.
  const previousHeight = root.querySelector("main.content")?.offsetHeight ?? 0;
  main.style.minHeight = `${previousHeight}px`;
  replace(root,
    header(route),
    h("div", { class: "controls" }, periodControls(route), filterChips(route)),
    pageNav(route),
    banner.node,
    main);
  document.title = `${PAGES.find((p) => p.id === route.page).label} · ${route.site} · Weir`;
  startLive(route.site);
  root.dataset.state = "loading";
  VIEWS[route.page](ctx, main);
  for (const strip of root.querySelectorAll(".nav, .tabs")) revealActive(strip);

  await Promise.allSettled(ctx.pending);
  if (renderId !== session.renderId || root.dataset.state !== "loading") return;
  main.style.minHeight = "";
  root.dataset.state = "ready";
}

/** Scroll a strip of links sideways so its active one is in view; the page itself does not move. */
function revealActive(strip) {
  const active = strip.querySelector(".active");
  if (!active || strip.scrollWidth <= strip.clientWidth) return;
  const stripBox = strip.getBoundingClientRect();
  const activeBox = active.getBoundingClientRect();
  strip.scrollLeft += activeBox.left - stripBox.left - (stripBox.width - activeBox.width) / 2;
}

applyTheme();
window.addEventListener("hashchange", render);
document.addEventListener("visibilitychange", pollLive);
render();
