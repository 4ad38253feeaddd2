// The web console of `durable-host serve`: one more client of the HTTP API
// (/v1/...). No framework and no build step: the binary embeds this file as
// it is. Two views, chosen by the URL's hash: the workflow list (#/) and a
// workflow's page (#/workflows/ID). Both poll the API while they are shown.
"use strict";

const LIST_PAGE = 50;
const LIST_POLL_MS = 2000;
const WORKFLOW_POLL_MS = 700;
const STEP_PAGE = 1000;
const ROW_HEIGHT = 24;
const FINISHED = new Set(["completed", "failed", "cancelled", "suspended"]);
// A suspended workflow can still be cancelled and sent signals; these
// cannot.
const FINAL = new Set(["completed", "failed", "cancelled"]);
const STATUSES = ["queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled", "suspended"];

// ---- API access ----------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, hint) {
    super(message);
    this.status = status;
    this.hint = hint;
  }
}

let token = sessionStorage.getItem("durable-token");

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  } catch (e) {
    setConnection(false, "cannot reach the server");
    throw new ApiError(0, "cannot reach the server", "is `durable-host serve` still running?");
  }
  setConnection(true);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    if (response.status === 401) askForToken();
    const error = body && body.error ? body.error : { message: `HTTP ${response.status}`, hint: null };
    throw new ApiError(response.status, error.message, error.hint);
  }
  return { status: response.status, body };
}

function setConnection(up, why) {
  const el = document.getElementById("connection");
  el.textContent = up ? "connected" : `offline: ${why}`;
  el.classList.toggle("down", !up);
}

function askForToken() {
  const dialog = document.getElementById("token");
  if (dialog.open) return;
  dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem("durable-token", token);
  route();
});

// ---- Small DOM helpers ---------------------------------------------------

/** An element with attributes and children; text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace `el`'s children with those given, leaving out the absent ones. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function badge(status, id) {
  return h("span", { class: `badge ${status}`, id }, status);
}

function time(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  if (ms < 86400000) return `${Math.floor(ms / 3600000)} h ${Math.round((ms % 3600000) / 60000)} min`;
  return `${Math.floor(ms / 86400000)} d ${Math.round((ms % 86400000) / 3600000)} h`;
}

function ago(ms) {
  return `${duration(Math.max(0, Date.now() - ms))} ago`;
}

/** A JSON value, pretty, in a collapsible block (open when it is short). */
function jsonBlock(title, value, id) {
  const text = JSON.stringify(value, null, 2);
  const lines = text === undefined ? 0 : text.split("\n").length;
  return h("details", { open: lines <= 30, id },
    h("summary", {}, `${title} (${lines} line${lines === 1 ? "" : "s"})`),
    h("pre", { class: "json mono" }, text === undefined ? "null" : text));
}

function fact(label, value, attrs = {}) {
  return h("div", attrs, h("span", { class: "label" }, label), value);
}

function errorPanel(error) {
  return h("div", { class: "panel" },
    h("p", { class: "error-text" }, error.message),
    error.hint ? h("p", { class: "muted" }, error.hint) : null);
}

/**
 * Ask before an action. `fields` are inputs shown in the dialog; `act`
 * gets their values and may throw an ApiError, shown in the dialog.
 */
function confirmAction({ title, text, button, fields = [], act }) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = button;
  const errorLine = document.getElementById("confirm-error");
  errorLine.hidden = true;
  const holder = document.getElementById("confirm-fields");
  holder.replaceChildren();
  const inputs = {};
  for (const field of fields) {
    const input = h("input", { id: `confirm-${field.name}`, value: field.value ?? "", placeholder: field.placeholder ?? "" });
    inputs[field.name] = input;
    holder.append(h("label", { for: input.id }, field.label), input);
  }
  const close = () => dialog.close();
  document.getElementById("confirm-cancel").onclick = close;
  ok.onclick = async (event) => {
    event.preventDefault();
    ok.disabled = true;
    try {
      const values = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.value.trim()]));
      await act(values);
      close();
    } catch (e) {
      errorLine.textContent = e.hint ? `${e.message}\n${e.hint}` : e.message;
      errorLine.hidden = false;
    } finally {
      ok.disabled = false;
    }
  };
  dialog.showModal();
}

