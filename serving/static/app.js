// The playground: pick images, move the budget, see where each image left the network and what
// it cost. Everything shown comes from this server's API (see docs/serving.md, "The page").

import { ApiError, classify, getBlob, getJSON, pageConfig, setKey, storedKey } from "./api.js";
import { modelLine, renderModelCard } from "./card.js";
import { bar, exitStrip } from "./charts.js";
import { byId, fill, h, ms, num, pct, show, widthOf } from "./util.js";
import { refreshLive, startLive } from "./live.js";

// Request parameters that only some servers accept: a control shows only when the server lists
// the parameter in /playground/config.json, and its value is sent only then. `read` turns the
// control into the parameter's value (null: not sent).
const OPTIONAL_CONTROLS = [
  {
    param: "deadline_ms",
    box: "deadline-control",
    input: "deadline-ms",
    read: (input) => (input.value.trim() === "" ? null : Number(input.value)),
  },
];

// Why an image left where it did (the response's `stopped`).
const STOP_REASONS = {
  confident: "confident enough at this exit for the operating point",
  cap: "the exit cap (max_exit) or the network's last exit",
  deadline: "the next stage would not have finished before deadline_ms",
  overload: "answered from the exit it had passed to make room in the server's full queue",
};

const state = {
  config: null,
  model: null,
  stops: [], // the budget slider's positions: {label, params, mflops, accuracy}
  images: [], // [{name, blob, url}], what the next request sends
  optional: [], // the OPTIONAL_CONTROLS this server accepts
  seq: 0, // requests sent; only the latest one's answer is drawn
  last: null, // {body, timing, images}
  debounce: null,
};

function status(message) {
  const line = byId("status");
  line.textContent = message || "";
  show(line, Boolean(message));
}

// --- start: settings, API key, model ------------------------------------------------------------

async function boot() {
  try {
    state.config = await pageConfig();
  } catch (err) {
    status(`The page cannot start: ${err.message}`);
    return;
  }
  state.optional = OPTIONAL_CONTROLS.filter((c) => state.config.parameters.includes(c.param));
  for (const control of state.optional) show(byId(control.box));
  if (state.config.api_key_required && !storedKey()) {
    askKey();
    return;
  }
  if (state.config.api_key_required) setKey(storedKey());
  await start();
}

function askKey(problem = "") {
  const form = byId("key-form");
  show(form);
  const error = byId("key-error");
  error.textContent = problem;
  show(error, Boolean(problem));
  byId("model-line").textContent = "Waiting for the API key.";
  byId("key-input").focus();
}

byId("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(byId("key-input").value.trim());
  start();
});

let starting = false;

async function start() {
  if (starting || state.model) return; // a second Enter on the key form, say
  starting = true;
  try {
    state.model = await getJSON("/v1/model");
  } catch (err) {
    starting = false;
    if (err instanceof ApiError && err.status === 401) {
      setKey(null);
      askKey(err.message);
    } else if (err instanceof ApiError && err.status === 503) {
      status(`${err.message}; trying again in a few seconds…`);
      setTimeout(start, 3000);
    } else {
      status(`The model description is unavailable: ${err.message}`);
    }
    return;
  }
  status("");
  show(byId("key-form"), false);
  byId("key-input").value = "";
  const model = state.model;
  byId("model-line").textContent = modelLine(model);
  renderModelCard(model, state.config);
  setUpControls(model);
  show(byId("main"));
  loadSamples();
  startLive(model);
}

// --- controls -----------------------------------------------------------------------------------

/**
 * The slider's positions: the calibrated operating points, cheapest first (a budget equal to a
 * point's expected MFLOPs selects that point), then the full network (max_exit = K). A bundle
 * without calibration gets its exits instead (anytime, max_exit = k).
 */
function budgetStops(model) {
  const k = model.exits.length;
  const lastExit = model.exits[k - 1];
  const stops = [];
  const seen = new Set();
  const points = [...model.operating_points].sort((a, b) => a.expected_mflops - b.expected_mflops);
  for (const p of points) {
    if (seen.has(p.expected_mflops)) continue; // one budget cannot tell two such points apart
    seen.add(p.expected_mflops);
    stops.push({
      label: p.name, short: p.name, params: { budget_mflops: p.expected_mflops },
      mflops: p.expected_mflops, accuracy: p.heldout.accuracy, name: p.name,
    });
  }
  if (stops.length === 0) {
    for (const e of model.exits) {
      stops.push({
        label: `exit ${e.exit}`, short: `exit ${e.exit}`, params: { max_exit: e.exit },
        mflops: e.mflops, accuracy: e.heldout_accuracy ?? null,
      });
    }
  } else {
    stops.push({
      label: "full network", short: "full", params: { max_exit: k },
      mflops: lastExit.mflops, accuracy: lastExit.heldout_accuracy ?? null,
    });
  }
  return stops;
}

