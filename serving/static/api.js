// The page's only way to the server: same-origin fetches, with the API key when one is set.
// The key lives in this module and in sessionStorage (this tab only), nowhere else.

const KEY_STORAGE = "exitwise-api-key";
let apiKey = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage disabled: the key then lives in memory only
  }
}

export function setKey(key) {
  apiKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // memory only
  }
}

async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
  let res;
  try {
    res = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, "the server cannot be reached");
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(res.status, message);
  }
  return res;
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function getBlob(path) {
  return (await request(path)).blob();
}

/** Public, no key: what the page must know first. */
export async function pageConfig() {
  const res = await fetch("/playground/config.json", { cache: "no-store" });
  if (!res.ok) throw new ApiError(res.status, `cannot read the page's settings (${res.status})`);
  return res.json();
}

/** "app;dur=5.2, decode;dur=0.39" -> {app: 5.2, decode: 0.39} (milliseconds). */
export function parseServerTiming(header) {
  const out = {};
  for (const part of (header || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    for (const p of params) {
      const [key, value] = p.trim().split("=");
      if (name && key === "dur" && value !== undefined && !Number.isNaN(Number(value))) {
        out[name] = Number(value);
      }
    }
  }
  return out;
}

/**
 * POST /v1/classify with the images as multipart parts and the parameters in the query
 * string. `images`: [{name, blob}]. Returns the response body and the Server-Timing phases.
 */
export async function classify(images, params) {
  const form = new FormData();
  for (const image of images) form.append("image", image.blob, image.name);
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(name, String(value));
  }
  const res = await request(`/v1/classify?${query}`, { method: "POST", body: form });
  const body = await res.json();
  return { body, timing: parseServerTiming(res.headers.get("server-timing")) };
}