// ---- Routing -------------------------------------------------------------

let current = null; // the view shown: { stop() }

function route() {
  if (current) current.stop();
  const confirm = document.getElementById("confirm");
  if (confirm.open) confirm.close();
  const view = document.getElementById("view");
  view.replaceChildren();
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/workflows\/(.+)$/);
  let id = null;
  try {
    id = match ? decodeURIComponent(match[1]) : null;
  } catch (e) {
    id = null; // a malformed address: the list
  }
  current = id !== null ? new WorkflowPage(view, id) : new WorkflowList(view, hash);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

/** Runs `tick` now and then every `ms` while the tab is visible, until stopped. */
class Poller {
  constructor(ms, tick) {
    this.ms = ms;
    this.tick = tick;
    this.stopped = false;
    this.run();
  }
  async run() {
    while (!this.stopped) {
      this.poked = false;
      if (!document.hidden) {
        try { await this.tick(); } catch (e) { /* shown by the tick; keep polling */ }
      }
      if (this.stopped) break;
      // Poked while the tick ran: look again at once.
      if (this.poked) continue;
      await new Promise((resolve) => { this.wake = resolve; this.timer = setTimeout(resolve, this.ms); });
      this.wake = null;
    }
  }
  /** Look again now (after an action). */
  poke() {
    this.poked = true;
    clearTimeout(this.timer);
    if (this.wake) this.wake();
  }
  stop() { this.stopped = true; this.poke(); }
}

// ---- The workflow list ---------------------------------------------------

