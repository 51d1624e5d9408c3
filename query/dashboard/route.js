// The dashboard's state lives in the URL hash (`#/pages?site=…&period=7d&filter=…`), so a
// reload, the back button and a shared link all show the same view.

export const PAGES = [
  { id: "overview", label: "Overview" },
  { id: "pages", label: "Pages" },
  { id: "events", label: "Events" },
  { id: "traffic", label: "Traffic" },
  { id: "audience", label: "Audience" },
  { id: "network", label: "Network" },
];

export const PERIODS = [
  { id: "today", label: "Today" },
  { id: "24h", label: "Last 24 hours" },
  { id: "7d", label: "Last 7 days" },
  { id: "30d", label: "Last 30 days" },
  { id: "month", label: "This month" },
  { id: "year", label: "This year" },
  { id: "custom", label: "Custom range" },
];

export const DEFAULT_PERIOD = "30d";

export const FILTER_OPERATORS = { eq: "is", not: "is not", contains: "contains", in: "is one of" };

/** Split `dimension:op:value`; the value may itself contain colons. Returns null when malformed. */
export function parseFilter(text) {
  const first = text.indexOf(":");
  const second = text.indexOf(":", first + 1);
  if (first <= 0 || second < 0) return null;
  const filter = { dimension: text.slice(0, first), op: text.slice(first + 1, second), value: text.slice(second + 1) };
  return filter.op in FILTER_OPERATORS ? filter : null;
}

export function filterText(filter) {
  return `${filter.dimension}:${filter.op}:${filter.value}`;
}

/** Read the view from `location.hash`; unknown pages fall back to the overview. */
export function readRoute(hash = location.hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?", 2);
  const params = new URLSearchParams(query);
  const page = PAGES.some((p) => p.id === path) ? path : "overview";
  const period = PERIODS.some((p) => p.id === params.get("period")) ? params.get("period") : DEFAULT_PERIOD;
  const route = {
    page,
    site: params.get("site") ?? "",
    period,
    from: params.get("from") ?? "",
    to: params.get("to") ?? "",
    compare: params.get("compare") === "previous",
    filters: params.getAll("filter").map(parseFilter).filter(Boolean),
    view: {},
  };
  for (const [name, value] of params) {
    if (!["site", "period", "from", "to", "compare", "filter"].includes(name)) route.view[name] = value;
  }
  return route;
}

export function routeHash(route) {
  const params = new URLSearchParams();
  if (route.site) params.set("site", route.site);
  if (route.period !== DEFAULT_PERIOD) params.set("period", route.period);
  if (route.period === "custom") {
    params.set("from", route.from);
    params.set("to", route.to);
  }
  if (route.compare) params.set("compare", "previous");
  for (const filter of route.filters) params.append("filter", filterText(filter));
  for (const [name, value] of Object.entries(route.view)) if (value) params.set(name, value);
  const query = params.toString();
  return `#/${route.page}${query ? `?${query}` : ""}`;
}

/** Go to the view `route` with `changes` applied; `view` settings are page-specific and reset by a page change. */
export function navigate(route, changes) {
  const next = { ...route, ...changes };
  if (changes.page && changes.page !== route.page && !changes.view) next.view = {};
  location.hash = routeHash(next);
}

/** Return the query parameters every report shares: site, period, comparison and filters. */
export function reportParams(route) {
  const params = { site: route.site, period: route.period };
  if (route.period === "custom") Object.assign(params, { from: route.from, to: route.to });
  if (route.compare) params.compare = "previous";
  if (route.filters.length) params.filter = route.filters.map(filterText);
  return params;
}
