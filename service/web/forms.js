// Typed forms built at run time from the API's own OpenAPI document: one per submit route, each field with the
// limits the API enforces (required, choices, lengths, ranges), so the browser checks what the API checks.

const PREFIX = "/v1/tasks/";

/** The submit routes: POST /v1/tasks/{path} with a JSON body schema. */
export function kindsOf(doc) {
  const kinds = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    const op = item.post;
    if (!op || !path.startsWith(PREFIX) || path.includes("{")) continue;
    const schema = resolve(doc, op.requestBody?.content?.["application/json"]?.schema);
    if (!schema || schema.type !== "object") continue;
    const slug = path.slice(PREFIX.length);
    kinds.push({ path, slug, label: slug.replaceAll("-", " "), summary: op.summary || "", schema });
  }
  return kinds;
}

/** The choices of a query parameter of an operation (e.g. the list's `status` and `kind`). */
export function parameterChoices(doc, path, method, name) {
  const parameter = (doc.paths?.[path]?.[method]?.parameters || []).find((p) => p.name === name);
  return parameter ? nonNull(doc, parameter.schema)?.enum || [] : [];
}

function resolve(doc, schema) {
  let current = schema;
  for (let hops = 0; current && current.$ref && hops < 10; hops += 1) {
    const ref = current.$ref;
    current = ref.startsWith("#/") ? ref.slice(2).split("/").reduce((node, key) => node?.[key], doc) : null;
  }
  return current || null;
}

// `T | None` is documented as oneOf/anyOf [T, null]: the field is T, and optional.
function nonNull(doc, schema) {
  const resolved = resolve(doc, schema);
  const options = resolved?.oneOf || resolved?.anyOf;
  if (!options) return resolved;
  const real = options.map((o) => resolve(doc, o)).filter((o) => o && o.type !== "null");
  if (real.length !== 1) return resolved;
  // Constraints may sit beside the oneOf (maxLength, pattern, description): they apply to the real type.
  const { oneOf, anyOf, ...beside } = resolved;
  return { ...real[0], ...beside };
}

const ACRONYMS = new Set(["url", "id", "api"]);

function humanize(name) {
  const words = name.split("_").map((w) => (ACRONYMS.has(w) ? w.toUpperCase() : w));
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Replaces the form's content with the fields of `kind`; returns a reader of the body to send. */
export function buildForm(form, doc, kind) {
  form.replaceChildren();
  const required = new Set(kind.schema.required || []);
  const readers = [];
  const formError = Object.assign(document.createElement("p"), { className: "field-error form-error", id: "form-error" });
  formError.hidden = true;
  formError.setAttribute("role", "alert");
  form.append(formError);
  // Required fields first (what the task is about), then the options, each group in the API's order.
  const entries = Object.entries(kind.schema.properties || {});
  entries.sort(([a], [b]) => Number(required.has(b)) - Number(required.has(a)));
  for (const [name, raw] of entries) {
    const schema = nonNull(doc, raw) || {};
    readers.push(addField(form, name, schema, required.has(name)));
  }
  const submit = Object.assign(document.createElement("button"), { type: "submit", textContent: `Submit ${kind.label}` });
  form.append(submit);
  return () => {
    const body = {};
    for (const read of readers) {
      const [name, value] = read();
      if (value !== undefined) body[name] = value;
    }
    return body;
  };
}

function addField(form, name, schema, isRequired) {
  const id = `f-${name}`;
  const wrapper = Object.assign(document.createElement("div"), { className: "field" });
  const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: humanize(name) });
  if (isRequired) {
    const mark = Object.assign(document.createElement("span"), { className: "req", textContent: " *" });
    mark.setAttribute("aria-hidden", "true");
    label.append(mark);
  }
  const input = control(schema);
  input.id = id;
  input.name = name;
  input.required = isRequired && input.type !== "checkbox";
  const hint = Object.assign(document.createElement("p"), { className: "hint", id: `${id}-hint` });
  hint.textContent = describe(schema, isRequired);
  const error = Object.assign(document.createElement("p"), { className: "field-error", id: `${id}-error` });
  error.hidden = true;
  input.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
  input.addEventListener("input", () => clearFieldError(input));
  wrapper.append(label, input, hint, error);
  form.append(wrapper);

  return () => {
    if (input.type === "checkbox") return [name, input.checked];
    const text = input.value;
    if (text === "" && !isRequired) return [name, undefined]; // the API fills in its default
    if (schema.type === "integer" || schema.type === "number") return [name, text === "" ? undefined : Number(text)];
    return [name, text];
  };
}