class WorkflowList {
  constructor(root, hash) {
    const params = new URLSearchParams(hash.replace(/^#\/?\??/, ""));
    this.status = params.get("status") || "";
    this.search = params.get("search") || "";
    this.cursors = [null]; // `after` of each page seen, to go back
    this.root = root;
    this.chips = h("div", { class: "chips", id: "status-counts" });
    this.searchBox = h("input", {
      type: "search", id: "search", placeholder: "Search workflow ids", value: this.search,
      oninput: () => { clearTimeout(this.typing); this.typing = setTimeout(() => this.refilter(), 250); },
    });
    this.table = h("tbody", { id: "workflow-rows" });
    this.pageInfo = h("span", { class: "muted", id: "page-info" });
    this.newer = h("button", { id: "newer", onclick: () => { this.cursors.pop(); this.poller.poke(); } }, "← Newer");
    this.older = h("button", { id: "older", onclick: () => { this.cursors.push(this.nextAfter); this.poller.poke(); } }, "Older →");
    this.message = h("div");
    root.append(
      h("h1", {}, "Workflows"),
      this.chips,
      h("div", { class: "toolbar" }, this.searchBox,
        h("span", { class: "muted" }, "newest first · updates by itself")),
      this.message,
      h("table", { class: "list" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Workflow"), h("th", {}, "Status"), h("th", {}, "Steps done"),
          h("th", {}, "Deployment"), h("th", {}, "Queue"), h("th", {}, "Created"), h("th", {}, "Updated"))),
        this.table),
      h("div", { class: "pager" }, this.newer, this.older, this.pageInfo));
    this.poller = new Poller(LIST_POLL_MS, () => this.refresh());
  }

  stop() { this.poller.stop(); }

  refilter() {
    this.search = this.searchBox.value.trim();
    this.cursors = [null];
    this.remember();
    this.poller.poke();
  }

  remember() {
    const params = new URLSearchParams();
    if (this.status) params.set("status", this.status);
    if (this.search) params.set("search", this.search);
    const query = params.toString();
    history.replaceState(null, "", query ? `#/?${query}` : "#/");
  }

  async refresh() {
    const asked = (this.asked = (this.asked || 0) + 1);
    const params = new URLSearchParams({ limit: LIST_PAGE });
    if (this.status) params.set("status", this.status);
    if (this.search) params.set("search", this.search);
    const after = this.cursors[this.cursors.length - 1];
    if (after) params.set("after", after);
    try {
      const [page, counts] = await Promise.all([
        api(`/v1/workflows?${params}`),
        api("/v1/workflow-counts"),
      ]);
      // Left, or asked again with other filters meanwhile: not ours to draw.
      if (this.poller.stopped || asked !== this.asked) return;
      this.message.replaceChildren();
      this.drawCounts(counts.body);
      this.drawRows(page.body);
    } catch (e) {
      if (this.poller.stopped) return;
      if (e.status === 400 && after) {
        // The page's first workflow is gone (a fresh database?): start over.
        this.cursors = [null];
      }
      this.message.replaceChildren(errorPanel(e));
      throw e;
    }
  }

  drawCounts(counts) {
    const chip = (status, label, count) => h("button", {
      class: `chip${this.status === status ? " active" : ""}`, "data-status": status || "all",
      onclick: () => { this.status = status; this.cursors = [null]; this.remember(); this.poller.poke(); },
    }, label, h("b", {}, count.toLocaleString()));
    fill(this.chips, chip("", "all", counts.total),
      ...STATUSES.map((s) => chip(s, s, counts[s] || 0)));
  }

  drawRows(page) {
    this.nextAfter = page.next_after;
    const rows = page.workflows.map((w) => h("tr", { "data-workflow-id": w.workflow_id },
      h("td", { class: "id mono", title: w.workflow_id },
        h("a", { href: `#/workflows/${encodeURIComponent(w.workflow_id)}` }, w.workflow_id)),
      h("td", {}, badge(w.status)),
      h("td", {}, `${w.steps.completed} / ${w.steps.total}`,
        w.steps.failed ? h("span", { class: "error-text" }, ` (${w.steps.failed} failed)`) : null),
      h("td", {}, w.deployment || h("span", { class: "muted" }, "run")),
      h("td", {}, w.queue),
      h("td", { title: time(w.created_at_ms) }, ago(w.created_at_ms)),
      h("td", { title: time(w.updated_at_ms) }, ago(w.updated_at_ms))));
    if (rows.length === 0) {
      const filters = [this.status && `status ${this.status}`, this.search && `an id containing “${this.search}”`]
        .filter(Boolean).join(" and ");
      rows.push(h("tr", {}, h("td", { colspan: 7, class: "muted" },
        filters ? `No workflow with ${filters}.` : "No workflows yet: `durable-host start NAME --input JSON` queues one.")));
    }
    this.table.replaceChildren(...rows);
    const page_number = this.cursors.length;
    this.pageInfo.textContent = `page ${page_number}`;
    this.newer.disabled = page_number === 1;
    this.older.disabled = !this.nextAfter;
  }
}

// ---- A workflow's page ---------------------------------------------------

class WorkflowPage {
  constructor(root, id) {
    this.id = id;
    this.root = root;
    this.steps = []; // by sequence - 1
    this.settled = 0; // steps 1..settled are finished and will not change
    this.selected = null;
    this.workflow = null;
    this.logAfter = 0;
    this.poller = new Poller(WORKFLOW_POLL_MS, () => this.refresh());
  }

  stop() {
    this.poller.stop();
    if (this.timeline) this.timeline.stop();
  }

  path(suffix = "") {
    return `/v1/workflows/${encodeURIComponent(this.id)}${suffix}`;
  }

