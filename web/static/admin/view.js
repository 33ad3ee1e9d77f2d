// Renders /api/status. Every value shown comes from the server.

import * as format from "../format.js";
import { lineChart } from "../chart.js";
import * as funnel from "./funnel.js";
import * as secagg from "./secagg.js";

// How each end status of a run (the store's) reads: "stopped" is the operator's doing,
// "completed" means every round committed.
const RUN_STATUS = {
  running: "running",
  completed: "completed",
  stopped: "stopped by the operator",
  failed: "failed (see the server log)",
  interrupted: "interrupted (server restarted)",
};

// Why a round was abandoned (server/rounds/funnel.py ABANDON_REASONS).
const ABANDONED = {
  too_few_updates: "fewer updates than the minimum by the close",
  refused_aggregate: "aggregate refused (not finite or exploding)",
};

// A dp round's fraction of updates clipped; null when secure aggregation hid each update's
// clipped bit from the server (unknown, which a 0 % would misstate).
function clippedFraction(p) {
  return p.clipped_fraction == null ? "not known under secure aggregation" : format.percent(p.clipped_fraction);
}

// The run's guarantee for the operator: the run's epsilon, the task's over all its runs,
// and the settings it rests on (``run.privacy`` of /api/status).
function describePrivacy(run) {
  const p = run?.privacy;
  if (!run) return "—";
  if (!p) return "off: updates are not differentially private";
  const eps = (e) => (e == null ? "unbounded" : format.fixed(e, 3));
  const cap = p.max_epsilon == null ? "" : ` of at most ${p.max_epsilon}`;
  const stopped = p.stopped ? `; stopped: ${p.stopped}` : "";
  return `ε = ${eps(p.epsilon)}${cap} at δ = ${p.delta} after ${p.rounds} round(s) (task total ε = ${eps(p.task_epsilon)}); z = ${p.noise_multiplier}, clip ${format.fixed(p.clip, 4)}${p.adaptive ? " (adaptive)" : ""}, sampling ${p.sampling}, ${p.accountant}${stopped}`;
}

function when(t) {
  return t == null ? "—" : new Date(t * 1000).toLocaleString();
}

export class Dashboard {
  constructor(root) {
    this.q = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.chart = null;
    this.privacyChart = null;
    this.rows = 0;
    this.history = null;
    this.runs = new Map();
    this.committed = new Map(); // run id -> rounds committed
    this.formReady = false;
  }

  // Another task was chosen: forget what was drawn for the last one.
  reset() {
    this.rows = 0;
    this.history = null;
    this.runs = new Map();
    this.committed = new Map();
    for (const id of ["history", "runs", "abandoned", "class-accuracy"]) this.q(id).tBodies[0].replaceChildren();
    delete this.q("class-accuracy").tBodies[0].dataset.key;
    this.drawChart([]);
  }

  async initChart() {
    try {
      this.chart = await lineChart(this.q("chart"), {
        xLabel: "Round",
        series: [
          { label: "Accuracy", stroke: "#2563eb", scale: "acc", axis: "Test accuracy", format: format.percent },
          { label: "Loss", stroke: "#dc2626", scale: "loss", axis: "Test loss", format: (v) => format.fixed(v) },
        ],
        scales: { acc: { range: [0, 1] } },
      });
      // A dp run's epsilon (cumulative, per run) and clip norm; rounds of other runs are gaps.
      this.privacyChart = await lineChart(this.q("privacy-chart"), {
        xLabel: "Round",
        series: [
          { label: "ε (run)", stroke: "#7c3aed", scale: "eps", axis: "Epsilon", format: (v) => format.fixed(v) },
          { label: "Clip norm", stroke: "#059669", scale: "clip", axis: "Clip norm", format: (v) => format.fixed(v, 4) },
        ],
      });
      if (this.history) this.drawChart(this.history);
    } catch (error) {
      console.warn("chart unavailable", error);
    }
  }

