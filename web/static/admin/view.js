// Renders /api/status. Every value shown comes from the server.

import * as format from "../format.js";
import { lineChart } from "../chart.js";

export class Dashboard {
  constructor(root) {
    this.q = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.chart = null;
    this.rows = 0;
    this.history = null;
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
    const run = status.run;
    q("run-status").textContent = run
      ? `run ${run.id}: ${run.rounds_done} of ${run.config?.rounds ?? "?"} rounds, ${run.running ? "running" : "finished"}`
      : "no run yet";
    q("model-version").textContent = String(status.model_version);
    q("stop").disabled = !run?.running;
    q("launch").disabled = Boolean(run?.running);
    q("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    this.renderHistory(status.history);
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
      const cells = [h.round, format.percent(h.accuracy), format.fixed(h.loss), h.participants, format.bytes(h.bytes_up), format.bytes(h.bytes_down), format.seconds(h.duration_s)];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(cell);
      }
      body.prepend(row);
    }
    this.rows = history.length;
  }

  drawChart(history) {
    this.chart?.update([history.map((h) => h.round), history.map((h) => h.accuracy), history.map((h) => h.loss)]);
  }

  error(message) {
    const box = this.q("admin-error");
    box.textContent = message ?? "";
    box.hidden = !message;
  }
}
