// Talking to the API: the key from session storage in the Authorization header, problems as ApiError.

const KEY = "agentfarm.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

/** An answer that is not 2xx: its status and its problem+json body (RFC 9457), with the invalid fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.fields = Array.isArray(problem.errors) ? problem.errors : [];
  }

  static async from(response) {
    let problem = { title: response.statusText, detail: "" };
    const type = response.headers.get("content-type") || "";
    try {
      if (type.includes("json")) problem = await response.json();
      else problem.detail = (await response.text()).slice(0, 300);
    } catch { /* an unreadable body: keep the status line */ }
    const error = new ApiError(response.status, problem);
    error.retryAfter = response.headers.get("retry-after");
    return error;
  }
}

/** fetch() against the API with the key; throws ApiError for a non-2xx answer. */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  if (session.key) sent.Authorization = `Bearer ${session.key}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) throw await ApiError.from(response);
  return response;
}

export async function json(path, options) {
  return (await request(path, options)).json();
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});