  async refresh() {
    if (this.workflow && FINAL.has(this.workflow.status)) {
      // Ended: only a `resume` or an upgrade changes it now (a suspended
      // one also takes signals, which only its history shows).
      const now = (await api(this.path())).body;
      if (now.updated_at_ms === this.workflow.updated_at_ms && now.status === this.workflow.status) return;
    }
    let history;
    try {
      let after = this.settled;
      // The steps from the first unfinished one: a page at a time.
      for (;;) {
        history = (await api(`${this.path("/steps")}?after=${after}&limit=${STEP_PAGE}`)).body;
        if (this.poller.stopped) return; // the page was left meanwhile
        if (this.workflow && history.run_id !== this.workflow.run_id && after > 0) {
          // A new run (resumed, taken over) may change any unfinished step.
          this.settled = 0;
          after = 0;
          continue;
        }
        for (const step of history.steps) this.steps[step.sequence - 1] = step;
        if (!history.next_after) break;
        after = history.next_after;
      }
    } catch (e) {
      if (!this.workflow && !this.poller.stopped) {
        fill(this.root, h("p", {}, h("a", { href: "#/" }, "← All workflows")), errorPanel(e));
      }
      throw e;
    }
    this.steps.length = Math.max(this.steps.length, history.steps.length ? history.steps[history.steps.length - 1].sequence : this.settled);
    // A finished step does not change within a run: later polls start
    // after the finished ones.
    while (this.settled < this.steps.length && this.steps[this.settled] &&
      this.steps[this.settled].finished_at_ms !== null) this.settled++;
    this.workflow = history;
    await this.refreshLogs();
    if (this.poller.stopped) return;
    this.draw();
  }

  async refreshLogs() {
    for (;;) {
      const page = (await api(`${this.path("/logs")}?after=${this.logAfter}&limit=1000`)).body;
      if (page.lines.length === 0) break;
      this.logs = (this.logs || []).concat(page.lines).slice(-2000);
      this.logAfter = page.next_after;
      if (page.lines.length < 1000) break;
    }
  }

  draw() {
    if (!this.built) this.build();
    const w = this.workflow;
    this.status.replaceWith(this.status = badge(w.status, "workflow-status"));
    this.cancelButton.disabled = FINAL.has(w.status);
    this.signalButton.disabled = FINAL.has(w.status);
    this.drawFacts();
    this.drawResult();
    this.timeline.update(this.steps, w);
    this.drawPublished();
    this.drawSignals();
    this.drawEvents();
    this.drawLogs();
    if (this.selected !== null) this.drawStep(this.steps[this.selected - 1]);
  }

  build() {
    this.built = true;
    this.status = badge("", "workflow-status");
    this.cancelButton = h("button", { id: "cancel-button", onclick: () => this.cancel() }, "Cancel…");
    this.forkButton = h("button", { id: "fork-button", onclick: () => this.fork(this.selected || 1) }, "Fork…");
    this.signalButton = h("button", { id: "signal-button", onclick: () => this.signal() }, "Send signal…");
    this.published = h("dl", { class: "published", id: "published" });
    this.signals = h("ol", { class: "events", id: "signals" });
    this.facts = h("div", { class: "facts", id: "workflow-facts" });
    this.result = h("div", { class: "io", id: "workflow-io" });
    this.timeline = new Timeline((sequence) => this.select(sequence));
    this.stepDetail = h("div", { class: "panel step-detail", id: "step-detail", hidden: true });
    this.events = h("ol", { class: "events", id: "events" });
    this.logView = h("pre", { class: "json mono logs", id: "logs" });
    this.root.replaceChildren(
      h("p", {}, h("a", { href: "#/" }, "← All workflows")),
      h("div", { class: "heading" }, h("h1", { id: "workflow-id" }, this.id), this.status,
        h("div", { class: "actions" }, this.signalButton, this.forkButton, this.cancelButton)),
      h("div", { class: "panel" }, this.facts),
      h("div", { class: "panel" }, this.result),
      h("div", { class: "panel" }, h("h2", {}, "Timeline"), this.timeline.element),
      this.stepDetail,
      h("div", { class: "panel" }, h("details", { open: true }, h("summary", {}, "Published (ctx.set_event)"), this.published)),
      h("div", { class: "panel" }, h("details", { open: true }, h("summary", {}, "Signals"), this.signals)),
      h("div", { class: "panel" }, h("details", { open: true }, h("summary", {}, "Events"), this.events)),
      h("div", { class: "panel" }, h("details", {}, h("summary", {}, "Output (stdout, stderr, log)"), this.logView)));
  }

