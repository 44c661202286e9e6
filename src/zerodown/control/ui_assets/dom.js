// DOM and number helpers: elements built with textContent (never innerHTML,
// so nothing the API returns can become markup), SVG, colours, formats.

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#9c36b5", "#c2255c", "#0b7285", "#5c940d"];
const colors = new Map(); // version -> colour, in the order versions are first seen

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

export function colorOf(version) {
  if (!colors.has(version)) colors.set(version, PALETTE[colors.size % PALETTE.length]);
  return colors.get(version);
}

export function swatch(version) {
  const node = el("span", { class: "swatch" });
  node.style.background = colorOf(version); // CSSOM, which the CSP allows (no style attribute)
  return node;
}

export function round(x) {
  return Math.round(x * 10) / 10;
}

export function pct(x) {
  return x === null || x === undefined ? "–" : `${round(x * 100)}%`;
}

export function ms(s) {
  if (s === null || s === undefined) return "–";
  return s < 0.01 ? `${(s * 1000).toFixed(2)} ms` : `${Math.round(s * 1000)} ms`;
}

export function num(x) {
  return typeof x === "number" ? x.toPrecision(2) : "–";
}

export function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

export function brief(data) {
  return Object.entries(data || {})
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}
