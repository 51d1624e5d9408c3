// Element builders. Text always goes in as text nodes, never parsed as HTML, so a value
// taken from events (a path, an event name, a referrer) can never become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

function applyProps(node, props) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (name === "text") node.textContent = String(value);
    else if (name === "on") for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style") Object.assign(node.style, value);
    else if (name.startsWith("on")) throw new Error(`set ${name} through the "on" object, not as an attribute`);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  return node;
}

/** Create an HTML element with attributes, listeners (`on`) and text or element children. */
export function h(tag, props, ...children) {
  return append(applyProps(document.createElement(tag), props), children);
}

/** Create an SVG element; attribute values are set as attributes, text as text nodes. */
export function s(tag, props, ...children) {
  return append(applyProps(document.createElementNS(SVG_NS, tag), props), children);
}

/** Replace every child of `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}
