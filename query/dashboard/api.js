// Requests to the query API. The API key lives in sessionStorage only, so it is gone when the
// browser tab closes, and it travels as `Authorization: Bearer KEY`, never in a URL.

const KEY_NAME = "weir.apiKey";

/** A failed API request; `status` is the HTTP status, or 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(message, status, parameter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.parameter = parameter;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
}

/** Build a query string; an array value becomes a repeated parameter (`filter=a&filter=b`). */
export function queryString(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(name, item);
  }
  return search.toString();
}

async function request(path, params, signal, key = storedKey()) {
  let response;
  try {
    response = await fetch(`${path}?${queryString(params)}`, {
      headers: { Authorization: `Bearer ${key ?? ""}` },
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(`the API could not be reached (${error.message})`, 0);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let parameter = null;
    try {
      const body = await response.json();
      if (body.error) message = body.error;
      parameter = body.parameter ?? null;
    } catch {
      // The body was not JSON (a proxy's error page); the status line is the message.
    }
    throw new ApiError(message, response.status, parameter);
  }
  return response;
}

/** GET `path` with `params` and return the parsed JSON; raises ApiError on any failure. */
export async function getJson(path, params = {}, { signal, key } = {}) {
  const response = await request(path, params, signal, key);
  return response.json();
}

/** Download `path` as CSV (`format=csv`) and hand it to the browser as `filename`. */
export async function downloadCsv(path, params, filename) {
  const response = await request(path, { ...params, format: "csv" });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
