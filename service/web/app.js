// The Agent Farm page: sign in with a key, submit any kind, list and follow tasks, read and download reports.
// Everything untrusted is written with textContent; the only HTML inserted is the server's sanitised export.

import { ApiError, json, request, session } from "./api.js";
import { buildForm, clearErrors, kindsOf, parameterChoices, showFieldErrors, showFormError } from "./forms.js";
import { follow } from "./stream.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const EVENTS_PATH = "/v1/tasks/{task_id}/events";

const state = {
  doc: null,
  kinds: [],
  readBody: null,
  cursor: null,
  selected: null, // the task shown in the detail pane
  following: null, // AbortController of the stream followed for it
  listTimer: null,
};

function notify(message, bad = false) {
  const notice = $("notice");
  notice.textContent = message;
  notice.classList.toggle("bad", bad);
  notice.hidden = !message;
}

function describeError(error) {
  if (error instanceof ApiError) {
    const wait = error.retryAfter ? ` Retry after ${error.retryAfter} s.` : "";
    return `${error.problem.title || "Error"} (${error.status}): ${error.message}${wait}`;
  }
  return `The API could not be reached: ${error.message}`;
}

// ---- signing in --------------------------------------------------------------------------------------------

async function signIn(key) {
  session.set(key);
  try {
    await json("/v1/tasks?limit=1");
  } catch (error) {
    session.clear();
    throw error;
  }
}

function showSignedIn(signedIn) {
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  if (!signedIn) {
    stopFollowing();
    clearInterval(state.listTimer);
    state.selected = null;
    $("detail").hidden = true;
    $("task-list").replaceChildren();
    $("api-key").focus();
  }
}

function wireSignIn() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("api-key");
    const error = $("api-key-error");
    error.hidden = true;
    input.removeAttribute("aria-invalid");
    try {
      await signIn(input.value.trim());
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.status === 401
        ? "This key is not valid." : describeError(failure);
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    input.value = "";
    showSignedIn(true);
    notify("");
    await refreshList();
    startListTimer();
    $("kind").focus();
  });
  $("sign-out").addEventListener("click", () => {
    session.clear();
    notify("Signed out.");
    showSignedIn(false);
  });
}

function signedOut(error) {
  if (error instanceof ApiError && error.status === 401) {
    session.clear();
    showSignedIn(false);
    notify("Your key was refused; sign in again.", true);
    return true;
  }
  return false;
}

// ---- the submit form ---------------------------------------------------------------------------------------

function selectKind(slug) {
  const kind = state.kinds.find((k) => k.slug === slug) || state.kinds[0];
  $("kind-summary").textContent = kind.summary;
  state.readBody = buildForm($("task-form"), state.doc, kind);
  state.kind = kind;
}

function wireForm() {
  const select = $("kind");
  for (const kind of state.kinds) select.append(new Option(kind.label, kind.slug));
  select.addEventListener("change", () => selectKind(select.value));
  selectKind(select.value);

  const form = $("task-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const response = await request(state.kind.path, { method: "POST", body: state.readBody() });
      const task = await response.json();
      notify(`Task submitted: ${task.kind}, ${task.id}.`);
      await refreshList();
      await openTask(task.id);
    } catch (error) {
      if (signedOut(error)) return;
      const unplaced = error instanceof ApiError ? showFieldErrors(form, error.fields) : [];
      if (!(error instanceof ApiError) || !error.fields.length || unplaced.length) {
        const rest = unplaced.map((p) => p.message).join("; ");
        showFormError(form, rest || describeError(error));
      }
    } finally {
      button.disabled = false;
    }
  });
}

// ---- the task list -----------------------------------------------------------------------------------------

function wireFilters() {
  const listPath = "/v1/tasks";
  for (const [id, name] of [["filter-status", "status"], ["filter-kind", "kind"]]) {
    const select = $(id);
    for (const value of parameterChoices(state.doc, listPath, "get", name)) {
      select.append(new Option(String(value).replaceAll("_", " "), String(value)));
    }
    select.addEventListener("change", () => refreshList());
  }
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); refreshList(); });
  $("more").addEventListener("click", () => refreshList({ more: true }));
}

async function refreshList({ more = false } = {}) {
  const query = new URLSearchParams({ limit: "20" });
  for (const [id, name] of [["filter-status", "status"], ["filter-kind", "kind"]]) {
    if ($(id).value) query.set(name, $(id).value);
  }
  if (more && state.cursor) query.set("cursor", state.cursor);
  let page;
  try {
    page = await json(`/v1/tasks?${query}`);
  } catch (error) {
    if (!signedOut(error)) notify(describeError(error), true);
    return;
  }
  const list = $("task-list");
  if (!more) list.replaceChildren();
  for (const task of page.items) list.append(taskItem(task));
  state.cursor = page.next_cursor;
  $("more").hidden = !page.next_cursor;
  $("list-empty").hidden = list.children.length > 0;
}

function subjectOf(task) {
  if (task.title) return task.title;
  const params = task.params || {};
  return params.topic || params.company || params.subject || task.kind;
}

