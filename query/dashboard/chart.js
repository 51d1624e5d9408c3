// The time-series chart: an SVG line and area per bucket, the previous period as a dashed
// line, and a tooltip that follows the pointer. Drawn again whenever its box changes width.

import { h, s, replace } from "./dom.js";
import { formatBucket, formatCompact, formatInteger } from "./format.js";

const MARGIN = { top: 14, right: 20, bottom: 28, left: 52 };

/** Return about `count` round tick values from 0 to at least `max`. */
export function niceTicks(max, count = 4) {
  if (!(max > 0)) return [0, 1];
  const rough = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((candidate) => candidate >= rough);
  const ticks = [];
  for (let value = 0; value < max + step; value += step) ticks.push(value);
  return ticks;
}

function linePath(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
}

function draw(box, options) {
  const { rows, previous, metric, label, interval, timeZone } = options;
  const width = Math.max(box.clientWidth, 280);
  const height = width < 500 ? 200 : 260;
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = height - MARGIN.top - MARGIN.bottom;

  const values = rows.map((row) => row[metric] ?? 0);
  const previousValues = (previous ?? []).map((row) => row[metric] ?? 0);
  const ticks = niceTicks(Math.max(...values, ...previousValues, 0));
  const top = ticks[ticks.length - 1];
  const x = (i) => MARGIN.left + (rows.length === 1 ? plotWidth / 2 : (i * plotWidth) / (rows.length - 1));
  const y = (v) => MARGIN.top + plotHeight - (v / top) * plotHeight;

  const svg = s("svg", { class: "chart-svg", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${label} per ${interval}` });

  // Step 1: grid lines and y labels.
  for (const tick of ticks) {
    svg.append(s("line", { class: "chart-grid", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(tick), y2: y(tick) }));
    svg.append(s("text", { class: "chart-label", x: MARGIN.left - 8, y: y(tick) + 4, "text-anchor": "end" },
      formatCompact(tick)));
  }

  // Step 2: x labels, at most one per 80 px.
  const every = Math.max(1, Math.ceil(rows.length / Math.max(1, Math.floor(plotWidth / 80))));
  rows.forEach((row, i) => {
    if (i % every) return;
    const anchor = rows.length > 1 && i === 0 ? "start" : "middle";
    svg.append(s("text", { class: "chart-label", x: x(i), y: height - 8, "text-anchor": anchor },
      formatBucket(row.bucket, interval, timeZone)));
  });

  // Step 3: the previous period, then the current one on top.
  if (previousValues.length) {
    const points = previousValues.slice(0, rows.length).map((v, i) => [x(i), y(v)]);
    svg.append(s("path", { class: "chart-previous", d: linePath(points) }));
  }
  const points = values.map((v, i) => [x(i), y(v)]);
  const baseline = y(0);
  const area = `${linePath(points)}L${points[points.length - 1][0].toFixed(1)},${baseline}L${points[0][0].toFixed(1)},${baseline}Z`;
  svg.append(s("path", { class: "chart-area", d: area }));
  svg.append(s("path", { class: "chart-line", d: linePath(points) }));
  if (rows.length === 1) svg.append(s("circle", { class: "chart-dot", cx: points[0][0], cy: points[0][1], r: 4 }));

  // Step 4: the pointer's rule, dot and tooltip.
  const rule = s("line", { class: "chart-rule", y1: MARGIN.top, y2: MARGIN.top + plotHeight, visibility: "hidden" });
  const dot = s("circle", { class: "chart-dot", r: 4, visibility: "hidden" });
  const tip = h("div", { class: "chart-tip", hidden: true });
  const overlay = s("rect", { class: "chart-overlay", x: MARGIN.left, y: MARGIN.top, width: plotWidth, height: plotHeight });
  svg.append(rule, dot, overlay);

  function show(event) {
    const bounds = svg.getBoundingClientRect();
    const offset = event.clientX - bounds.left - MARGIN.left;
    const i = rows.length === 1 ? 0 : Math.round((offset / plotWidth) * (rows.length - 1));
    if (i < 0 || i >= rows.length) return;
    for (const [name, value] of [["x1", x(i)], ["x2", x(i)]]) rule.setAttribute(name, value);
    dot.setAttribute("cx", x(i));
    dot.setAttribute("cy", y(values[i]));
    rule.setAttribute("visibility", "visible");
    dot.setAttribute("visibility", "visible");
    replace(tip,
      h("div", { class: "chart-tip-time" }, formatBucket(rows[i].bucket, interval, timeZone, true)),
      h("div", {}, h("b", {}, formatInteger(values[i])), ` ${label.toLowerCase()}`),
      i < previousValues.length
        ? h("div", { class: "chart-tip-previous" }, `${formatInteger(previousValues[i])} previous period`) : null);
    tip.hidden = false;
    const left = Math.min(Math.max(x(i) - tip.offsetWidth / 2, 0), width - tip.offsetWidth);
    tip.style.left = `${left}px`;
  }
  function hide() {
    rule.setAttribute("visibility", "hidden");
    dot.setAttribute("visibility", "hidden");
    tip.hidden = true;
  }
  overlay.addEventListener("pointermove", show);
  overlay.addEventListener("pointerdown", show);
  overlay.addEventListener("pointerleave", hide);

  replace(box, svg, tip);
}

/**
 * Draw `rows` (`{bucket, [metric]: n}`) into `box`, with `previous` rows as a dashed line when
 * given, and draw again when the box's width changes. Returns the box.
 */
export function timeseriesChart(box, options) {
  if (!options.rows.length) {
    replace(box, h("p", { class: "empty" }, "No data in this period."));
    return box;
  }
  let drawnWidth = 0;
  let connected = false;
  const observer = new ResizeObserver(() => {
    // The box is built before it is attached; once attached and then removed, it is done.
    if (!box.isConnected) {
      if (connected) observer.disconnect();
      return;
    }
    connected = true;
    if (box.clientWidth === 0 || box.clientWidth === drawnWidth) return;
    drawnWidth = box.clientWidth;
    draw(box, options);
  });
  observer.observe(box);
  return box;
}
