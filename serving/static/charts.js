// Hand-written SVG charts, drawn at their container's pixel width so text stays legible at any
// screen size. Colours come from CSS classes (style.css): the page's CSP allows no inline CSS.

import { num, s } from "./util.js";

/**
 * The network's exits as a strip of numbered stations, evenly spaced, with each exit's
 * cumulative MFLOPs underneath: exits before `stopped` are passed, `stopped` is where the image
 * left, later ones were never computed.
 */
export function exitStrip(exits, stopped, width) {
  const height = 64;
  const pad = 26;
  const y = 30;
  const k = exits.length;
  const spacing = k === 1 ? width : (width - 2 * pad) / (k - 1);
  const r = Math.max(6, Math.min(11, spacing / 2 - 3));
  // Too tight for every cost under its exit (many exits, a phone): label the stop and the end.
  const labelled = (e) => spacing >= 40 || e.exit === stopped || e.exit === k;
  const x = (i) => (k === 1 ? width / 2 : pad + i * spacing);
  const label = `Exits of the network: stopped at exit ${stopped} of ${k}, ` +
    `${num(exits[stopped - 1].mflops)} of ${num(exits[k - 1].mflops)} MFLOPs`;
  const svg = s("svg", {
    class: "strip", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
  });
  for (let i = 0; i + 1 < k; i++) {
    const ran = i + 1 < stopped;
    svg.append(s("line", {
      x1: x(i) + r, y1: y, x2: x(i + 1) - r, y2: y, class: ran ? "s-accent" : "s-skip", "stroke-width": 3,
    }));
  }
  exits.forEach((e, i) => {
    const state = e.exit < stopped ? "passed" : e.exit === stopped ? "stopped" : "skipped";
    const circle = s("circle", {
      cx: x(i), cy: y, r,
      class: state === "stopped" ? "c-accent" : state === "passed" ? "c-soft" : "c-track",
    });
    circle.append(s("title", {}, `exit ${e.exit}: ${num(e.mflops)} MFLOPs cumulative (${state})`));
    svg.append(circle);
    svg.append(s("text", {
      x: x(i), y: y + 4, "text-anchor": "middle", class: state === "stopped" ? "c-on-accent" : "c-ink",
      "font-weight": state === "stopped" ? 700 : 400,
    }, String(e.exit)));
    if (labelled(e)) {
      svg.append(s("text", {
        x: x(i), y: y + 11 + 14, "text-anchor": "middle", class: state === "skipped" ? "c-muted" : "c-ink",
      }, num(e.mflops)));
    }
  });
  svg.append(s("text", {
    x: x(stopped - 1), y: 11, "text-anchor": k === 1 ? "middle" : stopped === 1 ? "start" : stopped === k ? "end" : "middle",
    class: "c-accent", "font-weight": 600,
  }, "stopped here"));
  return svg;
}

/** A horizontal bar: `value` out of `total`. */
export function bar(value, total, cls = "c-accent") {
  const share = total > 0 ? Math.max(0, Math.min(1, value / total)) : 0;
  const svg = s("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", "aria-hidden": "true" });
  svg.append(s("rect", { x: 0, y: 0, width: 100, height: 10, rx: 2, class: "c-track" }));
  if (share > 0) svg.append(s("rect", { x: 0, y: 0, width: 100 * share, height: 10, rx: 2, class: cls }));
  return svg;
}