  drawFacts() {
    const w = this.workflow;
    const done = this.steps.filter((s) => s && s.status === "completed").length;
    fill(this.facts,
      fact("deployment", w.deployment || "— (started by run)"),
      w.parent_id ? fact("parent", h("a", { href: `#/workflows/${encodeURIComponent(w.parent_id)}`, id: "parent-link" }, w.parent_id)) : null,
      fact("queue", w.queue),
      fact("steps", `${done} completed of ${this.steps.length}`, { id: "step-count" }),
      fact("created", time(w.created_at_ms)),
      fact("updated", time(w.updated_at_ms)),
      fact("run", h("span", { class: "mono" }, w.run_id || "—")),
      w.status === "running" && w.owner && w.owner.pid ? fact("owner", `pid ${w.owner.pid} on ${w.owner.host}`) : null,
      w.wake_at_ms ? fact("wakes", `${time(w.wake_at_ms)} (${w.wake_at_ms > Date.now() ? "in " + duration(w.wake_at_ms - Date.now()) : "due"})`) : null,
      w.cancel_requested && !FINISHED.has(w.status) ? fact("cancel", "requested: stops at its next step") : null);
  }

  drawResult() {
    const w = this.workflow;
    const key = JSON.stringify([w.status, w.output, w.error]);
    if (key === this.resultKey) return; // keep what the reader opened or closed
    this.resultKey = key;
    let outcome;
    if (w.error) {
      outcome = h("div", { id: "workflow-error" }, h("h2", {}, "Error", w.error_code ? h("span", { class: "muted" }, ` (${w.error_code})`) : null),
        h("p", { class: "error-text" }, w.error));
    } else if (w.status === "completed") {
      outcome = h("div", { id: "workflow-output" }, h("h2", {}, "Output"), jsonBlock("output", w.output));
    } else {
      outcome = h("div", {}, h("h2", {}, "Output"), h("p", { class: "muted" }, `none yet: the workflow is ${w.status}`));
    }
    fill(this.result, h("div", {}, h("h2", {}, "Input"), jsonBlock("input", w.input, "workflow-input")), outcome);
  }

  drawPublished() {
    const published = this.workflow.published || [];
    const key = JSON.stringify(published.map((e) => [e.key, e.step]));
    if (key === this.publishedKey) return;
    this.publishedKey = key;
    this.published.replaceChildren(...(published.length ? published.flatMap((e) => [
      h("dt", { class: "mono" }, e.key),
      h("dd", { "data-key": e.key }, h("span", { class: "mono" }, JSON.stringify(e.value)),
        h("span", { class: "muted" }, ` (${time(e.published_at_ms)}, ${e.step})`)),
    ]) : [h("dd", { class: "muted" }, "nothing published")]));
  }

  drawSignals() {
    const signals = this.workflow.signals || [];
    const key = JSON.stringify(signals.map((s) => [s.signal_id, s.taken_by]));
    if (key === this.signalsKey) return;
    this.signalsKey = key;
    this.signals.replaceChildren(...(signals.length ? signals.map((s) => h("li", { "data-signal-id": s.signal_id },
      h("span", { class: "muted mono" }, time(s.sent_at_ms)), " ", h("b", {}, s.name), " ",
      h("span", { class: "mono" }, JSON.stringify(s.value)), " ",
      s.taken_by ? h("span", { class: "muted" }, `taken by ${s.taken_by}`) : h("span", { class: "badge waiting" }, "not taken yet")))
      : [h("li", { class: "muted" }, "no signals sent")]));
  }

