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

  // config: the task's /api/config if the page has it already, else null.
  start(data, cpu, task, config) {
    this.worker.postMessage({ type: "start", data, cpu, task, config });
  }

  setCpu(level) {
    this.worker.postMessage({ type: "cpu", level });
  }

  // Training stands still while any hold is on ("hidden", "battery").
  hold(reason, on) {
    this.worker.postMessage({ type: "hold", reason, on });
  }

  // "Try the model": the worker answers with a "predicted" event of the same id.
  predict(id, input, which) {
    this.worker.postMessage({ type: "predict", id, input, which });
  }

  personalise() {
    this.worker.postMessage({ type: "personalise" });
  }

  togglePause() {
    this.paused = !this.paused;
    this.worker.postMessage({ type: this.paused ? "pause" : "resume" });
    return this.paused;
  }

  // Ask the worker to close its socket politely (it answers within a batch), then
  // terminate it to free its memory; if it does not answer, it is terminated anyway.
  leave() {
    this.worker.postMessage({ type: "leave" });
    setTimeout(() => this.terminate(), LEAVE_GRACE_MS);
  }

  terminate() {
    this.worker.terminate();
  }
}
