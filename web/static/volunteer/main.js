// The volunteer page and the embed widget: consent, then a worker does everything.

import { firstLook } from "./csvcheck.js";
import { WorkerClient } from "./client.js";
import { View } from "./view.js";
import { labelFiles, labelFolder } from "./images.js";
import { TryModel } from "./predict.js";
import { mark } from "../worker/timing.js";

const view = new View(document);
let client = null;
let tryModel = null;

function unsupported() {
  if (typeof WebAssembly !== "object") return "This browser cannot run WebAssembly, which the in-browser Python needs. Try a current Chrome, Firefox, Safari or Edge.";
  if (typeof Worker !== "function") return "This browser cannot run Web Workers, which keep training off the page.";
  return null;
}

// What the worker needs first, fetched while the volunteer reads: Join then starts the
// downloads at once. Any failure here leaves it to the worker, which says what went wrong.
const configFetch = document.body.dataset.task
  ? fetch(`/api/config?task=${encodeURIComponent(document.body.dataset.task)}`, { cache: "no-cache" })
      .then((response) => (response.ok ? response.json() : null))
      .catch(() => null)
  : Promise.resolve(null);

async function join() {
  mark("join"); // where the start-up's measures (worker/timing.js) count from
  const data = view.dataChoice();
  if (data === null) {
    const input = view.q(view.root.querySelector('input[name="data"][value="images"]')?.checked ? "image-folder" : "csv-file");
    input.focus();
    input.setAttribute("aria-invalid", "true");
    return;
  }
  store(CONSENT_KEY, { at: new Date().toISOString(), data: data.kind });
  const joinedAt = performance.now();
  const problem = unsupported();
  // The worker first: its modules download while the page draws the loading state.
  if (!problem) {
    client = new WorkerClient((event) => {
      if (event.type === "stage" && event.label === "Connecting") store(LOAD_KEY, { seconds: (performance.now() - joinedAt) / 1000 });
      view.handle(event);
      tryModel.handle(event);
      if (event.type === "left") client.terminate();
    });
    tryModel = new TryModel(view.root, client);
  }
  view.started();
  view.expectLoad(Number(readStored(LOAD_KEY).seconds));
  if (problem) {
    view.handle({ type: "error", message: problem });
    return;
  }
  client.start(data, settings.cpu, document.body.dataset.task, await configFetch);
  applyHolds();
}

// -- consent, remembered for a returning volunteer until withdrawn ------------------------

const CONSENT_KEY = "webfl.consent";
const LOAD_KEY = "webfl.load"; // how long the last start-up took, for "what to expect"

function showConsent() {
  const consent = readStored(CONSENT_KEY);
  const box = view.root.querySelector('[data-part="remembered"]');
  const at = Date.parse(consent.at);
  box.hidden = !Number.isFinite(at);
  if (box.hidden) return;
  view.q("consent-remembered").textContent = `You agreed to take part on ${new Date(at).toLocaleDateString(undefined, { dateStyle: "medium" })} in this browser.`;
  const again = view.root.querySelector(`input[name="data"][value="${consent.data}"]`);
  if (again) again.checked = true;
}

// Withdrawing forgets everything this page keeps in the browser: the consent, the
// settings and the records of updates (IndexedDB), and stops any training.
function withdraw() {
  store(CONSENT_KEY, null);
  store(SETTINGS_KEY, null);
  store(LOAD_KEY, null);
  try {
    indexedDB.deleteDatabase("webfl");
  } catch {
    // no IndexedDB here: nothing was kept in it
  }
  if (client) {
    client.leave();
    view.left();
  }
  const box = view.root.querySelector('[data-part="remembered"]');
  view.q("consent-remembered").textContent = "Consent withdrawn; this browser keeps nothing of it.";
  view.q("withdraw").hidden = true;
  box.hidden = false;
}

// -- how hard the device works (kept for the next visit) -------------------------------

const SETTINGS_KEY = "webfl.settings";
const settings = { cpu: "full", onlyVisible: false, onlyCharging: false, ...readStored(SETTINGS_KEY) };
let battery = null;

function readStored(key) {
  try {
    return JSON.parse(localStorage.getItem(key) ?? "{}") ?? {};
  } catch {
    return {}; // storage blocked (a third-party frame) or garbled: defaults
  }
}

