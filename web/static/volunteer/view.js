// Renders what the worker reports. Nothing here computes anything about the model.

import * as format from "../format.js";
import { lineChart } from "../chart.js";

const HELP = {
  consent: "Choose your data and join when you are ready.",
  loading: "Getting Python, NumPy and the model ready in this tab…",
  connecting: "Connecting to the server…",
  idle: "Waiting to be picked for the next round.",
  keying: "Secure aggregation: exchanging keys with the other volunteers before training.",
  training: "Training on the examples in this tab.",
  submitted: "Update sent; waiting for the server to confirm it.",
  paused: "Paused: you will not be picked for rounds until you resume.",
  reconnecting: "Connection lost; trying again shortly.",
  waiting: "The server has enough volunteers for now and asked this tab to come back shortly.",
  closed: "Disconnected.",
  error: "Stopped because of the problem above.",
  left: "You left. Thank you for helping! Reload the page to join again.",
};

export class View {
  constructor(root) {
    const q = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.q = q;
    this.root = root;
    this.status = root.querySelector('[data-stage="status"]');
    this.consent = root.querySelector('[data-stage="consent"]');
    this.loading = root.querySelector('[data-part="loading"]');
    this.training = root.querySelector('[data-part="training"]');
    this.chartBox = root.querySelector('[data-part="chart"]');
    this.chart = null;
    this.page = "consent"; // page-level state while the session has none to show
    this.session = null;
    this.conn = null;
  }

  // -- data choice -------------------------------------------------------------

  dataChoice() {
    const images = this.root.querySelector('input[name="data"][value="images"]');
    if (images?.checked) return this.imageChoice ?? null;
    const csv = this.root.querySelector('input[name="data"][value="csv"]');
    if (csv?.checked) {
      const file = this.q("csv-file").files[0];
      return file ? { kind: "csv", file } : null;
    }
    return { kind: "demo" };
  }

  wireDataChoice() {
    for (const radio of this.root.querySelectorAll('input[name="data"]')) {
      radio.addEventListener("change", () => {
        for (const picker of this.root.querySelectorAll("[data-picker]")) picker.hidden = picker.dataset.picker !== radio.value || !radio.checked;
      });
    }
  }

  // The labelled images picked (volunteer/images.js), or the reason they cannot be used.
  setImageChoice(choice) {
    const box = this.q("images-problem");
    box.hidden = !choice.error;
    box.textContent = choice.error ? `These images cannot be used: ${choice.error}.` : "";
    const skipped = choice.skipped?.length ? `; skipped (not in a class folder): ${choice.skipped.join(", ")}` : "";
    this.q("images-chosen").textContent = choice.error ? "" : `${choice.items.length} images chosen${skipped}`;
    this.imageChoice = choice.error ? null : { kind: "images", items: choice.items, name: choice.name };
    this.q("join").disabled = Boolean(choice.error);
  }

  // -- lifecycle -----------------------------------------------------------------

  started() {
    this.consent.hidden = true;
    this.status.hidden = false;
    this.q("pause").disabled = true;
    this.setPage("loading");
    // On a phone the status replaced the consent far above: bring it into view, and
    // give keyboard and screen-reader users the same place to continue from.
    const badge = this.q("state");
    badge.tabIndex = -1;
    badge.focus({ preventScroll: true });
    this.status.scrollIntoView({ block: "start" });
  }

  async initChart() {
    try {
      this.chart = await lineChart(this.q("chart"), {
        xLabel: "Round",
        series: [{ label: "Global accuracy", stroke: "#2563eb", scale: "acc", axis: "Accuracy", format: format.percent }],
        // Fit the axis to the rounds drawn (accuracies bunch near the top after a few rounds).
        scales: { acc: { range: (u, min, max) => fitRange(min, max) } },
      });
      if (this.session) this.drawHistory(this.session.history);
    } catch (error) {
      // The chart is a nicety: without it the page still works.
      console.warn("chart unavailable", error);
      this.chartBox.hidden = true;
    }
  }

  setPage(state) {
    this.page = state;
    this.renderState();
  }

  renderState() {
    let state = this.page;
    if (state === "running") {
      state = ["reconnecting", "waiting"].includes(this.conn) ? this.conn : this.session?.state ?? "connecting";
    }
    const badge = this.q("state");
    badge.textContent = state;
    badge.dataset.state = state;
    this.q("state-help").textContent = HELP[state] ?? "";
    document.body.dataset.state = state;
  }

  // -- worker events ------------------------------------------------------------------

  handle(event) {
    const method = this[`on_${event.type}`];
    if (method) method.call(this, event);
  }

