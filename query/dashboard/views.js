// The six pages. Each view appends its cards to `main` at once, with "Loading…" bodies, and
// fills each card when its response arrives, so one slow report never holds up the others.
//
// `ctx` (built in app.js for each render) carries `route`, `params` (site, period, comparison
// and filters for every report), `load(path, params)`, `setView(changes)` and `addFilter(dimension, value)`.

import { downloadCsv } from "./api.js";
import { timeseriesChart } from "./chart.js";
import { h, replace } from "./dom.js";
import { formatChange, formatDecimal, formatDuration, formatInteger, formatPercent } from "./format.js";
import { card, reportTable, showMessage, tabBar, tableRows } from "./table.js";

const DETAIL_LIMIT = 25;
const OVERVIEW_LIMIT = 8;
const CSV_LIMIT = 1000;

const STATS = [
  { key: "visitors", label: "Visitors", chart: true },
  { key: "pageviews", label: "Pageviews", chart: true },
  { key: "sessions", label: "Sessions", chart: true },
  { key: "bounce_rate", label: "Bounce rate", format: formatPercent, lowerIsBetter: true },
  { key: "avg_session_duration_s", label: "Session duration", format: formatDuration },
  { key: "pageviews_per_session", label: "Pages / session", format: formatDecimal },
  { key: "events", label: "Events" },
  { key: "bot_pageviews", label: "Bot pageviews", neutral: true },
];

// Intervals the chart offers for each period, the first being the default.
const INTERVALS = {
  today: ["hour", "minute"],
  "24h": ["hour", "minute"],
  "7d": ["day", "hour"],
  "30d": ["day", "week"],
  month: ["day", "week"],
  year: ["month", "week", "day"],
};

const COLUMNS = {
  visitors: { key: "visitors", label: "Visitors" },
  pageviews: { key: "pageviews", label: "Pageviews" },
  sessions: { key: "sessions", label: "Sessions" },
  events: { key: "events", label: "Events" },
  bounceRate: { key: "bounce_rate", label: "Bounce", format: formatPercent, phone: false },
  duration: { key: "avg_session_duration_s", label: "Duration", format: formatDuration, phone: false },
};

const PAGE_KINDS = [
  { id: "top", label: "Top pages", filter: "page" },
  { id: "entry", label: "Entry pages", filter: "entry_page" },
  { id: "exit", label: "Exit pages", filter: "exit_page" },
];

const TRAFFIC_DIMENSIONS = [
  { id: "channel", label: "Channels", column: "Channel" },
  { id: "source", label: "Sources", column: "Source" },
  { id: "referrer", label: "Referrers", column: "Referrer" },
  { id: "utm_source", label: "UTM source", column: "utm_source" },
  { id: "utm_medium", label: "UTM medium", column: "utm_medium" },
  { id: "utm_campaign", label: "UTM campaign", column: "utm_campaign" },
];

const AUDIENCE_DIMENSIONS = [
  { id: "country", label: "Countries", column: "Country" },
  { id: "region", label: "Regions", column: "Region" },
  { id: "city", label: "Cities", column: "City" },
  { id: "browser", label: "Browsers", column: "Browser" },
  { id: "os", label: "Operating systems", column: "Operating system" },
  { id: "device", label: "Devices", column: "Device" },
  { id: "screen", label: "Screen sizes", column: "Screen size" },
];

const NETWORK_DIMENSIONS = [
  { id: "org_type", label: "Network types", column: "Network type" },
  { id: "org", label: "Organisations", column: "Organisation" },
  { id: "asn", label: "AS numbers", column: "AS number" },
  { id: "response_tier", label: "Response tiers", column: "Response tier" },
  { id: "government", label: "Government", column: "Government" },
];

const regionNames = new Intl.DisplayNames(undefined, { type: "region", fallback: "code" });

/** Return a country's name for its ISO 3166 code, or the value itself when it is no such code. */
function countryName(code) {
  if (!/^[A-Z]{2}$/.test(code ?? "")) return code;
  try {
    return regionNames.of(code);
  } catch {
    return code;
  }
}

