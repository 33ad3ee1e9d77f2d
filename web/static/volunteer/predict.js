// "Try the model" and personalisation on the page: hands the volunteer's input (a CSV,
// image files, the drawing pad) to the worker and renders its answers. The model runs in
// the worker, in Python (webfl.core.predict); nothing here computes a prediction.

import * as format from "../format.js";
import { Pad } from "./pad.js";

// Per-class probability columns are shown up to this many classes; beyond, the top class only.
const CLASS_COLUMNS = 10;

export class TryModel {
  constructor(root, client) {
    const q = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.q = q;
    this.client = client;
    this.box = root.querySelector('[data-part="try"]');
    this.asked = 0; // the id of the latest request: older answers are dropped
    this.lastInput = null;
    q("predict-file").addEventListener("change", () => this.predictFiles());
    q("predict-which").addEventListener("change", () => this.lastInput && this.ask(this.lastInput));
    q("personalise").addEventListener("click", () => this.personalise());
    const canvas = q("pad");
    if (canvas) {
      this.pad = new Pad(canvas);
      q("pad-clear").addEventListener("click", () => this.pad.clear());
      q("pad-predict").addEventListener("click", () => this.predictPad());
    }
  }

  handle(event) {
    if (event.type === "snapshot") this.onSnapshot(event.snapshot);
    else if (event.type === "predicted") this.onPredicted(event);
    else if (event.type === "personalised") this.onPersonalised(event);
  }

  onSnapshot({ predictor, personal }) {
    if (!predictor) return;
    this.box.hidden = false;
    this.q("predict-model").textContent = predictor.kept
      ? `The last global model kept on this device (version ${predictor.version}); it works without the server.`
      : `The current global model (version ${predictor.version}), running in this tab.`;
    this.q("predict-which").querySelector('[value="personal"]').disabled = !personal;
    if (personal) this.showPersonal(personal);
  }

  predictFiles() {
    const files = [...this.q("predict-file").files];
    if (!files.length) return;
    const csv = this.q("predict-file").accept.includes("csv");
    this.ask(csv ? { kind: "csv", file: files[0] } : { kind: "images", items: files.map((file) => ({ file })) });
  }

  async predictPad() {
    if (!this.pad.drawn) return this.problem("Draw something on the pad first.");
    const blob = await this.pad.blob();
    this.ask({ kind: "images", items: [{ file: new File([blob], "drawing.png", { type: "image/png" }) }] });
  }

  ask(input) {
    this.lastInput = input;
    this.asked += 1;
    this.problem(null);
    this.q("predict-summary").textContent = "Predicting…";
    this.client.predict(this.asked, input, this.q("predict-which").value);
  }

  onPredicted({ id, result, error }) {
    if (id !== this.asked) return;
    if (error) {
      this.q("predict-summary").textContent = "";
      this.q("predictions").hidden = true;
      return this.problem(`This input cannot be used: ${error}.`);
    }
    const shown = result.predicted.length;
    const skipped = result.skipped.length ? ` Skipped (not readable as images): ${result.skipped.join(", ")}.` : "";
    this.q("predict-summary").textContent =
      `${result.rows} ${result.rows === 1 ? "row" : "rows"} predicted${shown < result.rows ? `; the first ${shown} are shown` : ""}.${skipped}`;
    this.render(result);
  }

  render({ classes, predicted, probabilities, names }) {
    const table = this.q("predictions");
    const perClass = classes.length <= CLASS_COLUMNS;
    const head = [names ? "Image" : "Row", "Predicted", "Probability", ...(perClass ? classes : [])];
    const headRow = el("tr", head.map((text) => el("th", [text], { scope: "col" })));
    const rows = predicted.map((k, i) => {
      const p = probabilities[i];
      const cells = [names ? names[i] : String(i + 1), classes[k], format.percent(p[k]), ...(perClass ? p.map(format.percent) : [])];
      return el("tr", cells.map((text, j) => el(j === 0 ? "th" : "td", [text], j === 0 ? { scope: "row" } : {})));
    });
    table.replaceChildren(el("thead", [headRow]), el("tbody", rows));
    table.hidden = false;
  }

  personalise() {
    const button = this.q("personalise");
    button.disabled = true;
    button.textContent = "Personalising…";
    this.q("personalise-problem").hidden = true;
    this.client.personalise();
  }

  onPersonalised({ summary, error }) {
    const button = this.q("personalise");
    button.disabled = false;
    button.textContent = "Personalise again";
    if (error) {
      const box = this.q("personalise-problem");
      box.textContent = `Cannot personalise: ${error}.`;
      box.hidden = false;
      return;
    }
    this.showPersonal(summary);
  }

  showPersonal({ holdout, global_accuracy, personal_accuracy, base_version }) {
    const on = `on your ${holdout} kept-aside examples`;
    this.q("global-accuracy").textContent = `${format.percent(global_accuracy)} ${on} (version ${base_version})`;
    this.q("personal-accuracy").textContent = `${format.percent(personal_accuracy)} ${on}`;
  }

  problem(message) {
    const box = this.q("predict-problem");
    box.hidden = !message;
    box.textContent = message ?? "";
  }
}

// An element with text children (never HTML: names and class names are the operator's and the volunteer's).
function el(tag, children, attrs = {}) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}
