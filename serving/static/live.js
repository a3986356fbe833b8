// The live panel: polls GET /v1/live (the server's last minute) and draws it.

import { getJSON } from "./api.js";
import { columns, latencyRows, series } from "./charts.js";
import { byId, fill, h, ms, num, pct, widthOf } from "./util.js";

const POLL_MS = 2000;
const RETRY_MS = 5000;

let model = null;
let timer = null;
let inFlight = false;
let pending = false;
let last = null;

/** What a point name costs on average: a calibrated point's expected MFLOPs, or an exit's. */
function expectedOf(name) {
  const point = model.operating_points.find((p) => p.name === name);
  if (point) return point.expected_mflops;
  const anytime = /^(?:max-)?exit-(\d+)$/.exec(name); // anytime: every image runs to that exit
  if (anytime) return model.exits[Number(anytime[1]) - 1]?.mflops ?? null;
  return null;
}

function total(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

function render(summary) {
  last = summary;
  const k = summary.num_exits;
  fill(
    byId("live-totals"),
    total("requests/s", num(summary.requests_per_s)),
    total("images/s", num(summary.images_per_s)),
    total("MFLOPs/image", num(summary.mflops_per_image)),
    total("p50 ms", ms(summary.p50_ms)),
    total("p99 ms", ms(summary.p99_ms)),
  );
  byId("live-totals").dataset.requests = String(summary.requests);

  const counts = summary.exit_counts;
  const images = counts.reduce((a, b) => a + b, 0);
  const exitsBox = byId("live-exits");
  if (images === 0) {
    fill(exitsBox, h("p", { class: "empty" }, "No images in the last minute."));
  } else {
    const shares = counts.map((c) => c / images);
    const labels = Array.from({ length: k }, (_, i) => `exit ${i + 1}`);
    fill(exitsBox, columns(shares, labels, widthOf(exitsBox), (v) => pct(v, 0, true),
      `Exit mix: ${shares.map((v, i) => `exit ${i + 1} ${pct(v, 0, true)}`).join(", ")}`));
  }

  // Cheapest first, in a fixed order: rows that swap places every poll are hard to read.
  const points = [...summary.operating_points].sort((a, b) =>
    (expectedOf(a.name) ?? Infinity) - (expectedOf(b.name) ?? Infinity) || a.name.localeCompare(b.name));
  const only = points.length === 1 ? expectedOf(points[0].name) : null;
  const mflopsBox = byId("live-mflops");
  fill(mflopsBox, series(summary.timeline.mflops_per_image, widthOf(mflopsBox), {
    kind: "line",
    reference: only === null ? null : { value: only, label: `expected ${num(only)}` },
    ariaLabel: `Realised MFLOPs per image over the last minute: ${num(summary.mflops_per_image)} on average`,
  }));
  const rateBox = byId("live-rate");
  fill(rateBox, series(summary.timeline.requests_per_s, widthOf(rateBox), {
    ariaLabel: `Requests per second over the last minute: ${num(summary.requests_per_s)} on average`,
  }));

  const latencyBox = byId("live-latency");
  const timed = points.filter((p) => p.p50_ms !== null);
  fill(latencyBox, timed.length
    ? latencyRows(timed, widthOf(latencyBox))
    : h("p", { class: "empty" }, "No requests in the last minute."));

  fill(
    byId("live-points").tBodies[0],
    points.map((p) => h(
      "tr", {},
      h("td", {}, p.name),
      h("td", {}, num(p.requests_per_s)),
      h("td", {}, ms(p.p50_ms)),
      h("td", {}, ms(p.p99_ms)),
      h("td", {}, num(p.mflops_per_image)),
      h("td", {}, num(expectedOf(p.name))),
    )),
  );
  byId("live-age").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  if (inFlight) {
    pending = true; // asked again while a poll is running: poll once more right after it
    return;
  }
  clearTimeout(timer);
  if (document.hidden) {
    timer = setTimeout(poll, POLL_MS); // nobody is looking: do not load the server
    return;
  }
  inFlight = true;
  let wait = POLL_MS;
  try {
    render(await getJSON("/v1/live"));
  } catch (err) {
    byId("live-age").textContent = `live figures unavailable: ${err.message}`;
    wait = RETRY_MS;
  } finally {
    inFlight = false;
  }
  timer = setTimeout(poll, pending ? 50 : wait);
  pending = false;
}

export function startLive(description) {
  model = description;
  poll();
  window.addEventListener("resize", () => last && render(last));
}

/** After a request of this page: show it without waiting for the next poll. */
export function refreshLive() {
  if (model) setTimeout(poll, 50);
}
