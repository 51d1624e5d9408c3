// Report tables: a card with a title, optional tabs, a CSV button and rows whose first cell
// carries a bar sized by the row's share of the largest value.

import { h, replace } from "./dom.js";
import { formatInteger } from "./format.js";

/** Build a card with a heading row (`title`, then `actions`) and a body, and return `{card, body}`. */
export function card(title, { actions = [], className = "", tabs = null } = {}) {
  const body = h("div", { class: "card-body" }, h("p", { class: "loading" }, "Loading…"));
  const head = h("div", { class: "card-head" }, h("h2", {}, title), h("div", { class: "card-actions" }, actions));
  const cardNode = h("section", { class: ["card", className] }, head, tabs, body);
  return { card: cardNode, body };
}

/** Build a row of tabs that marks the current one and calls `onChoose(id)` when another is chosen. */
export function tabBar(tabs, current, onChoose, label) {
  return h("div", { class: "tabs", role: "tablist", "aria-label": label },
    tabs.map((tab) => h("button", {
      type: "button",
      role: "tab",
      class: ["tab", tab.id === current && "active"],
      "aria-selected": tab.id === current ? "true" : "false",
      dataset: { tab: tab.id },
      on: { click: () => onChoose(tab.id) },
    }, tab.label)));
}

function cell(column, row) {
  const value = row[column.key];
  return h("td", { class: ["num", column.phone === false && "hide-phone"] },
    (column.format ?? formatInteger)(value));
}

/**
 * Build the rows of a report. `label(row)` is the row's value (null or "" shows as `emptyLabel`),
 * `display(row)` the text shown for it when that differs, `barKey` sizes the bars against
 * `barMax`, and `onSelect(row)` runs on a click or Enter.
 */
export function tableRows(rows, { columns, label, display, barKey, barMax, onSelect, emptyLabel = "(none)" }) {
  return rows.map((row) => {
    const text = label(row);
    const labelText = text === null || text === "" ? emptyLabel : (display?.(row) ?? text);
    const share = barMax > 0 ? Math.min(1, (row[barKey] ?? 0) / barMax) : 0;
    const clickable = Boolean(onSelect) && text !== null && text !== undefined && text !== "";
    const labelCell = h("td", { class: "label" },
      h("div", { class: "bar", style: { width: `${(share * 100).toFixed(2)}%` } }),
      h("span", { class: ["label-text", (text === null || text === "") && "muted"], title: text ?? emptyLabel }, labelText));
    const tr = h("tr", { class: ["row", clickable && "clickable"] }, labelCell, columns.map((column) => cell(column, row)));
    if (clickable) {
      tr.tabIndex = 0;
      tr.title = `Filter by ${labelText}`;
      tr.addEventListener("click", () => onSelect(row));
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onSelect(row);
        }
      });
    }
    return tr;
  });
}

/** Build a table with a header for `labelHeading` and `columns`, filled by `tableRows`. */
export function reportTable(rows, options) {
  const head = h("tr", {},
    h("th", { class: "label", scope: "col" }, options.labelHeading),
    options.columns.map((column) => h("th", {
      class: ["num", column.phone === false && "hide-phone"], scope: "col",
    }, column.label)));
  const body = h("tbody", {}, tableRows(rows, options));
  return { table: h("table", { class: "report" }, h("thead", {}, head), body), body };
}

/** Show `message` in a card body, styled as an error when `error` is true. */
export function showMessage(body, message, error = false) {
  replace(body, h("p", { class: error ? "error" : "empty" }, message));
}
