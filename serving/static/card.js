// The model card: what is served, its exits and operating points, the calibration curve.

import { getBlob } from "./api.js";
import { byId, fill, h, num, pct, show } from "./util.js";

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}

/** The one-line summary under the page title. */
export function modelLine(model) {
  const k = model.exits.length;
  const full = model.exits[k - 1].mflops;
  return `${model.name} · ${model.preset || model.arch} on ${model.dataset || "its data set"} · ` +
    `${k} exits, ${num(full)} MFLOPs for the full network · ${model.provider}`;
}

export function renderModelCard(model, config) {
  const facts = byId("model-facts");
  const input = model.input || {};
  const names = model.class_names || [];
  const shown = names.slice(0, 6).join(", ") + (names.length > 6 ? ", …" : "");
  fill(
    facts,
    fact("name", model.name),
    fact("architecture", model.preset ? `${model.arch} (preset ${model.preset})` : model.arch),
    fact("data set", model.dataset || "–"),
    fact("classes", `${model.num_classes}: ${shown}`),
    fact("input", `${input.channels} × ${input.size} × ${input.size}`),
    fact("runs on", `${model.backend}, ${model.provider} (${model.device})`),
    fact("weights", `sha256 ${model.weights_sha256.slice(0, 16)}…`),
  );

  fill(
    byId("model-exits").tBodies[0],
    model.exits.map((e) => h(
      "tr", {},
      h("td", {}, String(e.exit)),
      h("td", {}, num(e.mflops)),
      h("td", {}, num(e.params_m, 3)),
      h("td", {}, e.heldout_accuracy === undefined ? "–" : pct(e.heldout_accuracy)),
      h("td", {}, e.test_accuracy === undefined || e.test_accuracy === null ? "–" : pct(e.test_accuracy)),
    )),
  );

  const points = [...model.operating_points].sort((a, b) => a.expected_mflops - b.expected_mflops);
  show(byId("model-uncalibrated"), points.length === 0);
  show(byId("model-points"), points.length > 0);
  show(byId("model-points-note"), points.length > 0);
  fill(
    byId("model-points").tBodies[0],
    points.map((p) => h(
      "tr", {},
      h("td", {}, p.name + (p.name === model.default_operating_point ? " (default)" : "")),
      h("td", {}, p.target_mflops === null || p.target_mflops === undefined ? "–" : num(p.target_mflops)),
      h("td", {}, num(p.expected_mflops)),
      h("td", {}, pct(p.heldout.accuracy)),
      h("td", {}, p.test ? pct(p.test.accuracy) : "–"),
    )),
  );

  if (config.calibration_curve) loadCurve();
}

async function loadCurve() {
  try {
    const blob = await getBlob("/v1/model/curve.png");
    const img = byId("curve-img");
    img.src = URL.createObjectURL(blob);
    show(byId("curve"));
  } catch {
    // The card is complete without the picture; the tables carry the same numbers.
  }
}