function describeStop(stop) {
  const full = state.model.exits[state.model.exits.length - 1].mflops;
  const share = pct((100 * stop.mflops) / full, 0);
  const acc = stop.accuracy === null || stop.accuracy === undefined ? "" : `, held-out accuracy ${pct(stop.accuracy)}`;
  const cost = "budget_mflops" in stop.params
    ? `${num(stop.mflops)} MFLOPs per image expected (${share} of the full network)`
    : `${num(stop.mflops)} MFLOPs per image`;
  return `${stop.label}: ${cost}${acc}`;
}

function setUpControls(model) {
  state.stops = budgetStops(model);
  const slider = byId("budget");
  slider.max = String(state.stops.length - 1);
  const preferred = state.stops.findIndex((s) => s.name && s.name === model.default_operating_point);
  slider.value = String(preferred >= 0 ? preferred : state.stops.length - 1);
  const ticks = byId("budget-ticks");
  fill(ticks, state.stops.map((stop, i) => {
    // The cost always; the name only when it is short (the ticks must not collide on a phone).
    const tick = h("span", {}, num(stop.mflops, 1), h("br"), stop.short.length <= 6 ? stop.short : "");
    tick.style.left = `${state.stops.length === 1 ? 0 : (100 * i) / (state.stops.length - 1)}%`;
    return tick;
  }));
  showBudget();

  const cap = byId("max-exit");
  fill(cap, h("option", { value: "" }, "none"), model.exits.map((e) => h(
    "option", { value: String(e.exit) }, `exit ${e.exit} (${num(e.mflops)} MFLOPs)`)));
  const topK = byId("top-k");
  topK.max = String(model.num_classes);
  topK.value = String(Math.min(3, model.num_classes));

  slider.addEventListener("input", () => { showBudget(); schedule(); });
  for (const id of ["max-exit", "top-k", ...state.optional.map((c) => c.input)]) {
    byId(id).addEventListener("change", schedule);
  }
  byId("top-k").addEventListener("input", schedule);
}

function showBudget() {
  const slider = byId("budget");
  const text = describeStop(state.stops[Number(slider.value)]);
  byId("budget-out").textContent = text;
  slider.setAttribute("aria-valuetext", text);
}

/** The request's parameters from the controls. */
function currentParams() {
  const stop = state.stops[Number(byId("budget").value)];
  const params = { ...stop.params };
  const cap = byId("max-exit").value;
  if (cap !== "") params.max_exit = Math.min(Number(cap), params.max_exit ?? Infinity);
  const topK = byId("top-k").value.trim();
  if (topK !== "") params.top_k = Number(topK);
  for (const control of state.optional) {
    const value = control.read(byId(control.input));
    if (value !== null) params[control.param] = value;
  }
  return params;
}

// --- images -------------------------------------------------------------------------------------

function useImages(images) {
  for (const old of state.images) if (old.owned) URL.revokeObjectURL(old.url);
  const limit = state.model.limits.max_images_per_request;
  const error = byId("request-error");
  if (images.length > limit) {
    error.textContent = `This server takes at most ${limit} images per request; sending the first ${limit}.`;
    show(error);
    images = images.slice(0, limit);
  } else {
    show(error, false);
  }
  state.images = images;
  for (const button of document.querySelectorAll(".sample")) {
    button.setAttribute("aria-pressed", String(images.some((i) => i.sample === button.dataset.index)));
  }
  run();
}

function fromFiles(files) {
  const images = [...files].filter((f) => !f.type || f.type.startsWith("image/"));
  if (images.length) {
    useImages(images.map((f) => ({ name: f.name, blob: f, url: URL.createObjectURL(f), owned: true })));
  }
}

byId("file-input").addEventListener("change", (event) => {
  fromFiles(event.target.files);
  event.target.value = ""; // choosing the same file again still counts as a change
});

const drop = byId("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  fromFiles(event.dataTransfer.files);
});

async function loadSamples() {
  let listing;
  try {
    listing = await getJSON("/v1/samples");
  } catch (err) {
    listing = { samples: [], note: `no sample images: ${err.message}` };
  }
  const note = byId("samples-note");
  note.textContent = listing.note || "";
  show(note, Boolean(listing.note));
  if (!listing.samples.length) return;
  const samples = await Promise.all(listing.samples.map(async (item) => {
    const blob = await getBlob(item.url);
    return { ...item, blob, url: URL.createObjectURL(blob) };
  }));
  const list = byId("sample-list");
  fill(list, samples.map((sample) => {
    const button = h(
      "button", { type: "button", class: "sample", "data-index": sample.index, "aria-pressed": "false" },
      h("img", { src: sample.url, alt: "" }),
      h("span", {}, sample.class_name),
    );
    button.setAttribute("aria-label", `Classify held-out image ${sample.heldout_index} (a ${sample.class_name})`);
    button.addEventListener("click", () => useImages([asImage(sample)]));
    return button;
  }));
  byId("all-samples").addEventListener("click", () => useImages(samples.map(asImage)));
  show(byId("samples"));
}