/** Vertical bars with a label under each and the value over it. */
export function columns(values, labels, width, format, ariaLabel) {
  const height = 110;
  const top = 16;
  const bottom = 18;
  const n = values.length;
  const max = Math.max(...values, 1e-12);
  const slot = width / n;
  const w = Math.min(48, slot * 0.6);
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": ariaLabel });
  svg.append(s("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "s-line" }));
  values.forEach((v, i) => {
    const cx = slot * (i + 0.5);
    const bh = ((height - top - bottom) * v) / max;
    if (bh > 0) {
      svg.append(s("rect", { x: cx - w / 2, y: height - bottom - bh, width: w, height: bh, rx: 2, class: "c-accent" }));
    }
    svg.append(s("text", { x: cx, y: height - bottom - bh - 4, "text-anchor": "middle", class: "c-ink" }, format(v)));
    svg.append(s("text", { x: cx, y: height - 4, "text-anchor": "middle", class: "c-muted" }, labels[i]));
  });
  return svg;
}

/**
 * A series over time (oldest first): bars, or a line with dots where values are null-free.
 * `reference`: an optional dashed horizontal line (e.g. the expected MFLOPs), with its label.
 */
export function series(values, width, { kind = "bars", format = (v) => num(v), reference = null, ariaLabel = "" } = {}) {
  const height = 90;
  const top = 14;
  const bottom = 16;
  const present = values.filter((v) => v !== null && v !== undefined);
  const peak = Math.max(...present, reference ? reference.value : 0, 1e-12);
  const n = values.length;
  const step = width / n;
  const yOf = (v) => height - bottom - ((height - top - bottom) * v) / peak;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": ariaLabel });
  svg.append(s("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "s-line" }));
  if (kind === "bars") {
    values.forEach((v, i) => {
      if (!v) return;
      svg.append(s("rect", { x: i * step + 1, y: yOf(v), width: Math.max(1, step - 2), height: height - bottom - yOf(v), class: "c-accent" }));
    });
  } else {
    let path = "";
    values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const cx = (i + 0.5) * step;
      path += `${path && values[i - 1] !== null && values[i - 1] !== undefined ? "L" : "M"}${cx.toFixed(1)},${yOf(v).toFixed(1)} `;
      svg.append(s("circle", { cx, cy: yOf(v), r: 2.5, class: "c-accent" }));
    });
    if (path) svg.append(s("path", { d: path.trim(), class: "s-accent", "stroke-width": 2 }));
  }
  if (reference) {
    const ry = yOf(reference.value);
    svg.append(s("line", { x1: 0, y1: ry, x2: width, y2: ry, class: "s-dash" }));
    svg.append(s("text", { x: width - 2, y: ry - 3, "text-anchor": "end", class: "c-muted" }, reference.label));
  }
  const last = present.length ? present[present.length - 1] : null;
  svg.append(s("text", { x: 2, y: 10, class: "c-ink" }, last === null ? "no requests" : `now ${format(last)}`));
  svg.append(s("text", { x: 2, y: height - 3, class: "c-muted" }, "-60 s"));
  svg.append(s("text", { x: width - 2, y: height - 3, "text-anchor": "end", class: "c-muted" }, "now"));
  return svg;
}

/** One row per operating point: a p50 bar, extended to p99 in a lighter shade. */
export function latencyRows(points, width) {
  const row = 22;
  const labelW = Math.min(90, width * 0.3);
  const textW = 112;
  const height = row * points.length + 4;
  const max = Math.max(...points.map((p) => p.p99_ms || 0), 1e-9);
  const span = Math.max(20, width - labelW - textW);
  const svg = s("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": points.map((p) => `${p.name}: p50 ${num(p.p50_ms)} ms, p99 ${num(p.p99_ms)} ms`).join("; "),
  });
  points.forEach((p, i) => {
    const y = i * row + 4;
    svg.append(s("text", { x: 0, y: y + 12, class: "c-ink" }, p.name.length > 12 ? `${p.name.slice(0, 11)}…` : p.name));
    svg.append(s("rect", { x: labelW, y: y + 2, width: (span * p.p99_ms) / max, height: 12, rx: 2, class: "c-soft" }));
    svg.append(s("rect", { x: labelW, y: y + 2, width: (span * p.p50_ms) / max, height: 12, rx: 2, class: "c-accent" }));
    svg.append(s("text", { x: width, y: y + 12, "text-anchor": "end", class: "c-muted" }, `${num(p.p50_ms)} / ${num(p.p99_ms)} ms`));
  });
  return svg;
}