function store(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage blocked: the setting lasts for this visit only.
  }
}

function applyHolds() {
  client?.hold("hidden", settings.onlyVisible && document.visibilityState === "hidden");
  client?.hold("battery", Boolean(settings.onlyCharging && battery && !battery.charging));
}

function wireSettings() {
  const level = view.q("cpu-level");
  const visible = view.q("only-visible");
  const charging = view.q("only-charging");
  level.value = settings.cpu;
  visible.checked = settings.onlyVisible;
  charging.checked = settings.onlyCharging;
  const changed = () => {
    Object.assign(settings, { cpu: level.value, onlyVisible: visible.checked, onlyCharging: charging.checked });
    store(SETTINGS_KEY, settings);
    client?.setCpu(settings.cpu);
    applyHolds();
  };
  for (const input of [level, visible, charging]) input.addEventListener("change", changed);
  document.addEventListener("visibilitychange", applyHolds);
  // The Battery Status API exists in Chromium only; elsewhere the option is not offered.
  navigator.getBattery?.().then((b) => {
    battery = b;
    view.root.querySelector('[data-part="battery"]').hidden = false;
    b.addEventListener("chargingchange", applyHolds);
    applyHolds();
  }, () => {});
}

// A returning volunteer gets Pyodide, NumPy and the core from the service worker's cache.
// Without one (an old browser, a plain-http origin) everything still loads from the network.
navigator.serviceWorker
  ?.register(`/sw.js?v=${encodeURIComponent(document.body.dataset.runtime)}`)
  .catch((error) => console.warn("webfl: no runtime cache (service worker not registered)", error));

// In the widget, tell the embedding page how tall the content is, so its iframe fits it
// (embed.js checks that the message comes from this frame and origin).
function reportHeight() {
  let target = "*"; // a height is no secret; the referrer names the host when it is sent
  try {
    if (document.referrer) target = new URL(document.referrer).origin;
  } catch {
    // keep "*"
  }
  const send = () => window.parent.postMessage({ type: "webfl:height", height: Math.ceil(document.body.getBoundingClientRect().height) }, target);
  new ResizeObserver(send).observe(document.body);
  send();
}

if (document.body.dataset.mode === "embed" && window.parent !== window) reportHeight();
// The widget shows the data choice too when its task has no demo data.
if (view.q("csv-file")) {
  view.wireDataChoice();
  view.q("csv-file").addEventListener("change", checkCsv);
}
if (view.q("image-folder")) wireImages();

// Images: a folder's sub-folders name the classes; or files, all of the class picked.
function wireImages() {
  const classes = JSON.parse(document.body.dataset.classes);
  const pick = (choice) => {
    view.setImageChoice(choice);
    view.root.querySelector('input[name="data"][value="images"]').checked = true;
  };
  view.q("image-folder").addEventListener("change", (event) => event.target.files.length && pick(labelFolder(event.target.files, classes)));
  const files = () => view.q("image-files").files.length && pick(labelFiles(view.q("image-files").files, Number(view.q("image-label").value)));
  view.q("image-files").addEventListener("change", files);
  view.q("image-label").addEventListener("change", files);
}

// Name an obviously unusable file as soon as it is picked; Join waits for a good one.
async function checkCsv() {
  const input = view.q("csv-file");
  const file = input.files[0];
  const columns = document.body.dataset.columns ? JSON.parse(document.body.dataset.columns) : null;
  const problem = file ? await firstLook(file, Number(document.body.dataset.numFeatures), columns) : null;
  const box = view.q("csv-problem");
  box.hidden = !problem;
  box.textContent = problem ? `Your file “${file.name}” cannot be used: ${problem}.` : "";
  input.setAttribute("aria-invalid", String(Boolean(problem)));
  view.q("join").disabled = Boolean(problem);
}
wireSettings();
showConsent();
view.q("withdraw").addEventListener("click", withdraw);
view.q("join").addEventListener("click", join);
view.q("pause").addEventListener("click", () => client?.togglePause());
view.q("leave").addEventListener("click", () => {
  client?.leave();
  view.left();
});
// Leaving the page closes the socket anyway; terminating first makes it prompt.
window.addEventListener("pagehide", () => client?.terminate());
