// The admin page: the chosen task's live view (polled every second), its runs, and the
// tasks themselves (switch, create, edit). Every panel reads /api/tasks/{name}/...

import { SignedOut, call } from "./api.js";
import { LaunchForm } from "./form.js";
import { TaskForm, facts } from "./tasks.js";
import { Dashboard } from "./view.js";

const POLL_MS = 1000;
const q = (id) => document.querySelector(`[data-testid="${id}"]`);
const dashboard = new Dashboard(document);
const form = q("launch-form");
const result = q("launch-result");
const launchForm = new LaunchForm(document, form);
const taskForm = new TaskForm(q("task-form"));
const switcher = q("task-switcher");
// What /api/history was last fetched for: runs change status only when a run starts or
// ends, rounds only when one commits, and a round is abandoned only as the engine
// changes state.
let historyKey = null;
let tasks = new Map(); // name -> definition (with `running`), from GET /api/tasks
let current = null; // the chosen task's name
let apiTraining = null; // the engine's training defaults (a new task's form starts with them)

const api = (suffix = "") => `/api/tasks/${encodeURIComponent(current)}${suffix}`;

function signedOut() {
  // The session expired or the token changed: the server shows the sign-in form.
  window.location.assign("/admin");
}

function fromHash() {
  const match = /^#task=([a-z0-9-]{1,40})$/.exec(window.location.hash);
  return match ? match[1] : null;
}

async function loadTasks(prefer) {
  const listing = await call("GET", "/api/tasks");
  tasks = new Map(listing.tasks.map((t) => [t.name, t]));
  switcher.replaceChildren(...listing.tasks.map((t) => new Option(`${t.title} (${t.name})`, t.name)));
  const wanted = [prefer, fromHash(), current].find((name) => name && tasks.has(name)) ?? listing.default;
  choose(wanted, true);
}

// Every panel follows the chosen task; the URL keeps it, so a reload opens it again.
function choose(name, reloaded = false) {
  const changed = name !== current;
  current = name;
  switcher.value = name;
  if (window.location.hash !== `#task=${name}`) window.history.replaceState(null, "", `#task=${name}`);
  const task = tasks.get(name);
  q("task-summary").textContent = `${task.title} · ${task.kind}`;
  document.title = `webfl admin · ${task.title}`;
  q("download-model").href = api("/model?format=npz");
  q("download-onnx").href = api("/model?format=onnx");
  q("download-history-csv").href = api("/history?format=csv");
  q("download-history-json").href = api("/history?format=json");
  q("task-facts").replaceChildren(
    ...facts(task).map(([label, value]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = value;
      div.append(dt, dd);
      return div;
    }),
  );
  if (changed || reloaded) {
    if (changed) {
      dashboard.reset();
      historyKey = null;
      taskForm.close();
      result.textContent = "";
    }
    if (dashboard.formReady) launchForm.useDefaults(task.training);
  }
}

async function refresh() {
  const name = current;
  try {
    const status = await call("GET", api("/status"));
    const key = `${status.run?.id}:${status.run?.running}:${status.history.length}:${status.state}`;
    if (key !== historyKey) {
      const history = await call("GET", api("/history"));
      if (name !== current) return; // another task was chosen meanwhile
      dashboard.renderRuns(history);
      historyKey = key;
    }
    if (name !== current) return;
    dashboard.render(status);
    const running = Boolean(status.run?.running);
    q("edit-task").disabled = running;
    q("edit-hint").textContent = running ? "The task has a run in progress: stop it to edit the task." : "";
    dashboard.error(null);
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot get the status: ${error.message}`);
  }
}

async function buildForm() {
  try {
    const { settings } = await call("GET", "/api/run-settings");
    launchForm.build(settings, (preset) => {
      result.textContent = `Preset “${preset.name}” filled in: ${preset.about}`;
    });
    const d = Object.fromEntries(settings.map((s) => [s.name, s.default]));
    apiTraining = { epochs: d.local_epochs, batch_size: d.batch_size, lr: d.lr };
    dashboard.formReady = true;
    if (current) launchForm.useDefaults(tasks.get(current).training);
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot get the run settings: ${error.message}`);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!launchForm.validate()) return;
  result.textContent = "Launching…";
  try {
    const started = await call("POST", api("/rounds"), launchForm.values());
    result.textContent = `Run ${started.run} started: ${started.config.rounds} round(s).`;
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    result.textContent = `Not launched: ${error.message}`;
  }
  refresh();
});

q("reset-defaults").addEventListener("click", () => {
  launchForm.apply();
  result.textContent = "Every setting is back to the task's default.";
});

q("stop").addEventListener("click", async () => {
  try {
    const { stopped } = await call("POST", api("/rounds/stop"));
    result.textContent = stopped ? "Run stopped." : "No run was running.";
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    result.textContent = `Not stopped: ${error.message}`;
  }
  refresh();
});

// -- tasks -------------------------------------------------------------------------------

function taskError(message) {
  q("task-error").textContent = message ?? "";
  q("task-error").hidden = !message;
}

switcher.addEventListener("change", () => {
  choose(switcher.value);
  refresh();
});
window.addEventListener("hashchange", () => {
  const name = fromHash();
  if (name && tasks.has(name) && name !== current) {
    choose(name);
    refresh();
  }
});

q("new-task").addEventListener("click", () => {
  taskError(null);
  taskForm.open(null, apiTraining ?? { epochs: 2, batch_size: 32, lr: 0.1 });
});
q("edit-task").addEventListener("click", () => {
  taskError(null);
  const { running, ...definition } = tasks.get(current);
  taskForm.open(definition);
});
q("task-cancel").addEventListener("click", () => {
  taskError(null);
  taskForm.close();
});

q("task-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!taskForm.validate()) return;
  const definition = taskForm.definition();
  const editing = taskForm.editing;
  try {
    const saved = editing ? await call("PUT", api(), definition) : await call("POST", "/api/tasks", definition);
    taskError(null);
    taskForm.close();
    q("task-result").textContent = editing ? `Task ${saved.name} saved.` : `Task ${saved.name} created.`;
    historyKey = null;
    await loadTasks(saved.name);
    refresh();
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    taskError(`${editing ? "Not saved" : "Not created"}: ${error.message}`);
  }
});

// A definition file as `webfl serve --task-file` takes it: one task or a list.
q("task-file").addEventListener("change", async (event) => {
  const input = event.target;
  const file = input.files[0];
  input.value = ""; // the same file may be picked again after a fix
  if (!file) return;
  taskError(null);
  let parsed;
  try {
    parsed = JSON.parse(await file.text());
  } catch (error) {
    return taskError(`${file.name} is not valid JSON: ${error.message}`);
  }
  const entries = Array.isArray(parsed) ? parsed : [parsed];
  const created = [];
  for (const [i, entry] of entries.entries()) {
    try {
      created.push((await call("POST", "/api/tasks", entry)).name);
    } catch (error) {
      if (error instanceof SignedOut) return signedOut();
      taskError(`${file.name}${Array.isArray(parsed) ? ` [${i}]` : ""}: not created: ${error.message}`);
      break;
    }
  }
  if (created.length) {
    q("task-result").textContent = `Created from ${file.name}: ${created.join(", ")}.`;
    await loadTasks(created.at(-1));
    refresh();
  }
});

// setTimeout after each answer rather than setInterval: a slow server never gets
// a pile of overlapping polls.
async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

async function start() {
  try {
    await loadTasks();
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot list the tasks: ${error.message}`);
    return;
  }
  await buildForm();
  poll();
}

dashboard.initChart();
start();