  render(status) {
    const q = this.q;
    const v = status.volunteers;
    q("connected").textContent = String(status.connected);
    q("volunteer-states").textContent = `${v.ready} / ${v.training} / ${v.paused} / ${v.waiting ?? 0}`;
    q("round-state").textContent = status.state;
    const open = status.open_round;
    q("open-round").textContent = open ? `round ${open.round}: ${open.received} of ${open.selected} updates` : "—";
    q("deadline").textContent = open ? format.seconds(open.deadline_in_s) : "—";
    q("secagg-row").hidden = !open?.secagg;
    q("secagg-stage").textContent = secagg.describe(open?.secagg) || "—";
    q("rejections").textContent = funnel.reasons(status.rejections);
    q("waiting-hint").hidden = !status.hint;
    q("waiting-hint").textContent = status.hint ? `Waiting for volunteers: ${status.hint}.` : "";
    // A sync round's funnel, or the buffer FedBuff is filling.
    const live = open?.funnel ?? status.fedbuff?.funnel ?? null;
    q("open-funnel-box").hidden = !live;
    funnel.render(q("open-funnel"), live);
    const run = status.run;
    // After a restart the engine knows no run yet; the store still has the last one.
    const stored = run ? this.runs.get(run.id) : [...this.runs.values()].at(-1);
    const status_ = run?.running ? "running" : stored?.status ?? "";
    q("run-status").textContent = run
      ? `run ${run.id}: ${run.rounds_done} of ${run.config?.rounds ?? "?"} rounds, ${RUN_STATUS[status_] ?? "ended"}`
      : stored
        ? `run ${stored.id}: ${this.committed.get(stored.id) ?? 0} of ${stored.config.rounds} rounds, ${RUN_STATUS[status_] ?? status_}`
        : "no run yet";
    q("run-status").dataset.status = status_;
    q("model-version").textContent = String(status.model_version);
    q("privacy").textContent = describePrivacy(run);
    q("stop").disabled = !run?.running;
    q("launch").disabled = Boolean(run?.running) || !this.formReady;
    q("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    this.renderHistory(status.history);
    this.renderClasses(status.history, status.task.definition.classes);
  }

  // The per-class accuracy of the last round that has one (federated: from the volunteers'
  // holdouts, for tasks of up to 20 classes), beside that round's overall accuracy.
  renderClasses(history, classes) {
    const last = history.findLast((h) => h.class_accuracy);
    const panel = this.q("class-accuracy-panel");
    panel.hidden = !last;
    if (!last) return;
    const source = last.eval_source === "federated"
      ? `federated over ${last.eval_examples} holdout example(s) of ${last.eval_volunteers} volunteer(s)`
      : "on the server's held-out data";
    this.q("class-accuracy-about").textContent = `Round ${last.round}: ${format.percent(last.accuracy)} overall, ${source}.`;
    const body = this.q("class-accuracy").tBodies[0];
    const key = `${last.round}:${last.eval_examples}`;
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.replaceChildren(
      ...last.class_accuracy.map((acc, i) => {
        const row = document.createElement("tr");
        row.dataset.testid = "class-row";
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = classes[i] ?? String(i);
        const value = document.createElement("td");
        value.textContent = acc == null ? "no examples" : format.percent(acc);
        const bar = document.createElement("td");
        const fill = document.createElement("span");
        fill.className = "class-bar";
        fill.style.width = `${Math.round((acc ?? 0) * 100)}%`;
        bar.append(fill);
        row.append(name, value, bar);
        return row;
      }),
    );
  }

  renderHistory(history) {
    this.history = history;
    this.q("history-empty").hidden = history.length > 0;
    this.drawChart(history);
    if (history.length === this.rows) return;
    const body = this.q("history").tBodies[0];
    // Newest first; rounds never change once committed, so only new ones are added.
    for (const h of history.slice(this.rows)) {
      const row = document.createElement("tr");
      row.dataset.testid = "history-row";
      row.dataset.round = String(h.round);
      row.dataset.run = String(h.run_id ?? "");
      const p = h.privacy;
      const cells = [h.round, h.run_id ?? "—", format.percent(h.accuracy), format.fixed(h.loss), h.participants, format.bytes(h.bytes_up), format.bytes(h.bytes_down), format.seconds(h.duration_s), funnel.summary(h.funnel),
        p ? (h.epsilon == null ? "none (no noise)" : format.fixed(h.epsilon, 3)) : "—", p ? format.fixed(p.clip, 4) : "—", p ? clippedFraction(p) : "—"];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(cell);
      }
      body.prepend(row);
    }
    this.rows = history.length;
  }

  // The store's runs with their end status, and the rounds abandoned (newest first).
  renderRuns({ runs, rounds }) {
    this.renderAbandoned(rounds.filter((r) => r.abandoned));
    rounds = rounds.filter((r) => !r.abandoned);
    this.runs = new Map(runs.map((r) => [r.id, r]));
    this.q("runs-empty").hidden = runs.length > 0;
    const committed = (this.committed = new Map());
    for (const r of rounds) committed.set(r.run_id, (committed.get(r.run_id) ?? 0) + 1);
    const body = this.q("runs").tBodies[0];
    body.replaceChildren(
      ...runs.toReversed().map((run) => {
        const row = document.createElement("tr");
        row.dataset.testid = "run-row";
        row.dataset.run = String(run.id);
        row.dataset.status = run.status;
        const c = run.config;
        const summary = `${c.mode}, ${c.aggregator}, codec ${c.codec}, ${c.local_epochs} epoch(s), ${c.clients_per_round} per round`;
        const cells = [run.id, RUN_STATUS[run.status] ?? run.status, `${committed.get(run.id) ?? 0} of ${c.rounds}`, summary, when(run.started_at), when(run.ended_at)];
        for (const value of cells) {
          const cell = document.createElement("td");
          cell.textContent = String(value);
          row.append(cell);
        }
        row.children[1].classList.add("run-status", `run-${run.status}`);
        return row;
      }),
    );
  }

  renderAbandoned(abandoned) {
    this.q("abandoned-empty").hidden = abandoned.length > 0;
    this.q("abandoned").tBodies[0].replaceChildren(
      ...abandoned.toReversed().map((a) => {
        const row = document.createElement("tr");
        row.dataset.testid = "abandoned-row";
        row.dataset.why = a.why;
        for (const value of [a.round, a.run_id ?? "—", ABANDONED[a.why] ?? a.why, funnel.summary(a.funnel), when(a.abandoned_at)]) {
          const cell = document.createElement("td");
          cell.textContent = String(value);
          row.append(cell);
        }
        return row;
      }),
    );
  }

  drawChart(history) {
    const markers = history.filter((h, i) => i === 0 || h.run_id !== history[i - 1].run_id).map((h) => ({ x: h.round, label: `run ${h.run_id ?? "?"}` }));
    this.chart?.update([history.map((h) => h.round), history.map((h) => h.accuracy), history.map((h) => h.loss)], markers);
    const rounds = history.map((h) => h.round);
    this.q("privacy-panel").hidden = !history.some((h) => h.privacy);
    this.privacyChart?.update([rounds, history.map((h) => h.epsilon ?? null), history.map((h) => h.privacy?.clip ?? null)], markers);
  }

  error(message) {
    const box = this.q("admin-error");
    box.textContent = message ?? "";
    box.hidden = !message;
  }
}