  drawEvents() {
    const events = this.workflow.events;
    if (this.eventCount === events.length) return;
    this.eventCount = events.length;
    this.events.replaceChildren(...events.map((e) => h("li", {},
      h("span", { class: "muted mono" }, time(e.at_ms)), " ", h("b", {}, e.kind), e.detail ? `: ${e.detail}` : "")));
  }

  drawLogs() {
    const lines = this.logs || [];
    if (this.logsDrawn === this.logAfter) return;
    this.logsDrawn = this.logAfter;
    this.logView.textContent = lines.length
      ? lines.map((l) => `${l.stream.padEnd(6)} ${l.step ? `[${l.step}] ` : ""}${l.text}`).join("\n")
      : "(nothing printed)";
  }

  select(sequence) {
    this.selected = sequence;
    this.timeline.select(sequence);
    this.drawStep(this.steps[sequence - 1]);
  }

  drawStep(step) {
    if (!step) return;
    const key = JSON.stringify([step.sequence, step.status, step.attempts, step.finished_at_ms]);
    if (key === this.stepKey) return;
    this.stepKey = key;
    const attempts = step.earlier_attempts.map((a) => h("li", {},
      `attempt ${a.attempt} `, a.interrupted ? h("b", {}, "interrupted") : h("b", { class: "error-text" }, "failed"),
      ` at ${time(a.ended_at_ms)}: `, h("span", { class: "error-text" }, a.error),
      a.backoff_ms !== null && a.backoff_ms !== undefined ? h("span", { class: "muted" }, ` (retried after ${duration(a.backoff_ms)})`) : null));
    this.stepDetail.hidden = false;
    fill(this.stepDetail,
      h("div", { class: "heading" }, h("h2", { id: "step-key", class: "mono" }, `${step.sequence}. ${step.key}`), badge(step.status),
        h("div", { class: "actions" }, h("button", { id: "fork-from-step", onclick: () => this.fork(step.sequence) }, `Fork from step ${step.sequence}…`))),
      h("div", { class: "facts" },
        fact("attempts", String(step.attempts)),
        fact("failures", String(step.failures)),
        fact("started", time(step.started_at_ms)),
        fact("finished", time(step.finished_at_ms)),
        fact("duration", duration(step.duration_ms)),
        step.sleep_until_ms ? fact("sleeps until", time(step.sleep_until_ms)) : null,
        fact("idempotency key", h("span", { class: "mono", id: "step-idempotency-key" }, step.idempotency_key), { class: "wide" }),
        fact("run", h("span", { class: "mono" }, step.run_id))),
      step.error ? h("p", { class: "error-text", id: "step-error" }, step.error_code ? `[${step.error_code}] ` : "", step.error) : null,
      step.output !== null && step.output !== undefined ? jsonBlock("output", step.output, "step-output") : null,
      attempts.length ? h("div", {}, h("h2", {}, "Earlier attempts"), h("ul", { class: "attempts" }, attempts)) : null);
  }

  cancel() {
    confirmAction({
      title: `Cancel ${this.id}?`,
      text: "A workflow nobody runs is cancelled at once; a running one stops at its next step and may run its compensation steps. This cannot be undone.",
      button: "Cancel the workflow",
      act: async () => {
        await api(this.path("/cancel"), { method: "POST", body: {} });
        this.poller.poke();
      },
    });
  }

  signal() {
    confirmAction({
      title: `Send a signal to ${this.id}?`,
      text: "The workflow's next wait for this name takes it (one sent before it waits is kept); a workflow waiting for it resumes at once.",
      button: "Send",
      fields: [
        { name: "name", label: "Signal name", placeholder: "approval" },
        { name: "value", label: "Value (JSON)", value: "null" },
      ],
      act: async (values) => {
        if (!values.name) throw new ApiError(400, "a signal has a name", null);
        let value;
        try {
          value = JSON.parse(values.value || "null");
        } catch (e) {
          throw new ApiError(400, `the value is not JSON: ${e.message}`, 'e.g. {"approved": true}');
        }
        await api(this.path(`/signals/${encodeURIComponent(values.name)}`), { method: "POST", body: { value } });
        this.poller.poke();
      },
    });
  }