  // The bar only moves forward: downloads fill most of it, the loading steps after them the rest.
  advance(fraction) {
    const bar = this.q("load-progress");
    bar.value = Math.max(bar.value, fraction);
  }

  on_stage({ label, fraction }) {
    this.q("load-stage").textContent = label;
    this.advance(fraction);
  }

  // Bytes per stage (runtime, NumPy, core, kernel) as announced by the server and received so far.
  on_downloads({ stages }) {
    const done = stages.reduce((sum, s) => sum + s.done, 0);
    const total = stages.reduce((sum, s) => sum + s.total, 0);
    const bar = this.q("load-progress");
    Object.assign(bar.dataset, { done: String(done), total: String(total) });
    if (total > 0) this.advance(0.85 * (done / total));
    const list = this.q("load-stages");
    list.replaceChildren(
      ...stages.map((s) => {
        const item = document.createElement("li");
        item.dataset.stage = s.stage;
        item.dataset.done = String(s.done);
        item.dataset.total = String(s.total);
        item.textContent = `${STAGE_NAMES[s.stage] ?? s.stage}: ${s.done >= s.total ? format.bytes(s.total) + " ✓" : `${format.bytes(s.done)} of ${format.bytes(s.total)}`}`;
        return item;
      }),
    );
    list.hidden = stages.length === 0;
    if (this.firstVisit && total > 0) {
      // First visit: how much, and how long at the pace seen so far.
      const elapsed = (performance.now() - this.loadStarted) / 1000;
      const eta = done > 0 && elapsed > 0.5 ? ` about ${format.seconds((elapsed * total) / done)} here;` : "";
      this.loadNote = `First visit: about ${format.bytes(total)} to download,${eta} later visits are faster (the files stay cached).`;
    }
    this.q("load-note").textContent = `${format.bytes(done)} of ${format.bytes(total)}. ${this.loadNote}`;
  }

  // What to expect, from this browser's own last start-up when there was one.
  expectLoad(lastSeconds) {
    this.firstVisit = !Number.isFinite(lastSeconds);
    this.loadStarted = performance.now();
    this.loadNote = this.firstVisit
      ? "First visit: about 9 MB to download, about 10 s on a good connection; later visits are faster (the files stay cached)."
      : `Last time this took ${format.seconds(lastSeconds)}.`;
    this.q("load-note").textContent = this.loadNote;
  }

  on_conn({ state, retry_in_s }) {
    this.conn = state;
    const text = {
      connecting: "connecting…",
      open: "connected",
      reconnecting: `lost; retrying in ${format.seconds(retry_in_s)}`,
      waiting: `server busy; back in ${format.seconds(retry_in_s)}`,
    }[state];
    this.q("connection").textContent = text ?? state;
    if (this.page === "loading") {
      this.loading.hidden = true;
      this.q("pause").disabled = false;
      this.setPage("running");
    } else {
      this.renderState();
    }
  }

