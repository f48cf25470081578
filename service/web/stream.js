// Following a task: its Server-Sent Events read with fetch (so the key goes in a header), resumed with
// Last-Event-ID after a dropped connection; polling once a second only where the API has no events route.

import { ApiError, json, request, sleep } from "./api.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * Calls onUpdate(fields) with each change (status, progress, stage, ...) until the task ends or signal aborts.
 * Resolves to "ended", "aborted" or "gone" (the task no longer exists for this key).
 */
export async function follow(taskId, { onUpdate, onMode, signal, eventsRoute = true }) {
  const id = encodeURIComponent(taskId);
  if (!eventsRoute) return poll(taskId, { onUpdate, onMode, signal }); // the API's document has no events route
  let lastId = null;
  let backoff = 500;
  while (!signal.aborted) {
    let response;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      response = await request(`/v1/tasks/${id}/events`, { headers, signal });
    } catch (error) {
      if (signal.aborted) return "aborted";
      if (error instanceof ApiError && error.status === 404) {
        // 404 for the task, or for the route (an API without the events endpoint)?
        try {
          await json(`/v1/tasks/${id}`, { signal });
        } catch (again) {
          if (again instanceof ApiError && again.status === 404) return "gone";
          throw again;
        }
        return poll(taskId, { onUpdate, onMode, signal });
      }
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
      onMode?.(`connection lost (${error.message}); retrying`);
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 10_000);
      continue;
    }
    onMode?.("live");
    try {
      const ended = await readEvents(response.body, (event) => {
        backoff = 500;
        if (event.id !== null) lastId = event.id;
        if (event.data && typeof event.data === "object") onUpdate(event.data, event.type);
        return TERMINAL.has(event.type);
      });
      if (ended) return "ended";
    } catch (error) {
      if (signal.aborted) return "aborted";
      onMode?.(`connection lost (${error.message}); resuming`);
    }
    // The stream closed before the final event (a restart, a proxy): resume after the last id seen.
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, 10_000);
  }
  return "aborted";
}

/** Once a second, GET the task; for APIs without the events route. */
export async function poll(taskId, { onUpdate, onMode, signal }) {
  onMode?.("polling every second");
  while (!signal.aborted) {
    let task;
    try {
      task = await json(`/v1/tasks/${encodeURIComponent(taskId)}`, { signal });
    } catch (error) {
      if (signal.aborted) return "aborted";
      if (error instanceof ApiError && error.status === 404) return "gone";
      if (error instanceof ApiError && error.status < 500) throw error;
      await sleep(2000, signal);
      continue;
    }
    onUpdate(task, task.status);
    if (TERMINAL.has(task.status)) return "ended";
    await sleep(1000, signal);
  }
  return "aborted";
}

/** Parses an event stream (WHATWG rules: data lines joined, comments skipped); stops when onEvent says so. */
export async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let lastId = null;
  let type = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (data.length) {
            let parsed = null;
            try { parsed = JSON.parse(data.join("\n")); } catch { parsed = null; }
            if (onEvent({ id: lastId, type: type || "message", data: parsed })) return true;
          }
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(text);
        else if (field === "event") type = text;
        else if (field === "id" && !text.includes("\0")) lastId = text;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
