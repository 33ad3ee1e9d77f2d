// The volunteer's Web Worker: Pyodide, NumPy and the learning core run here, and so
// does the WebSocket, so training never blocks the page. This file only moves bytes
// and messages; every frame is read, answered and trained on by Python
// (webfl.core.browser.BrowserSession over webfl.core.volunteer.Volunteer), the same
// way webfl/simulate.py drives it natively.
//
// Page -> worker: {type: "start", data: {kind: "demo"} | {kind: "csv", file} |
//                 {kind: "images", items: [{file, label}], name}, cpu, task, config}, "pause",
//                 "resume", "leave", "cpu" {level: light|medium|full},
//                 "hold" {reason: hidden|battery, on},
//                 "predict" {id, input: {kind: "csv", file} | {kind: "images", items}, which: global|personal},
//                 "personalise".
// Worker -> page: "stage" {label, fraction}, "conn" {state: connecting|open|reconnecting|
//                 waiting, retry_in_s}, "snapshot" {snapshot}, "compute" {backend},
//                 "progress" {epoch, epochs, batch, batches, loss, done, held},
//                 "held" {reasons, done, batches_after_request}, "downloads" {stages: [{stage, done, total}]},
//                 "trained" {busy_ms, wall_ms}, "error" {message}, "left",
//                 "predicted" {id, result} | {id, error}, "personalised" {summary} | {error}.

// Only what starting the runtime needs is imported here, so Pyodide's load begins as soon
// as these few have arrived; what only a session needs comes while it loads (below).
import { Downloads } from "./worker/downloads.js";
// runtime.js imports it too; named here so it is fetched with its siblings, one round trip sooner.
import "./worker/kernel.js";
import { AssetError, firstFailure, loadRuntime } from "./worker/runtime.js";
import { mark, timed } from "./worker/timing.js";

mark("worker-ready"); // this worker's modules have arrived and run

// A module of this worker, or an error that names it (as a failed static import would
// not: the worker would only fail to start).
async function workerModule(path) {
  try {
    return await import(path);
  } catch (error) {
    const url = new URL(path, import.meta.url);
    const why = (await firstFailure([url.href])) || error.message;
    throw new AssetError(`A part of the training worker (${url.pathname}) could not be loaded (${why}). Reload the page.`);
  }
}

// The connection, the IndexedDB records, the models kept on this device and secure
// aggregation: imported now, in parallel with the runtime; set once they have arrived.
// start() awaits them before the session exists, and everything else that uses them
// runs only once there is a session.
let Connection, answerCrypto, reason, trainingImages, residuals, pendingUpdates, device;
const sessionModules = Promise.all(["./worker/connection.js", "./worker/records.js", "./worker/ondevice.js", "./worker/secagg.js"].map(workerModule)).then(
  ([connectionJs, recordsJs, ondeviceJs, secaggJs]) => {
    ({ Connection } = connectionJs);
    ({ answerCrypto } = secaggJs);
    ({ reason, trainingImages } = ondeviceJs);
    residuals = new recordsJs.Records("residuals", "error-feedback residual");
    pendingUpdates = new recordsJs.Records("pending", "pending update");
    device = new ondeviceJs.DeviceModels(bytesOut);
  },
);
sessionModules.catch(() => {}); // reported by start(), which awaits it

const PROGRESS_EVERY_MS = 100;
// The CPU-use setting: rest this many times a batch's compute time after each batch,
// so the worker is busy about 1/(1+rest) of the time while it trains.
const REST_PER_BUSY = { full: 0, medium: 1, light: 3 };

let cpu = "full";
// Why training stands still between two batches: "paused" (the volunteer), "hidden"
// (the tab, if they chose so), "battery" (not charging, if they chose so).
const holds = new Set();
let released = null; // resolves the wait of a held training when the last hold goes
let heldRequestedAt = null; // batches done when the first hold arrived
let batchesDone = 0;
let leaving = false;

let session = null; // Python BrowserSession
let config = null;
let connection = null;
let dataChoice = null;
let pendingKept = ""; // the pending record in IndexedDB, as session.pending_record() said
// Frames are handled strictly in order, one at a time, even when one needs a fetch.
let inbox = Promise.resolve();

const post = (type, body = {}) => self.postMessage({ type, ...body });

