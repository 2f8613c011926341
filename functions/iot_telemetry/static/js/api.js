// The query API beside the page. URLs are relative, so the page also works under a path prefix.
// Every call has a timeout; a failure says whether the API is unreachable or refused the request.

const TIMEOUT_MS = 4000;
const FALLBACK_LIMIT = 50;

export class ApiError extends Error {
  /** `unreachable`: no answer, a 5xx, or not JSON (the banner's business); else a 4xx. */
  constructor(message, { status = 0, unreachable = false } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.unreachable = unreachable;
  }
}

export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

const TOKEN_KEY = "iot-telemetry-token";

/** The API token the operator typed, kept for this browser session only. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export async function call(path, { method = "GET", body } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    const headers = body === undefined ? { Accept: "application/json" }
      : { Accept: "application/json", "Content-Type": "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    response = await fetch(path, {
      method,
      cache: "no-store",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (err) {
    const reason = controller.signal.aborted ? `no answer within ${TIMEOUT_MS / 1000} s`
      : "connection failed";
    throw new ApiError(reason, { unreachable: true });
  } finally {
    clearTimeout(timer);
  }
  let payload = null;
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try { payload = await response.json(); } catch { payload = null; }
  }
  if (!response.ok) {
    const message = (payload && payload.message) || `HTTP ${response.status}`;
    // 5xx: the API's store is down (503) or a proxy found no function behind it (502/504).
    const error = new ApiError(message, { status: response.status, unreachable: response.status >= 500 });
    // 401: no or unknown token; 403 on a POST: the token may read but not acknowledge.
    error.needsToken = response.status === 401 || (response.status === 403 && method !== "GET");
    throw error;
  }
  if (payload === null) {
    throw new ApiError(`answer to ${path} is not JSON`, { status: response.status, unreachable: true });
  }
  return payload;
}

let maxLimit = null;

/** The largest page size the API accepts (QUERY_MAX_LIMIT), read once from its OpenAPI document. */
export async function pageLimit() {
  if (maxLimit === null) {
    try {
      const doc = await call("openapi.json");
      const limit = doc.paths["/devices"].get.parameters.find((p) => p.name === "limit");
      maxLimit = Number(limit.schema.maximum) || FALLBACK_LIMIT;
    } catch (err) {
      if (err instanceof ApiError && err.unreachable) throw err;
      maxLimit = FALLBACK_LIMIT;
    }
  }
  return maxLimit;
}

/** Every device, following `next_cursor`, up to `cap` of them. */
export async function allDevices(cap = 5000) {
  const limit = await pageLimit();
  const devices = [];
  let cursor = null;
  do {
    const page = await call(url("devices", { limit, cursor }));
    devices.push(...page.devices);
    cursor = page.next_cursor;
  } while (cursor && devices.length < cap);
  return { devices, truncated: Boolean(cursor) };
}

/** Every device counted by state, however many there are (GET /fleet). */
export function fleet() {
  return call("fleet");
}

export function device(id) {
  return call(`devices/${encodeURIComponent(id)}`);
}

export function series(id, params) {
  return call(url(`devices/${encodeURIComponent(id)}/series`, params));
}

export function alerts(params) {
  return call(url("alerts", params));
}

export function alert(id) {
  return call(`alerts/${encodeURIComponent(id)}`);
}

export function acknowledge(id, by) {
  return call(`alerts/${encodeURIComponent(id)}/ack`, { method: "POST", body: { by } });
}

export function rules(deviceId) {
  return call(url("rules", { device_id: deviceId }));
}

/** The alerts of one device raised since `since` (and the one page reaching past it), newest
 * first, at most `maxPages` pages: what a chart needs to shade when they were open. */
export async function deviceAlerts(deviceId, since, maxPages = 4) {
  const limit = await pageLimit();
  const found = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page += 1) {
    const answer = await call(url("alerts", { device_id: deviceId, limit, cursor }));
    found.push(...answer.alerts);
    cursor = answer.next_cursor;
    const oldest = answer.alerts[answer.alerts.length - 1];
    if (!cursor || !oldest || Date.parse(oldest.raised_at) < since) break;
  }
  return found;
}

const DOWNLOAD_TIMEOUT_MS = 60000;

/** The file name of a Content-Disposition header (attachment; filename="x.csv"). */
function fileName(disposition, fallback) {
  const match = /filename="([^"]+)"/.exec(disposition || "");
  return match ? match[1] : fallback;
}

/** Download the CSV of `path` as a file. Fetched (not a plain link) so that the API token,
 * when there is one, goes with it; the body becomes a Blob the browser saves. */
export async function downloadCsv(path, params, fallbackName = "export.csv") {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), DOWNLOAD_TIMEOUT_MS);
  const headers = { Accept: "text/csv" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let response;
  let blob;
  try {
    response = await fetch(url(path, { ...params, format: "csv" }), {
      cache: "no-store", headers, signal: controller.signal,
    });
    if (response.ok) blob = await response.blob();
  } catch (err) {
    const reason = controller.signal.aborted ? `no answer within ${DOWNLOAD_TIMEOUT_MS / 1000} s`
      : "connection failed";
    throw new ApiError(reason, { unreachable: true });
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).message || message; } catch { /* not JSON */ }
    const error = new ApiError(message, { status: response.status, unreachable: response.status >= 500 });
    error.needsToken = response.status === 401;
    throw error;
  }
  const name = fileName(response.headers.get("Content-Disposition"), fallbackName);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  return name;
}