  fork(sequence) {
    confirmAction({
      title: `Fork ${this.id}?`,
      text: "A new workflow gets the same input and a copy of the steps before the one named here, with their results; `serve` runs the rest.",
      button: "Fork",
      fields: [
        { name: "from_step", label: "First step to run again", value: String(sequence) },
        { name: "workflow_id", label: "New workflow id (empty: a fresh one)", placeholder: "wf-…" },
      ],
      act: async (values) => {
        const from = Number(values.from_step);
        if (!Number.isInteger(from) || from < 1) throw new ApiError(400, "the first step is a number from 1", null);
        const body = { from_step: from };
        if (values.workflow_id) body.workflow_id = values.workflow_id;
        const forked = (await api(this.path("/fork"), { method: "POST", body })).body;
        location.hash = `#/workflows/${encodeURIComponent(forked.workflow_id)}`;
      },
    });
  }
}

// ---- The timeline --------------------------------------------------------

/**
 * A Gantt chart of the steps: one row per step, a bar from its start to its
 * end on a shared time axis, so parallel branches overlap. Only the rows in
 * view are in the DOM, so 10,000 steps scroll as easily as ten.
 */
class Timeline {
  constructor(onSelect) {
    this.onSelect = onSelect;
    this.steps = [];
    this.selected = null;
    this.axis = h("div", { class: "axis", id: "timeline-axis" });
    this.spacer = h("div", { class: "spacer" });
    this.viewport = h("div", { class: "gantt", id: "timeline", onscroll: () => this.schedule() });
    this.viewport.append(this.spacer);
    this.element = h("div", {},
      h("div", { class: "legend" },
        h("span", {}, h("i", { style: "background: var(--completed)" }), "completed"),
        h("span", {}, h("i", { style: "background: var(--running)" }), "running"),
        h("span", {}, h("i", { style: "background: var(--failed)" }), "failed"),
        h("span", {}, h("i", { style: "background: var(--sleeping)" }), "durable sleep or wait"),
        h("span", {}, h("b", { class: "error-text" }, "!"), " failed attempt, retried"),
        h("span", {}, h("b", { class: "error-text" }, "×"), " attempt interrupted (its run died)")),
      this.axis, this.viewport);
    this.onResize = () => this.schedule();
    window.addEventListener("resize", this.onResize);
  }

  stop() {
    window.removeEventListener("resize", this.onResize);
  }

  update(steps, workflow) {
    this.steps = steps;
    this.workflow = workflow;
    const finishedAt = FINISHED.has(workflow.status) ? workflow.updated_at_ms : null;
    let start = workflow.created_at_ms;
    let end = finishedAt || Date.now();
    for (const s of steps) {
      if (!s) continue;
      start = Math.min(start, s.started_at_ms);
      end = Math.max(end, s.finished_at_ms || 0, sleepEnd(s) || 0);
    }
    if (workflow.wake_at_ms) end = Math.max(end, workflow.wake_at_ms);
    this.start = start;
    // A little room after the last bar, so that it is not cut at the edge.
    this.end = Math.max(end, start + 1) + Math.max(1, (end - start) * 0.02);
    this.version = (this.version || 0) + 1;
    this.spacer.style.height = `${steps.length * ROW_HEIGHT}px`;
    if (steps.length === 0) {
      this.spacer.replaceChildren(h("p", { class: "muted", style: "padding: 4px" }, "No steps yet."));
      this.spacer.style.height = "auto";
    }
    this.drawAxis();
    this.render();
  }