function taskItem(task) {
  const item = document.createElement("li");
  item.dataset.id = task.id;
  const button = document.createElement("button");
  button.type = "button";
  button.addEventListener("click", () => openTask(task.id));
  const top = Object.assign(document.createElement("span"), { className: "line" });
  const name = Object.assign(document.createElement("span"), { className: "name" });
  const status = Object.assign(document.createElement("span"), { className: "status" });
  top.append(name, status);
  const bottom = Object.assign(document.createElement("span"), { className: "line hint" });
  const progress = Object.assign(document.createElement("progress"), { max: 100 });
  progress.setAttribute("aria-label", "progress");
  button.append(top, bottom, progress);
  item.append(button);
  updateItem(item, task);
  if (state.selected?.id === task.id) button.setAttribute("aria-current", "true");
  return item;
}

function updateItem(item, task) {
  if (task.title || task.params) item.querySelector(".name").textContent = subjectOf(task);
  setStatus(item.querySelector(".status"), task.status);
  const created = task.created_at ? new Date(task.created_at).toLocaleString() : "";
  const bottom = item.querySelector(".line.hint");
  if (task.kind) bottom.textContent = `${task.kind.replaceAll("_", " ")} · ${created} · ${task.progress} %`;
  item.querySelector("progress").value = task.progress ?? 0;
}

function setStatus(element, status) {
  element.textContent = status;
  element.className = `status ${status}`;
}

function startListTimer() {
  clearInterval(state.listTimer);
  // While a listed task is unfinished, its row is kept current in place (focus stays where it is).
  state.listTimer = setInterval(async () => {
    if (document.hidden || $("app").hidden) return;
    const list = $("task-list");
    const moving = [...list.querySelectorAll("li")].filter((row) => !TERMINAL.has(row.querySelector(".status").textContent));
    if (!moving.length) return;
    const query = new URLSearchParams({ limit: "20" });
    for (const [id, name] of [["filter-status", "status"], ["filter-kind", "kind"]]) {
      if ($(id).value) query.set(name, $(id).value);
    }
    try {
      const page = await json(`/v1/tasks?${query}`);
      for (const task of page.items) {
        if (task.id === state.selected?.id && state.following) continue; // the followed task is updated live
        const row = list.querySelector(`li[data-id="${CSS.escape(task.id)}"]`);
        if (row) updateItem(row, task);
      }
    } catch (error) {
      signedOut(error);
    }
  }, 5000);
}

// ---- one task ----------------------------------------------------------------------------------------------

function stopFollowing() {
  state.following?.abort();
  state.following = null;
}

