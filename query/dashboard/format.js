// Number, duration and date formats, in the browser's locale.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });

export const DASH = "–";

export function formatInteger(value) {
  return value === null || value === undefined ? DASH : integer.format(value);
}

export function formatDecimal(value) {
  return value === null || value === undefined ? DASH : decimal.format(value);
}

export function formatCompact(value) {
  return value === null || value === undefined ? DASH : compact.format(value);
}

/** Format a share given as a fraction (0.42 → "42%"). */
export function formatPercent(fraction) {
  return fraction === null || fraction === undefined ? DASH : percent.format(fraction);
}

/** Format seconds as "45s", "3m 05s" or "2h 07m". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return DASH;
  const total = Math.round(seconds);
  if (total < 60) return `${total}s`;
  const minutes = Math.floor(total / 60);
  if (minutes < 60) return `${minutes}m ${String(total % 60).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
}

/**
 * Return the change from `previous` to `current` as `{text, direction}`, where direction is
 * "up", "down" or "flat". Returns null when either value is missing.
 */
export function formatChange(current, previous) {
  if (current === null || current === undefined || previous === null || previous === undefined) return null;
  if (previous === 0) {
    if (current === 0) return { text: "0%", direction: "flat" };
    return { text: "new", direction: "up" };
  }
  const change = (current - previous) / Math.abs(previous);
  const rounded = Math.round(change * 1000) / 10;
  if (rounded === 0) return { text: "0%", direction: "flat" };
  return { text: `${rounded > 0 ? "+" : ""}${decimal.format(rounded)}%`, direction: rounded > 0 ? "up" : "down" };
}

function formatDate(date, options) {
  try {
    return new Intl.DateTimeFormat(undefined, options).format(date);
  } catch (error) {
    // An unknown time zone name: show the time in UTC rather than nothing.
    return new Intl.DateTimeFormat(undefined, { ...options, timeZone: "UTC" }).format(date);
  }
}

function isLocalMidnight(date, timeZone) {
  const options = { timeZone, hour: "numeric", minute: "numeric", hourCycle: "h23" };
  let parts;
  try {
    parts = new Intl.DateTimeFormat("en-US", options).formatToParts(date);
  } catch (error) {
    parts = new Intl.DateTimeFormat("en-US", { ...options, timeZone: "UTC" }).formatToParts(date);
  }
  const value = (type) => Number(parts.find((part) => part.type === type)?.value);
  return value("hour") === 0 && value("minute") === 0;
}

/**
 * Format an ISO time for an axis or a tooltip (`long`), at the precision of `interval`, in
 * `timeZone`. An axis label of an hour or minute at local midnight shows the date instead.
 */
export function formatBucket(iso, interval, timeZone, long = false) {
  const date = new Date(iso);
  const options = { timeZone };
  if (interval === "minute" || interval === "hour") {
    if (!long && isLocalMidnight(date, timeZone)) return formatDate(date, { timeZone, month: "short", day: "numeric" });
    Object.assign(options, { hour: "numeric", minute: "2-digit" });
    if (long) Object.assign(options, { month: "short", day: "numeric" });
  } else if (interval === "month") {
    Object.assign(options, { month: "short", year: long ? "numeric" : "2-digit" });
  } else {
    Object.assign(options, { month: "short", day: "numeric" });
    if (long) options.weekday = "short";
  }
  return formatDate(date, options);
}
