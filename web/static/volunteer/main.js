// The volunteer page and the embed widget: consent, then a worker does everything.

import { WorkerClient } from "./client.js";
import { View } from "./view.js";

const view = new View(document);
let client = null;

function unsupported() {
  if (typeof WebAssembly !== "object") return "This browser cannot run WebAssembly, which the in-browser Python needs. Try a current Chrome, Firefox, Safari or Edge.";
  if (typeof Worker !== "function") return "This browser cannot run Web Workers, which keep training off the page.";
  return null;
}

function join() {
  const data = view.dataChoice();
  if (data === null) {
    view.q("csv-file").focus();
    view.q("csv-file").setAttribute("aria-invalid", "true");
    return;
  }
  view.started();
  const problem = unsupported();
  if (problem) {
    view.handle({ type: "error", message: problem });
    return;
  }
  client = new WorkerClient((event) => {
    view.handle(event);
    if (event.type === "left") client.terminate();
  });
  client.start(data, document.body.dataset.task);
}

// A returning volunteer gets Pyodide, NumPy and the core from the service worker's cache.
// Without one (an old browser, a plain-http origin) everything still loads from the network.
navigator.serviceWorker
  ?.register(`/sw.js?v=${encodeURIComponent(document.body.dataset.runtime)}`)
  .catch((error) => console.warn("webfl: no runtime cache (service worker not registered)", error));

if (document.body.dataset.mode !== "embed") view.wireDataChoice();
view.q("join").addEventListener("click", join);
view.q("pause").addEventListener("click", () => client?.togglePause());
view.q("leave").addEventListener("click", () => {
  client?.leave();
  view.left();
});
// Leaving the page closes the socket anyway; terminating first makes it prompt.
window.addEventListener("pagehide", () => client?.terminate());