function asImage(sample) {
  return {
    name: `heldout-${sample.heldout_index}.png`, blob: sample.blob, url: sample.url,
    sample: String(sample.index), truth: sample.class_name,
  };
}

// --- classification -----------------------------------------------------------------------------

function schedule() {
  clearTimeout(state.debounce);
  state.debounce = setTimeout(run, 120);
}

async function run() {
  if (!state.images.length) return;
  const seq = ++state.seq;
  const images = state.images;
  const results = byId("results");
  results.setAttribute("aria-busy", "true");
  try {
    const answer = await classify(images, currentParams());
    if (seq !== state.seq) return; // a newer request is on its way
    show(byId("request-error"), false);
    state.last = { ...answer, images };
    renderResults();
    refreshLive();
  } catch (err) {
    if (seq !== state.seq) return;
    const error = byId("request-error");
    error.textContent = `The server refused the request: ${err.message}`;
    show(error);
  } finally {
    if (seq === state.seq) results.setAttribute("aria-busy", "false");
  }
}

function renderResults() {
  if (!state.last) return;
  const { body, timing, images } = state.last;
  const model = state.model;
  const full = model.exits[model.exits.length - 1].mflops;
  const point = body.operating_point;
  const expected = point.expected_mflops === null ? "" : ` (expected ${num(point.expected_mflops)} MFLOPs per image)`;
  const phases = ["decode", "queue", "compute"].filter((p) => p in timing).map((p) => `${p} ${ms(timing[p])}`);
  const line = byId("request-line");
  line.dataset.seq = String(state.seq);
  const moved = [
    point.degraded_from ? `stepped down from ${point.degraded_from} under load` : "",
    point.controlled ? "thresholds moved by budget control" : "",
  ].filter(Boolean);
  fill(
    line,
    `Operating point ${point.name}${expected}${moved.length ? ` (${moved.join("; ")})` : ""}. `,
    `${images.length === 1 ? "This image" : `These ${images.length} images`}: `,
    h("strong", {}, `${num(body.mean_mflops)} MFLOPs`), " per image. Server time ",
    h("strong", { "data-field": "server-ms" }, `${ms(timing.app)} ms`),
    phases.length ? ` (${phases.join(", ")} ms).` : ".",
  );
  const results = byId("results");
  fill(results, body.results.map((r, i) => resultCard(r, images[i], full)));
  // Drawn once the cards are laid out, at the width they got.
  for (const [i, card] of [...results.children].entries()) {
    const box = card.querySelector(".strip-box");
    box.append(exitStrip(model.exits, body.results[i].exit, widthOf(box, 360)));
  }
}

function resultCard(r, image, full) {
  const truth = image && image.truth ? ` · true class ${image.truth}` : "";
  const card = h(
    "article", {
      class: "result", "data-exit": r.exit, "data-mflops": r.mflops, "data-class-id": r.class_id,
      "data-stopped": r.stopped,
      "aria-label": `${image ? image.name : `image ${r.index + 1}`}: ${r.class_name}, exit ${r.exit}`,
    },
    h("img", { src: image ? image.url : "", alt: "" }),
    h(
      "div", {},
      h("h3", {}, r.class_name, " ", h("span", { class: "conf" }, pct(r.confidence, 1, true))),
      h(
        "p", { class: "meta" },
        `${image ? image.name : ""}${truth} · left at exit `,
        h("strong", { "data-field": "exit" }, String(r.exit)), ` of ${state.model.exits.length} `,
        h("span", { class: "why", "data-field": "stopped", title: STOP_REASONS[r.stopped] || "" },
          `(${r.stopped})`),
      ),
      h("div", { class: "strip-box" }),
      h(
        "div", { class: "spent" },
        bar(r.mflops, full),
        h("span", {},
          h("strong", { "data-field": "mflops" }, num(r.mflops)),
          ` of ${num(full)} MFLOPs (${pct((100 * r.mflops) / full, 0)})`),
      ),
      r.top_k.length ? h("ol", { class: "topk", "aria-label": "top classes" }, r.top_k.map((t) => h(
        "li", {}, h("span", {}, t.class_name), bar(t.probability, 1), h("span", { class: "p" }, pct(t.probability, 1, true)),
      ))) : null,
    ),
  );
  return card;
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(renderResults, 150);
});

boot();
