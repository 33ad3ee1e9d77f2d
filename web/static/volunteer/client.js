// The page's handle on the training worker. The worker does all the work; this only
// starts it, forwards the volunteer's clicks and hands the worker's events to a callback.

const LEAVE_GRACE_MS = 1000;

export class WorkerClient {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.worker = new Worker(new URL("../worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (event) => onEvent(event.data);
    // A worker script that fails to load or parse fires this, with no message at all.
    this.worker.onerror = (event) => {
      event.preventDefault();
      onEvent({ type: "error", message: `The training worker could not start${event.message ? `: ${event.message}` : " (its script failed to load)"}.` });
    };
    this.paused = false;
  }

  start(data, task) {
    this.worker.postMessage({ type: "start", data, task });
  }

  togglePause() {
    this.paused = !this.paused;
    this.worker.postMessage({ type: this.paused ? "pause" : "resume" });
    return this.paused;
  }

  // Ask the worker to close its socket politely; if it is busy training it cannot
  // answer, so it is terminated anyway (the server then drops it from the round).
  leave() {
    this.worker.postMessage({ type: "leave" });
    setTimeout(() => this.terminate(), LEAVE_GRACE_MS);
  }

  terminate() {
    this.worker.terminate();
  }
}