// Python returns bytes (or a list of them) as proxies; copy them out and free the proxy.
function bytesOut(proxy) {
  try {
    return proxy.toJs();
  } finally {
    proxy.destroy();
  }
}

function sendAll(socket, frames) {
  for (const frame of frames) connection?.send(socket, frame);
}

function postSnapshot() {
  post("snapshot", { snapshot: JSON.parse(session.snapshot()) });
}

function fail(error) {
  const message =
    error instanceof AssetError || error?.name === "DataError"
      ? error.message
      : `Something went wrong in the training worker: ${pythonMessage(error)}`;
  console.error(error);
  connection?.close(1000, "volunteer error");
  post("error", { message });
}

// The last line of a Python traceback ("ValueError: ...") is the part people can read.
function pythonMessage(error) {
  const text = String(error?.message ?? error).trim();
  return text.split("\n").pop();
}

class DataError extends Error {
  name = "DataError";
}

// No answer at all from the server (not an error it answered with).
class Unreachable extends AssetError {}

async function fetchJson(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch {
    throw new Unreachable(`Cannot reach the webfl server to get ${what}. Check your connection and reload.`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new AssetError(`The server could not give ${what} (HTTP ${response.status}${body.error ? `: ${body.error}` : ""}).`);
  return body;
}

async function useCsv(file) {
  const task = config.task;
  const text = await file.text();
  try {
    bytesOut(session.use_csv(text, task.num_features, task.num_classes, file.name));
  } catch (error) {
    throw new DataError(`Your file “${file.name}” cannot be used: ${pythonMessage(error).replace(/^ValueError: /, "")}`);
  }
}

async function useImages({ items, name }) {
  try {
    const { pixels, labels, skipped } = await trainingImages(items, config.task.definition);
    bytesOut(session.use_images(pixels, labels, name, skipped));
  } catch (error) {
    throw new DataError(`Your images “${name}” cannot be used: ${reason(error)}`);
  }
}

async function useDemoShard(socket) {
  const url = session.shard_url();
  if (!url) throw new DataError("The server offered no demo data and no file was chosen.");
  post("stage", { label: "Downloading your demo data", fraction: 0.97 });
  let response;
  try {
    response = await fetch(url);
  } catch {
    throw new AssetError(`The demo data could not be downloaded (no response from ${url}).`);
  }
  if (!response.ok) throw new AssetError(`The demo data could not be downloaded (HTTP ${response.status} at ${url}).`);
  const npz = new Uint8Array(await response.arrayBuffer());
  sendAll(socket, bytesOut(session.use_shard(npz)));
}

// A macrotask turn: lets the page's messages (pause, leave) in between two batches.
const nextTurn = (ms) =>
  new Promise((resolve) => {
    if (ms > 0) return setTimeout(resolve, ms);
    const channel = new MessageChannel();
    channel.port1.onmessage = resolve;
    channel.port2.postMessage(0);
  });

async function whileHeld() {
  if (holds.size === 0) return;
  post("held", { reasons: [...holds], done: batchesDone, batches_after_request: batchesDone - heldRequestedAt });
  await new Promise((resolve) => (released = resolve));
}

function hold(reason, on) {
  if (on && holds.size === 0) heldRequestedAt = batchesDone;
  if (on) holds.add(reason);
  else holds.delete(reason);
  if (holds.size === 0) wake();
}

// A held training goes on to its next step: the holds are gone, or it is to stop.
function wake() {
  released?.();
  released = null;
}

async function train(socket) {
  session.start_training();
  postSnapshot();
  const started = performance.now();
  const busy = await batches();
  if (leaving) return;
  post("trained", { busy_ms: busy, wall_ms: performance.now() - started });
  const update = bytesOut(session.take_update());
  if (update.length === 0) return; // stopped while paused: nothing to say
  // Durable before it leaves: a reload from here on re-sends it (BrowserSession.receive).
  await keepPending();
  // Sent only on the socket the task came on; after a reconnect the session re-sends it.
  if (!connection.send(socket, update)) console.info("connection changed during training; update kept for the next connection");
  keepResidual();
}

// The job's batches, one a macrotask turn (pause, leave and frames get in between);
// the busy time.
async function batches() {
  let busy = 0;
  let last = 0;
  for (;;) {
    await whileHeld();
    if (leaving) return busy;
    const t0 = performance.now();
    const step = session.train_batch();
    const spent = performance.now() - t0;
    busy += spent;
    if (!step) return busy;
    batchesDone += 1;
    const now = performance.now();
    const p = JSON.parse(step);
    if (now - last >= PROGRESS_EVERY_MS || p.batch === p.batches - 1 || holds.size) {
      last = now;
      post("progress", { ...p, done: batchesDone });
    }
    await nextTurn(spent * REST_PER_BUSY[cpu]);
  }
}

// What outlives a reload, per task and model (see worker/records.js).
const recordKey = () => `${config.task.name}/${config.task.model}`;

function keepResidual() {
  const spec = session.residual_spec();
  if (spec) residuals.put(recordKey(), { spec, bytes: bytesOut(session.residual_bytes()) });
}

function restoreResidual(record) {
  if (!record) return;
  if (session.load_residual(record.spec, record.bytes)) console.info(`webfl: restored the ${record.spec} error-feedback residual`);
  else console.info("webfl: the stored residual does not fit; starting afresh");
}

// Mirror the session's pending update into IndexedDB (written only when it changes).
async function keepPending() {
  const meta = session.pending_record();
  if (meta === pendingKept) return;
  pendingKept = meta;
  if (meta) await pendingUpdates.put(recordKey(), { ...JSON.parse(meta), frame: bytesOut(session.pending_frame()) });
  else await pendingUpdates.delete(recordKey());
}

function restorePending(record) {
  if (record && session.restore_pending(record.volunteer, record.resume, record.round, record.frame)) {
    pendingKept = session.pending_record();
    console.info(`webfl: an update for round ${record.round} awaits its verdict; asking to resume as ${record.volunteer}`);
  }
}

// IndexedDB works while the runtime loads: the page's configuration (`given`, if any) is
// kept for a start without the server, and what this device kept for the task is read.
async function keepAndRead(given) {
  await sessionModules;
  const keeping = given ? device.keepConfig(given) : null;
  const kept = await timed("records", () => readKept(recordKey()));
  await keeping;
  return kept;
}

function readKept(key) {
  return Promise.all([residuals.get(key), pendingUpdates.get(key), device.read(key)]).then(([residual, pending, models]) => ({
    residual,
    pending,
    models,
  }));
}

async function handleFrame(socket, buffer) {
  if (socket !== connection.socket) return; // a late frame of a dead connection
  sendAll(socket, bytesOut(session.receive(new Uint8Array(buffer))));
  // A secure-aggregation stage may wait for WebCrypto (keys, agreement, sealing).
  sendAll(socket, await answerCrypto(session, bytesOut));
  await keepPending(); // a verdict (or a new volunteer id) ends the pending update
  await device.keep(session, recordKey()); // a new global model stays for offline predictions
  const wait = session.take_wait();
  if (wait !== undefined && wait !== null) {
    // Like webfl simulate: leave, and come back when the server expects to need us.
    connection.away(wait);
    session.closed();
    post("conn", { state: "waiting", retry_in_s: wait });
    postSnapshot();
    return;
  }
  if (session.needs_data() && dataChoice.kind === "demo") {
    await useDemoShard(socket);
    if (socket !== connection.socket) return; // dropped while downloading
  }
  if (session.should_train()) await train(socket);
  postSnapshot();
}

function wsUrl() {
  const url = new URL(config.ws_path, self.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function connect() {
  connection = new Connection(wsUrl(), {
    onOpen(socket) {
      post("conn", { state: "open" });
      connection.send(socket, bytesOut(session.hello()));
      postSnapshot();
    },
    onFrame(socket, buffer) {
      // Frames wait their turn behind a training job; one that ends the job (the run
      // ended, the round refused us) is read now, so the training stops within a batch,
      // sends nothing, and the frame itself then reaches the page without waiting.
      // A status is shown at once as well ("round 1 of 4" can arrive just after the task,
      // while the task's frame is still being handled and before the job has started).
      if (socket === connection.socket) {
        const stops = session.notice(new Uint8Array(buffer));
        postSnapshot();
        if (stops) wake();
      }
      inbox = inbox.then(() => handleFrame(socket, buffer)).catch(fail);
    },
    onClose() {
      session.closed();
      postSnapshot();
    },
    onRetry(wait) {
      post("conn", { state: "reconnecting", retry_in_s: wait });
    },
    onFatal(reason) {
      post("error", { message: `The server refused this volunteer: ${reason}` });
    },
  });
  post("conn", { state: "connecting" });
  connection.open();
}

// Pause and resume queue behind the frames being handled, so they land between two
// frames. Before the runtime is loaded there is no session: the page keeps the buttons
// disabled until then.
function control(action) {
  if (!session) return;
  inbox = inbox
    .then(() => {
      sendAll(connection.socket, bytesOut(session[action]()));
      postSnapshot();
    })
    .catch(fail);
}

// The server's configuration, kept for the next start; when the server is unreachable,
// the kept one (the service worker has the runtime it names, IndexedDB the last model).
async function configuration(task) {
  try {
    const fresh = await fetchJson(`/api/config?task=${encodeURIComponent(task)}`, "its configuration");
    await sessionModules;
    await device.keepConfig(fresh);
    return fresh;
  } catch (error) {
    const kept = error instanceof Unreachable ? await sessionModules.then(() => device.keptConfig(task)) : null;
    if (!kept) throw error;
    console.info("webfl: the server is unreachable; starting from the configuration kept on this device");
    return kept;
  }
}

// Predictions and the personal fine-tune never wait for a frame or a training job: they
// read the model and the data and change neither.
async function predict({ id, input, which }) {
  if (!session) return post("predicted", { id, error: "The runtime is still loading." });
  try {
    post("predicted", { id, result: await device.predict(session, input, config.task.definition, which === "personal" ? "personal" : "global") });
  } catch (error) {
    post("predicted", { id, error: reason(error) });
  }
}

async function personalise() {
  if (!session) return post("personalised", { error: "The runtime is still loading." });
  try {
    post("personalised", { summary: await device.personalise(session, recordKey()) });
  } catch (error) {
    post("personalised", { error: reason(error) });
  }
  postSnapshot();
}

const handlers = {
  predict,
  personalise,
  // `config`: /api/config as the page fetched it while the volunteer read the consent
  // (one round trip fewer before the downloads start), or null: fetched here, or kept.
  async start({ data, cpu: level, task, config: given }) {
    dataChoice = data;
    if (level in REST_PER_BUSY) cpu = level;
    post("stage", { label: "Getting the configuration", fraction: 0.01 });
    config = given ?? (await timed("config", () => configuration(task)));
    const stage = (label, fraction) => post("stage", { label, fraction });
    const downloads = new Downloads(config.downloads, (progress) => post("downloads", progress));
    let runtime, kept;
    try {
      // Whichever fails first is reported, at once.
      [runtime, kept] = await Promise.all([loadRuntime(config, stage, downloads), keepAndRead(given)]);
    } finally {
      downloads.stop();
    }
    const { browser, compute } = runtime;
    post("compute", { backend: compute });
    session = await timed("session", () => browser.BrowserSession(`webfl-browser/${config.version}`, config.task.definition));
    browser.destroy();
    const { residual, pending, models } = kept;
    await timed("restore", () => {
      restoreResidual(residual);
      restorePending(pending);
      device.restore(session, models);
    });
    if (data.kind === "csv") {
      stage(`Reading ${data.file.name} (it stays in this tab)`, 0.97);
      await useCsv(data.file);
    }
    if (data.kind === "images") {
      stage(`Reading your images (they stay in this tab)`, 0.95);
      await useImages(data);
    }
    postSnapshot(); // a kept model can be tried before any server answers
    mark("connecting");
    stage("Connecting", 1);
    connect();
  },
  // The hold stops training within a batch; the session's pause (queued behind the
  // frame being handled) tells the server once the job is done.
  pause() {
    hold("paused", true);
    control("pause");
  },
  resume() {
    hold("paused", false);
    control("resume");
  },
  hold({ reason, on }) {
    if (reason === "hidden" || reason === "battery") hold(reason, Boolean(on));
  },
  cpu({ level }) {
    if (level in REST_PER_BUSY) cpu = level;
  },
  leave() {
    leaving = true;
    wake(); // a held training wakes up and stops
    connection?.close(1000, "volunteer left");
    session?.closed();
    post("left");
  },
};

self.onmessage = (event) => {
  const handler = handlers[event.data?.type];
  if (handler) Promise.resolve().then(() => handler(event.data)).catch(fail);
};
self.onunhandledrejection = (event) => fail(event.reason);