async function openTask(id) {
  stopFollowing();
  let task;
  try {
    task = await json(`/v1/tasks/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!signedOut(error)) notify(describeError(error), true);
    return;
  }
  state.selected = task;
  for (const button of $("task-list").querySelectorAll("button[aria-current]")) button.removeAttribute("aria-current");
  $("task-list").querySelector(`li[data-id="${CSS.escape(id)}"] button`)?.setAttribute("aria-current", "true");
  $("detail").hidden = false;
  $("detail-title").textContent = subjectOf(task);
  $("d-kind").textContent = task.kind.replaceAll("_", " ");
  $("d-id").textContent = task.id;
  $("d-created").textContent = new Date(task.created_at).toLocaleString();
  $("report").replaceChildren();
  $("live").textContent = "";
  render(task);
  $("detail-title").focus();
  if (TERMINAL.has(task.status)) {
    await finished(task);
    return;
  }
  const controller = new AbortController();
  state.following = controller;
  const eventsRoute = Boolean(state.doc.paths?.[EVENTS_PATH]?.get);
  try {
    const outcome = await follow(id, {
      signal: controller.signal,
      eventsRoute,
      onMode: (mode) => { if (state.following === controller) $("live").textContent = `Updates: ${mode}.`; },
      onUpdate: (fields) => { if (state.following === controller) apply(fields); },
    });
    if (state.following !== controller) return;
    state.following = null;
    if (outcome === "gone") {
      notify("This task no longer exists (it expired or belongs to another key).", true);
      return;
    }
    if (outcome === "ended") {
      const final = await json(`/v1/tasks/${encodeURIComponent(id)}`);
      state.selected = final;
      render(final);
      await finished(final);
    }
  } catch (error) {
    if (state.following === controller) state.following = null;
    if (!signedOut(error)) showDetailError(describeError(error));
  }
}

// An event's data (or a polled task): keep what it says about status, progress, stage, attempt and error.
// Replayed events older than the state already shown (the page reads the task, then its stream from the start)
// are skipped, so progress never runs backwards on screen.
const RANK = { queued: 0, running: 1, retrying: 2, completed: 3, failed: 3, cancelled: 3 };

function olderThanShown(fields, task) {
  if (fields.attempt === undefined || task.attempt === undefined) return false;
  if (fields.attempt !== task.attempt) return fields.attempt < task.attempt;
  if (fields.status !== undefined && fields.status !== task.status) return RANK[fields.status] < RANK[task.status];
  return (fields.progress ?? task.progress ?? 0) < (task.progress ?? 0);
}

function apply(fields) {
  if (olderThanShown(fields, state.selected)) return;
  const task = { ...state.selected };
  for (const key of ["status", "progress", "stage", "attempt", "max_attempts", "error", "usage"]) {
    if (fields[key] !== undefined && fields[key] !== null) task[key] = fields[key];
  }
  if (fields.error === null && task.status !== "failed") task.error = null;
  state.selected = task;
  render(task);
}

function render(task) {
  setStatus($("d-status"), task.status);
  $("d-attempt").textContent = task.max_attempts ? `${task.attempt} of ${task.max_attempts}` : String(task.attempt ?? "");
  $("progress").value = task.progress ?? 0;
  $("progress-text").textContent = `${task.progress ?? 0} %`;
  $("stage").textContent = task.stage || "";
  $("cancel").hidden = TERMINAL.has(task.status);
  const done = task.status === "completed";
  $("download-md").hidden = !done;
  $("download-pdf").hidden = !done;
  if (task.error) showDetailError(`${task.error.type}: ${task.error.message}`);
  else $("detail-error").hidden = true;
  const row = $("task-list").querySelector(`li[data-id="${CSS.escape(task.id)}"]`);
  if (row) updateItem(row, task);
}

function showDetailError(message) {
  $("detail-error").textContent = message;
  $("detail-error").hidden = false;
}

async function finished(task) {
  $("live").textContent = "";
  if (task.status === "completed") await showReport(task.id);
}

// The server's HTML export (Markdown rendered with raw HTML escaped, links checked), parsed inertly;
// only its article is taken, and anything active is dropped again on this side.
async function showReport(id) {
  let page;
  try {
    page = await (await request(`/v1/tasks/${encodeURIComponent(id)}/report?format=html`)).text();
  } catch (error) {
    if (!signedOut(error)) showDetailError(`The report could not be shown. ${describeError(error)}`);
    return;
  }
  if (state.selected?.id !== id) return;
  // Only the article is parsed: the export's own <style> would break this page's CSP (no inline style).
  // The report text in it is escaped, so a literal "</article>" can only be the export's own.
  const start = page.indexOf("<article");
  const end = page.lastIndexOf("</article>");
  const fragment = start >= 0 && end > start ? page.slice(start, end + "</article>".length) : "";
  const article = new DOMParser().parseFromString(fragment, "text/html").querySelector("article.report");
  if (!article) {
    showDetailError("The report came back without its content.");
    return;
  }
  for (const element of article.querySelectorAll("script, style, iframe, object, embed, link, meta, form, img")) {
    element.remove();
  }
  for (const element of article.querySelectorAll("*")) {
    for (const attribute of [...element.attributes]) {
      const value = attribute.value.trim().toLowerCase();
      const active = attribute.name.startsWith("on") || attribute.name === "style";
      if (active || (attribute.name === "href" && value.startsWith("javascript:"))) {
        element.removeAttribute(attribute.name);
      }
    }
    if (element.tagName === "A" && !element.getAttribute("href")?.startsWith("#")) {
      element.target = "_blank";
      element.rel = "noopener noreferrer nofollow";
    }
  }
  $("report").replaceChildren(document.importNode(article, true));
}

async function download(format, extension) {
  const task = state.selected;
  if (!task) return;
  try {
    const response = await request(`/v1/tasks/${encodeURIComponent(task.id)}/report?format=${format}`);
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: `report-${task.id}.${extension}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30_000);
  } catch (error) {
    if (!signedOut(error)) showDetailError(`The download failed. ${describeError(error)}`);
  }
}

function wireDetail() {
  $("cancel").addEventListener("click", async () => {
    const task = state.selected;
    if (!task) return;
    try {
      const cancelled = await json(`/v1/tasks/${encodeURIComponent(task.id)}/cancel`, { method: "POST" });
      stopFollowing();
      state.selected = cancelled;
      render(cancelled);
      notify("Task cancelled.");
    } catch (error) {
      if (!signedOut(error)) showDetailError(describeError(error));
    }
  });
  $("download-md").addEventListener("click", () => download("md", "md"));
  $("download-pdf").addEventListener("click", () => download("pdf", "pdf"));
}

// ---- start -------------------------------------------------------------------------------------------------

async function start() {
  try {
    const response = await fetch("/schema/openapi.json", { cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.doc = await response.json();
  } catch (error) {
    notify(`The API description could not be loaded (${error.message}); reload to try again.`, true);
    return;
  }
  state.kinds = kindsOf(state.doc);
  wireSignIn();
  wireForm();
  wireFilters();
  wireDetail();
  if (session.key) {
    try {
      await json("/v1/tasks?limit=1");
      showSignedIn(true);
      await refreshList();
      startListTimer();
      return;
    } catch (error) {
      session.clear();
      if (!(error instanceof ApiError && error.status === 401)) notify(describeError(error), true);
    }
  }
  showSignedIn(false);
}

start();