function chosen(options, id) {
  return options.find((option) => option.id === id) ?? options[0];
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

function showError(body, error) {
  if (error.name === "AbortError") return;
  showMessage(body, `Could not load this report: ${error.message}`, true);
}

function csvButton(ctx, name, path, params) {
  const button = h("button", { type: "button", class: "button small", title: "Download this table as CSV" }, "CSV");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const filename = `${ctx.route.site}-${name}-${ctx.route.period}.csv`;
      await downloadCsv(path, { ...params, limit: CSV_LIMIT, offset: undefined }, filename);
    } catch (error) {
      ctx.notify(`CSV download failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/**
 * A card holding one report table. `spec`: title, path, params, labelHeading, label(row),
 * columns, barKey, filter (the dimension a row click filters on, or null), limit, more (offer
 * "Show more"), tabs (`{items, current, onChoose}`) and footer(response) for extra figures.
 */
function tablePanel(ctx, spec) {
  const params = { ...ctx.params, ...spec.params };
  delete params.compare;
  const limit = spec.limit ?? DETAIL_LIMIT;
  const tabs = spec.tabs ? tabBar(spec.tabs.items, spec.tabs.current, spec.tabs.onChoose, spec.title) : null;
  const { card: node, body } = card(spec.title, {
    actions: [csvButton(ctx, spec.csvName ?? slug(spec.title), spec.path, params)], tabs, className: "table-card",
  });
  node.dataset.report = spec.id ?? slug(spec.title);
  const onSelect = spec.onSelect ?? (spec.filter ? (row) => ctx.addFilter(spec.filter, spec.label(row)) : null);

  ctx.load(spec.path, { ...params, limit }).then((answer) => {
    const rows = answer.data ?? [];
    if (!rows.length) {
      showMessage(body, spec.emptyText ?? "No data in this period.");
      if (spec.footer) body.append(spec.footer(answer));
      return;
    }
    const options = { ...spec, barMax: Math.max(...rows.map((row) => row[spec.barKey] ?? 0)), onSelect };
    const { table, body: tbody } = reportTable(rows, options);
    replace(body, table);
    if (spec.more && rows.length === limit) body.append(moreButton(ctx, spec.path, params, limit, tbody, options));
    if (spec.footer) body.append(spec.footer(answer));
  }).catch((error) => showError(body, error));
  return node;
}

function moreButton(ctx, path, params, limit, tbody, options) {
  let offset = limit;
  const button = h("button", { type: "button", class: "button more" }, "Show more");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await ctx.load(path, { ...params, limit, offset });
      const rows = answer.data ?? [];
      tbody.append(...tableRows(rows, options));
      offset += rows.length;
      if (rows.length < limit) button.remove();
    } catch (error) {
      ctx.notify(`Could not load more rows: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function statCard(stat, ctx) {
  const value = h("div", { class: "stat-value", dataset: { stat: stat.key } }, "…");
  const change = h("div", { class: "stat-change" });
  const label = h("div", { class: "stat-label" }, stat.label);
  if (!stat.chart) return { node: h("div", { class: "stat" }, label, value, change), value, change };
  const active = (ctx.route.view.metric ?? "visitors") === stat.key;
  const node = h("button", {
    type: "button", class: ["stat", "chartable", active && "active"], "aria-pressed": active ? "true" : "false",
    title: `Chart ${stat.label.toLowerCase()}`,
    on: { click: () => ctx.setView({ metric: stat.key }) },
  }, label, value, change);
  return { node, value, change };
}

function fillStat(slot, stat, answer) {
  const format = stat.format ?? formatInteger;
  replace(slot.value, format(answer[stat.key]));
  if (!answer.comparison) return;
  const change = formatChange(answer[stat.key], answer.comparison[stat.key]);
  if (!change) return;
  let verdict = "neutral";
  if (!stat.neutral && change.direction !== "flat") {
    verdict = (change.direction === "up") !== Boolean(stat.lowerIsBetter) ? "good" : "bad";
  }
  const arrow = { up: "▲", down: "▼", flat: "" }[change.direction];
  slot.change.className = `stat-change ${verdict}`;
  slot.change.title = `Previous period: ${format(answer.comparison[stat.key])}`;
  replace(slot.change, `${arrow} ${change.text}`.trim());
}

function intervalsFor(route) {
  if (route.period !== "custom") return INTERVALS[route.period] ?? ["day"];
  const days = (Date.parse(route.to) - Date.parse(route.from)) / 86_400_000 + 1;
  if (!(days > 0)) return ["day"];
  if (days <= 2) return ["hour", "day"];
  if (days <= 92) return ["day", "week", "hour"];
  return ["week", "month", "day"];
}

function chartPanel(ctx) {
  const intervals = intervalsFor(ctx.route);
  const interval = intervals.includes(ctx.route.view.interval) ? ctx.route.view.interval : intervals[0];
  const metric = STATS.find((stat) => stat.chart && stat.key === ctx.route.view.metric) ?? STATS[0];
  const picker = h("select", { class: "select small", "aria-label": "Interval", on: {
    change: (event) => ctx.setView({ interval: event.target.value }),
  } }, intervals.map((id) => h("option", { value: id, selected: id === interval }, `by ${id}`)));
  const { card: node, body } = card(`${metric.label} over time`, { actions: [picker], className: "chart-card" });
  node.dataset.report = "timeseries";
  body.classList.add("chart-box");

  ctx.load("/api/timeseries", { ...ctx.params, interval }).then((answer) => {
    timeseriesChart(body, {
      rows: answer.data ?? [],
      previous: answer.comparison?.data ?? null,
      metric: metric.key,
      label: metric.label,
      interval,
      timeZone: answer.timezone,
    });
    if (answer.comparison?.data) {
      node.querySelector(".card-actions").prepend(h("span", { class: "legend" },
        h("span", { class: "swatch current" }), "This period", h("span", { class: "swatch previous" }), "Previous"));
    }
  }).catch((error) => showError(body, error));
  return node;
}

function overview(ctx, main) {
  const slots = STATS.map((stat) => ({ stat, ...statCard(stat, ctx) }));
  const stats = h("section", { class: "stats", "aria-label": "Totals", dataset: { report: "overview" } },
    slots.map((slot) => slot.node));
  main.append(stats, chartPanel(ctx), h("div", { class: "grid-2" },
    tablePanel(ctx, {
      id: "top-pages", title: "Top pages", path: "/api/pages", params: { kind: "top" }, labelHeading: "Page",
      label: (row) => row.path, columns: [COLUMNS.pageviews, COLUMNS.visitors], barKey: "pageviews",
      filter: "page", limit: OVERVIEW_LIMIT,
    }),
    tablePanel(ctx, {
      id: "top-sources", title: "Top sources", path: "/api/traffic", params: { dimension: "source" },
      labelHeading: "Source", label: (row) => row.value, columns: [COLUMNS.visitors, COLUMNS.sessions],
      barKey: "visitors", filter: "source", limit: OVERVIEW_LIMIT, emptyLabel: "Direct / none",
    })));

  ctx.load("/api/overview", ctx.params).then((answer) => {
    for (const slot of slots) fillStat(slot, slot.stat, answer);
  }).catch((error) => {
    for (const slot of slots) replace(slot.value, "–");
    if (error.name !== "AbortError") stats.append(h("p", { class: "error wide" }, `Could not load totals: ${error.message}`));
  });
}

function pages(ctx, main) {
  const kind = chosen(PAGE_KINDS, ctx.route.view.tab);
  const columns = kind.id === "top"
    ? [COLUMNS.pageviews, COLUMNS.visitors]
    : [COLUMNS.sessions, COLUMNS.visitors, COLUMNS.bounceRate];
  main.append(tablePanel(ctx, {
    id: `pages-${kind.id}`, title: "Pages", csvName: `pages-${kind.id}`, path: "/api/pages", params: { kind: kind.id }, labelHeading: "Page",
    label: (row) => row.path, columns, barKey: columns[0].key, filter: kind.filter, more: true,
    tabs: { items: PAGE_KINDS, current: kind.id, onChoose: (tab) => ctx.setView({ tab }) },
  }));
}

function breakdownPanel(ctx, eventName) {
  const property = ctx.route.view.property ?? "";
  const input = h("input", {
    class: "input small", type: "text", name: "property", value: property, placeholder: "property, e.g. plan",
    "aria-label": "Property to break down by", autocomplete: "off", spellcheck: "false",
  });
  const form = h("form", { class: "inline-form" }, input, h("button", { type: "submit", class: "button small" }, "Break down"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.setView({ property: input.value.trim() });
  });
  if (!property) {
    const { card: node, body } = card(`Properties of ${eventName}`, { actions: [form], className: "table-card" });
    node.dataset.report = "event-breakdown";
    showMessage(body, "Name a property of this event to see its values.");
    return node;
  }
  const node = tablePanel(ctx, {
    id: "event-breakdown", title: `${eventName} by ${property}`, path: "/api/events",
    params: { event: eventName, breakdown: property }, labelHeading: property, label: (row) => row.value,
    columns: [COLUMNS.events, COLUMNS.visitors], barKey: "events", filter: null, more: true,
  });
  node.querySelector(".card-actions").prepend(form);
  return node;
}

function events(ctx, main) {
  main.append(tablePanel(ctx, {
    id: "events", title: "Events", path: "/api/events", labelHeading: "Event", label: (row) => row.name,
    columns: [COLUMNS.events, COLUMNS.visitors], barKey: "events", filter: "event", more: true,
    emptyText: "No custom events in this period.",
  }));
  const selected = ctx.route.filters.find((filter) => filter.dimension === "event" && filter.op === "eq");
  if (selected) main.append(breakdownPanel(ctx, selected.value));
  else main.append(h("p", { class: "hint" }, "Choose an event to filter every page by it and break it down by a property."));
}

function dimensionPage(ctx, main, { title, path, dimensions, columns, footer }) {
  const dimension = chosen(dimensions, ctx.route.view.dimension);
  const display = dimension.id === "country" ? (row) => countryName(row.value) : null;
  main.append(tablePanel(ctx, {
    id: `${slug(title)}-${dimension.id}`, title, path, params: { dimension: dimension.id },
    csvName: `${slug(title)}-${dimension.id}`, labelHeading: dimension.column, label: (row) => (row.value === null || row.value === undefined ? null : String(row.value)),
    display, columns, barKey: "visitors", filter: dimension.id, more: true, footer,
    tabs: { items: dimensions, current: dimension.id, onChoose: (id) => ctx.setView({ dimension: id }) },
  }));
}

function traffic(ctx, main) {
  dimensionPage(ctx, main, {
    title: "Traffic", path: "/api/traffic", dimensions: TRAFFIC_DIMENSIONS,
    columns: [COLUMNS.visitors, COLUMNS.sessions, COLUMNS.bounceRate, COLUMNS.duration],
  });
}

function audience(ctx, main) {
  dimensionPage(ctx, main, {
    title: "Audience", path: "/api/audience", dimensions: AUDIENCE_DIMENSIONS,
    columns: [COLUMNS.visitors, COLUMNS.sessions],
  });
}

function network(ctx, main) {
  dimensionPage(ctx, main, {
    title: "Network", path: "/api/network", dimensions: NETWORK_DIMENSIONS,
    columns: [COLUMNS.visitors, COLUMNS.sessions],
    footer: (answer) => h("p", { class: "footnote", dataset: { stat: "government_share" } },
      "Government share of visitors: ", h("b", {}, formatPercent(answer.government_share))),
  });
}

export const VIEWS = { overview, pages, events, traffic, audience, network };