  select(sequence) {
    this.selected = sequence;
    this.render();
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.render(); });
  }

  /** Where time `ms` falls, as a fraction of the track. */
  x(ms) {
    return (ms - this.start) / (this.end - this.start);
  }

  drawAxis() {
    const ticks = 6;
    const labels = [];
    for (let i = 0; i <= ticks; i++) {
      const at = i / ticks;
      const align = i === 0 ? "translateX(0)" : i === ticks ? "translateX(-100%)" : "translateX(-50%)";
      labels.push(h("span", { style: `left: ${at * 100}%; transform: ${align}` },
        `+${duration(Math.round(at * (this.end - this.start)))}`));
    }
    this.axis.replaceChildren(...labels);
  }

  render() {
    if (this.steps.length === 0) return;
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - 10);
    const last = Math.min(this.steps.length, Math.ceil((top + height) / ROW_HEIGHT) + 10);
    // Rows are drawn again only when they would look different.
    const drawn = [first, last, this.selected, this.version, this.viewport.clientWidth].join();
    if (drawn === this.drawn) return;
    this.drawn = drawn;
    const rows = [];
    for (let i = first; i < last; i++) {
      const step = this.steps[i];
      if (step) rows.push(this.row(step, i));
    }
    this.spacer.replaceChildren(...rows);
  }

  row(step, index) {
    const pct = (ms) => `${Math.min(100, Math.max(0, this.x(ms) * 100))}%`;
    const isSleep = step.name === "durable.sleep";
    const barEnd = step.finished_at_ms ?? (step.status === "running" ? Date.now() : step.started_at_ms);
    const sleepUntil = sleepEnd(step);
    // A wait's answer is recorded when it comes: its bar starts where the
    // step before it ended, when the workflow began to wait.
    const previous = index > 0 ? this.steps[index - 1] : null;
    const waitedFrom = isWait(step) && previous && previous.finished_at_ms ? previous.finished_at_ms : null;
    const barStart = waitedFrom ?? step.started_at_ms;
    const track = h("div", { class: "track" });
    const startPct = Math.min(99.5, this.x(barStart) * 100);
    const endPct = Math.min(100, this.x(Math.max(barEnd, sleepUntil || 0)) * 100);
    const kind = isSleep || waitedFrom ? "sleep" : step.status;
    track.append(h("div", {
      class: `bar ${kind}`,
      "data-key": step.key,
      "data-start-ms": step.started_at_ms,
      "data-end-ms": step.finished_at_ms ?? "",
      style: `left: ${startPct}%; width: ${Math.max(0, endPct - startPct)}%`,
      title: `${step.key}: ${step.status}, ${time(step.started_at_ms)} → ${step.finished_at_ms ? time(step.finished_at_ms) : "…"}` +
        (sleepUntil ? `, sleeps until ${time(sleepUntil)}` : "") +
        (waitedFrom ? `, waited from ${time(waitedFrom)}` : ""),
    }));
    for (const a of step.earlier_attempts) {
      track.append(h("span", {
        class: `mark ${a.interrupted ? "interrupted" : "retried"}`,
        style: `left: ${pct(a.ended_at_ms)}`,
        title: `attempt ${a.attempt} ${a.interrupted ? "interrupted" : "failed"}: ${a.error}`,
      }, a.interrupted ? "×" : "!"));
    }
    return h("div", {
      class: `row${this.selected === step.sequence ? " selected" : ""}`,
      "data-sequence": step.sequence,
      style: `top: ${index * ROW_HEIGHT}px`,
      onclick: () => this.onSelect(step.sequence),
    },
    h("div", { class: "label", title: step.key },
      h("span", { class: "seq" }, step.sequence), h("span", { class: "mono" }, step.key)),
    track);
  }
}

/** Whether `step` records the answer to a wait (a signal, a child's end). */
function isWait(step) {
  return step.name.startsWith("durable.signal:") || step.name.startsWith("durable.child-result:");
}

/** When a durable sleep step wakes up, in ms. */
function sleepEnd(step) {
  return step && step.sleep_until_ms ? step.sleep_until_ms : null;
}
