// The launch form, built from GET /api/run-settings: one input per RunConfig field with
// the API's own default and bounds, so the two cannot disagree. Labels and hints are
// the page's; a setting the page does not know yet still appears (under Advanced).

import { PRESETS } from "./presets.js";

// name -> [label, basic?, suggestions for a text field]
const FIELDS = {
  rounds: ["Rounds", true],
  clients_per_round: ["Volunteers per round", true],
  min_updates: ["Minimum updates", true],
  local_epochs: ["Local epochs", true],
  batch_size: ["Batch size", true],
  lr: ["Learning rate", true],
  deadline_s: ["Deadline (s)", true],
  select_timeout_s: ["Wait for volunteers (s)", true],
  codec: ["Update codec", true, ["none", "fp16", "q8", "rot+q4", "topk:0.01+q8"]],
  downlink: ["Model downlink", true, ["none", "fp16", "delta:q8"]],
  aggregator: ["Aggregation rule", true, ["fedavg", "clipped", "median", "trimmed_mean:0.2", "multikrum"]],
  mode: ["Mode", true],
  max_examples: ["Most examples one update weighs", false],
  over_selection: ["Over-selection (× volunteers per round)", false],
  norm_bound: ["Norm bound (none, C, or x=K × median)", false, ["none", "x=3", "10"]],
  server_opt: ["Server optimizer", false, ["fedavg", "fedavgm:lr=1,momentum=0.9", "fedadam:lr=0.01"]],
  prox_mu: ["FedProx μ", false],
  buffer_size: ["FedBuff: updates per commit", false],
  max_staleness: ["FedBuff: max staleness (versions)", false],
  staleness_exponent: ["FedBuff: staleness exponent", false],
  max_wait_s: ["Longest “come back later” (s, 0: off)", false],
  dp: ["Differential privacy (JSON, empty: off), e.g. {\"noise_multiplier\": 1, \"clip\": 1}", false],
};
// Values the API accepts for settings that are a choice rather than a spec.
const CHOICES = { mode: [["sync", "Sync rounds"], ["fedbuff", "FedBuff (asynchronous)"]] };

export class LaunchForm {
  constructor(root, form) {
    this.form = form;
    this.q = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.settings = [];
    this.defaults = {}; // the chosen task's training defaults, over the API's
  }

  // The chosen task's training defaults (its definition's `training`) become the form's.
  useDefaults(training) {
    this.defaults = { local_epochs: training.epochs, batch_size: training.batch_size, lr: training.lr };
    for (const [name, value] of Object.entries(this.defaults)) {
      const input = this.input(name);
      if (input) input.dataset.default = String(value);
    }
    this.apply();
  }

  // Builds the inputs and the preset buttons; `onPreset(preset)` is told which was applied.
  build(settings, onPreset) {
    this.settings = settings;
    for (const setting of settings) {
      const [label, basic, suggestions] = FIELDS[setting.name] ?? [setting.name, false];
      this.q(basic ? "basic-settings" : "advanced-settings").append(...field(setting, label, suggestions));
    }
    for (const preset of PRESETS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = preset.name;
      button.title = preset.about;
      button.dataset.testid = `preset-${preset.id}`;
      button.addEventListener("click", () => {
        this.apply(preset.settings);
        onPreset(preset);
      });
      this.q("presets").append(button);
    }
  }

  input(name) {
    return this.form.elements.namedItem(name);
  }

  // Every setting back to its default (the task's, else the API's), then `values` on top.
  apply(values = {}) {
    for (const setting of this.settings) {
      this.input(setting.name).value = shown(setting, values[setting.name] ?? this.defaults[setting.name] ?? setting.default);
    }
    // A preset may need an Advanced setting: show it rather than hide what changed.
    const advanced = this.settings.some((s) => s.name in values && !(FIELDS[s.name]?.[1] ?? false));
    if (advanced) this.q("advanced").open = true;
  }

  // The request body: every setting, typed as the API declares it.
  values() {
    const body = {};
    for (const setting of this.settings) {
      const raw = this.input(setting.name).value.trim();
      if (setting.type === "json") body[setting.name] = raw ? JSON.parse(raw) : null;
      else body[setting.name] = setting.type === "string" ? raw : Number(raw);
    }
    return body;
  }

  // Invalid inputs may sit in the closed Advanced section: open it so the browser can point at them.
  validate() {
    for (const setting of this.settings.filter((s) => s.type === "json")) {
      const input = this.input(setting.name);
      input.setCustomValidity(parsesAsJson(input.value) ? "" : "not valid JSON");
    }
    if (!this.form.checkValidity()) this.q("advanced").open = true;
    return this.form.reportValidity();
  }
}

// A setting's value as its input shows it: JSON settings as JSON text (null: empty).
function shown(setting, value) {
  if (setting.type === "json") return value == null ? "" : JSON.stringify(value);
  return String(value);
}

function parsesAsJson(text) {
  if (!text.trim()) return true;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

// The nodes of one setting: its label (holding the input) and its suggestions, if any.
function field(setting, text, suggestions) {
  const nodes = [];
  const label = document.createElement("label");
  nodes.push(label);
  label.append(text, " ");
  let input;
  if (CHOICES[setting.name]) {
    input = document.createElement("select");
    for (const [value, name] of CHOICES[setting.name]) input.append(new Option(name, value));
  } else if (setting.type === "json") {
    input = document.createElement("textarea");
    input.rows = 2;
    input.spellcheck = false;
  } else {
    input = document.createElement("input");
    if (setting.type === "string") {
      input.type = "text";
      input.spellcheck = false;
      input.setAttribute("autocapitalize", "off");
      if (["codec", "downlink"].includes(setting.name)) input.setAttribute("aria-describedby", "codec-hint");
      if (suggestions) {
        const list = document.createElement("datalist");
        list.id = `suggest-${setting.name}`;
        for (const value of suggestions) list.append(new Option(value, value));
        nodes.push(list);
        input.setAttribute("list", list.id);
      }
    } else {
      input.type = "number";
      input.min = String(setting.min);
      input.max = String(setting.max);
      input.step = setting.type === "integer" ? "1" : "any";
      input.inputMode = setting.type === "integer" ? "numeric" : "decimal";
    }
  }
  input.name = setting.name;
  input.required = setting.type !== "json"; // empty JSON: the setting is off
  input.value = shown(setting, setting.default);
  input.dataset.testid = `cfg-${setting.name}`;
  input.dataset.default = shown(setting, setting.default);
  label.append(input);
  return nodes;
}