function control(schema) {
  if (Array.isArray(schema.enum)) {
    const select = document.createElement("select");
    if (schema.default === undefined) select.append(new Option("—", ""));
    for (const value of schema.enum) select.append(new Option(String(value), String(value), false, value === schema.default));
    return select;
  }
  if (schema.type === "boolean") {
    const box = Object.assign(document.createElement("input"), { type: "checkbox" });
    box.checked = schema.default === true;
    return box;
  }
  if (schema.type === "integer" || schema.type === "number") {
    const number = Object.assign(document.createElement("input"), { type: "number", inputMode: "numeric" });
    number.step = schema.type === "integer" ? "1" : "any";
    const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum + 1 : undefined);
    const max = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? schema.exclusiveMaximum - 1 : undefined);
    if (min !== undefined) number.min = String(min);
    if (max !== undefined) number.max = String(max);
    if (schema.default !== undefined && schema.default !== null) number.value = String(schema.default);
    return number;
  }
  // Long free text (a review's context) gets a text area; a URL or a name stays one line.
  const long = (schema.maxLength ?? 0) > 4096 && !schema.pattern;
  const text = long ? document.createElement("textarea") : document.createElement("input");
  if (!long) text.type = schema.format === "uri" ? "url" : schema.format === "email" ? "email" : "text";
  if (schema.minLength !== undefined) text.minLength = schema.minLength;
  if (schema.maxLength !== undefined) text.maxLength = schema.maxLength;
  const pattern = schema.pattern && !long ? htmlPattern(schema.pattern) : null;
  if (pattern) text.pattern = pattern;
  if (typeof schema.default === "string") text.value = schema.default;
  text.autocomplete = "off";
  return text;
}

// The pattern attribute is compiled with the "v" flag, where "/" inside a class must be escaped;
// a pattern that still does not compile is left to the API to check.
function htmlPattern(pattern) {
  for (const candidate of [pattern, pattern.replace(/(?<!\\)\//g, "\\/")]) {
    try {
      new RegExp(candidate, "v");
      return candidate;
    } catch { /* try the next spelling */ }
  }
  return null;
}

function describe(schema, isRequired) {
  const parts = [];
  if (schema.description) parts.push(schema.description);
  if (schema.minLength !== undefined && schema.maxLength !== undefined) parts.push(`${schema.minLength}–${schema.maxLength} characters.`);
  else if (schema.maxLength !== undefined) parts.push(`Up to ${schema.maxLength.toLocaleString("en")} characters.`);
  if (schema.minimum !== undefined || schema.maximum !== undefined) parts.push(`From ${schema.minimum ?? "—"} to ${schema.maximum ?? "—"}.`);
  if (!isRequired && schema.default !== undefined && schema.default !== "" && schema.default !== null) parts.push(`Default: ${schema.default}.`);
  if (!isRequired && schema.default === undefined) parts.push("Optional.");
  return parts.join(" ");
}

/** Shows the API's field problems next to their fields; returns the problems that name no field of the form. */
export function showFieldErrors(form, problems) {
  const unplaced = [];
  let first = null;
  for (const problem of problems) {
    const input = problem.field ? form.elements.namedItem(problem.field) : null;
    if (!input || !(input instanceof HTMLElement)) {
      unplaced.push(problem);
      continue;
    }
    const error = document.getElementById(`${input.id}-error`);
    error.textContent = error.hidden ? problem.message : `${error.textContent} ${problem.message}`;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    first ??= input;
  }
  first?.focus();
  return unplaced;
}

export function clearFieldError(input) {
  input.removeAttribute("aria-invalid");
  const error = document.getElementById(`${input.id}-error`);
  if (error) { error.hidden = true; error.textContent = ""; }
}

export function clearErrors(form) {
  for (const input of form.querySelectorAll("[aria-invalid]")) clearFieldError(input);
  const formError = form.querySelector("#form-error");
  if (formError) { formError.hidden = true; formError.textContent = ""; }
}

export function showFormError(form, message) {
  const formError = form.querySelector("#form-error");
  formError.textContent = message;
  formError.hidden = false;
}