  on_snapshot({ snapshot }) {
    // The chart starts with the first snapshot (the runtime is ready): there is nothing to
    // plot before, and uPlot's two downloads and its parse would slow the worker's start.
    if (!this.session && document.body.dataset.mode !== "embed") this.initChart();
    this.session = snapshot;
    const q = this.q;
    q("round").textContent = describeRound(snapshot);
    const finished = runFinished(snapshot);
    q("finished").hidden = !finished;
    document.body.dataset.run = finished ? "finished" : snapshot.run ? "running" : "none";
    const latest = snapshot.history?.at(-1);
    q("run-accuracy").textContent = latest ? `${format.percent(latest[1])} after round ${latest[0]}` : "—";
    q("rounds-done").textContent = String(snapshot.rounds_accepted.length);
    q("bytes-up").textContent = format.bytes(snapshot.bytes_up);
    q("bytes-down").textContent = format.bytes(snapshot.bytes_down);
    const metrics = snapshot.last_metrics;
    q("local-loss").textContent = metrics ? format.fixed(metrics.loss) : "—";
    q("local-accuracy").textContent = metrics ? format.percent(metrics.accuracy) : "—";
    q("data-source").textContent = describeData(snapshot.data);
    // Shown for the round this tab takes part in: what secure aggregation means for it.
    const secagg = snapshot.secagg ? " Secure aggregation is on: the server sees only the sum of this round's updates, never this tab's alone." : "";
    q("privacy").textContent = format.privacy(snapshot.privacy, Boolean(snapshot.run)) + secagg;
    const pause = q("pause");
    pause.textContent = snapshot.paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(snapshot.paused));
    this.training.hidden = snapshot.state !== "training";
    // Reset the bar when a job starts, not on every snapshot: a status read while the job
    // trains brings one too, and the bar must keep the job's progress.
    const job = snapshot.state === "training" ? snapshot.round : null;
    if (job !== null && job !== this.trainingRound) {
      this.q("train-progress").value = 0;
      this.q("train-label").textContent = `Training for round ${snapshot.round}`;
    }
    this.trainingRound = job;
    this.drawHistory(snapshot.history);
    this.renderState();
  }

  on_progress({ epoch, epochs, batch, batches, loss, done: total }) {
    this.training.hidden = false;
    this.q("train-progress").dataset.done = String(total);
    delete this.q("train-progress").dataset.heldAfter;
    const done = (epoch * batches + batch + 1) / (epochs * batches);
    this.q("train-progress").value = done;
    this.q("train-label").textContent = `Epoch ${epoch + 1} of ${epochs} · batch ${batch + 1} of ${batches} · loss ${format.fixed(loss)}`;
  }

  on_compute({ backend }) {
    this.q("compute").textContent = backend === "wasm-simd128" ? "WebAssembly SIMD kernel" : "NumPy";
  }

  on_trained({ busy_ms, wall_ms }) {
    const share = wall_ms > 0 ? busy_ms / wall_ms : 1;
    const cell = this.q("cpu-use");
    cell.dataset.share = String(share);
    cell.textContent = `${Math.round(share * 100)}% of one core during the last round`;
  }

  on_held({ reasons, done, batches_after_request }) {
    this.training.hidden = false;
    const bar = this.q("train-progress");
    bar.dataset.done = String(done);
    bar.dataset.heldAfter = String(batches_after_request);
    const why = { paused: "paused", hidden: "this tab is hidden", battery: "not charging" };
    this.q("train-label").textContent = `Training stands still (${reasons.map((r) => why[r] ?? r).join(", ")}) after ${done} batches`;
  }

  on_error({ message }) {
    const box = this.q("error");
    box.textContent = message;
    box.hidden = false;
    this.loading.hidden = true;
    this.training.hidden = true;
    this.q("pause").disabled = true;
    if (!this.session) {
      // Failed before joining: there are no figures to show, only the message.
      this.root.querySelector(".facts").hidden = true;
      this.chartBox.hidden = true;
    }
    this.setPage("error");
  }

  on_left() {
    this.left();
  }

  left() {
    if (this.page === "left") return;
    this.q("pause").disabled = true;
    this.q("leave").disabled = true;
    this.training.hidden = true;
    this.loading.hidden = true;
    this.q("connection").textContent = "closed";
    this.setPage("left");
  }

  drawHistory(history) {
    if (!this.chart || !history) return;
    this.chart.update([history.map((h) => h[0]), history.map((h) => h[1])]);
  }
}

// The loading stages of the worker's "downloads" events, in words.
const STAGE_NAMES = { runtime: "Python runtime", numpy: "NumPy", core: "webfl learning core", kernel: "matrix kernel" };

// A run ends when its rounds are done, or earlier: the status frame then says why.
const runFinished = (snapshot) => Boolean(snapshot.run && (snapshot.run_ended || snapshot.run[0] >= snapshot.run[1]));
const ENDED = { stopped: "stopped by the operator", max_epsilon: "its privacy budget is spent", failed: "stopped by a server error" };

function describeRound(snapshot) {
  const run = snapshot.run;
  const why = ENDED[snapshot.run_ended];
  if (run && runFinished(snapshot)) return `the run has finished (${why ? `${why}, ` : ""}${run[0]} of ${run[1]} rounds)`;
  if (run && snapshot.round) return `round ${run[0] + 1} of ${run[1]}`;
  if (run) return `${run[0]} of ${run[1]} rounds done; waiting for the next`;
  if (snapshot.round) return `round ${snapshot.round}`;
  return snapshot.model_version >= 0 ? "no run yet: waiting for the operator to start one" : "—";
}

// An accuracy axis that fits the drawn values with a little room, within [0, 1].
function fitRange(min, max) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  const pad = Math.max(0.02, (max - min) * 0.15);
  return [Math.max(0, min - pad), Math.min(1, max + pad)];
}

function describeData(data) {
  if (!data) return "—";
  if (data.kind === "csv") return `your file ${data.name} (${data.examples} examples, kept in this tab)`;
  if (data.kind === "images") {
    const skipped = data.skipped.length ? `; skipped, not readable as images: ${data.skipped.join(", ")}` : "";
    return `your images ${data.name} (${data.examples} examples, kept in this tab${skipped})`;
  }
  const shard = data.shard ?? {};
  return `demo data: shard ${shard.index + 1} of ${shard.count} (${data.examples} examples)`;
}
