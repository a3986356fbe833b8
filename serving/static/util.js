// Small DOM and number helpers shared by the page's modules. Text always goes in as text nodes
// (never innerHTML), so class names and file names from anywhere cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An HTML element with attributes and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, same shape as h(). */
export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const byId = (id) => document.getElementById(id);

export function show(node, visible = true) {
  node.hidden = !visible;
  return node;
}

/** A number with `digits` decimals, or an en dash when there is none. */
export function num(value, digits = 2) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits);
}

/** A percentage of 0..100 (or of 0..1 with `fraction`). */
export function pct(value, digits = 1, fraction = false) {
  if (value === null || value === undefined) return "–";
  return `${(fraction ? value * 100 : value).toFixed(digits)}\u00a0%`; // no line break before %
}

/** Milliseconds, with fewer decimals as they grow. */
export function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0);
}

/** The width a chart should be drawn at: its container's, within sensible bounds. */
export function widthOf(node, fallback = 320) {
  const w = Math.floor(node.clientWidth || fallback);
  return Math.max(160, Math.min(w, 900));
}
