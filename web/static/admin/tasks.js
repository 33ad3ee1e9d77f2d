// The task panel: what the chosen task is, and the form that creates a task or edits one.
// The server validates every definition (core/tasks.py); this form only builds the JSON
// and shows the server's reason next to it when one is refused.

// "16, 32" -> [16, 32]; "" -> [].
function integers(text) {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean);
  return parts.map(Number);
}

// One name a line; blank lines and surrounding spaces dropped (a name is never padded).
function lines(text) {
  return text.split("\n").map((s) => s.trim()).filter(Boolean);
}

// The facts shown for a task definition: [label, value] pairs.
export function facts(d) {
  const model = d.model.type === "cnn"
    ? `CNN: conv ${d.model.conv.join(", ")}, kernel ${d.model.kernel}${d.model.dense.length ? `, dense ${d.model.dense.join(", ")}` : ""}`
    : d.model.hidden.length ? `MLP: hidden ${d.model.hidden.join(", ")}` : "softmax regression";
  const data = d.kind === "tabular"
    ? `${d.features.length} feature column(s), label “${d.label}”${d.scaling ? ", scaling fixed" : ", scaling by federated statistics"}`
    : `${d.width}×${d.height} images, ${d.channels === 1 ? "grayscale" : "RGB"}`;
  const t = d.training;
  return [
    ["Name", d.name],
    ["Kind", d.kind],
    ["Data", data],
    ["Classes", `${d.classes.length}: ${d.classes.join(", ")}`],
    ["Model", model],
    ["Training defaults", `${t.epochs} epoch(s), batch ${t.batch_size}, lr ${t.lr}`],
    ["Holdout for evaluation", `${Math.round(d.holdout * 100)} %`],
  ];
}

export class TaskForm {
  constructor(form) {
    this.form = form;
    this.editing = null; // the definition being edited, or null: a new task
    this.el = (name) => form.elements.namedItem(name);
    this.el("kind").addEventListener("change", () => this.toggle());
    this.el("model").addEventListener("change", () => this.toggle());
  }

  // Shows the fields of the chosen kind and model only (the others are not sent).
  toggle() {
    const kind = this.el("kind").value;
    const model = this.el("model").value;
    for (const label of this.form.querySelectorAll("[data-kind]")) label.hidden = label.dataset.kind !== kind;
    for (const label of this.form.querySelectorAll("[data-model]")) label.hidden = label.dataset.model !== model;
    this.el("features").required = kind === "tabular";
    this.el("label").required = kind === "tabular";
  }

  // An empty form for a new task (`training`: the engine's defaults), or `definition` to edit.
  open(definition, training) {
    this.form.reset();
    this.editing = definition;
    const d = definition ?? { training, holdout: 0.2, kind: "tabular", model: { type: "mlp", hidden: [] } };
    const set = (name, value) => { if (value !== undefined) this.el(name).value = String(value); };
    set("name", d.name ?? "");
    set("title", d.title ?? "");
    set("description", d.description ?? "");
    set("kind", d.kind);
    set("classes", (d.classes ?? []).join("\n"));
    set("features", (d.features ?? []).join("\n"));
    set("label", d.label ?? "");
    if (d.kind === "image") ["width", "height", "channels"].forEach((k) => set(k, d[k]));
    set("model", d.model.type);
    if (d.model.type === "mlp") set("hidden", d.model.hidden.join(", "));
    else {
      set("conv", d.model.conv.join(", "));
      set("kernel", d.model.kernel);
      set("dense", d.model.dense.join(", "));
    }
    ["epochs", "batch_size", "lr"].forEach((k) => set(k, d.training[k]));
    set("holdout", d.holdout);
    this.el("name").readOnly = Boolean(definition); // a task keeps its name
    this.form.querySelector('[data-testid="task-form-title"]').textContent = definition ? `Edit task ${definition.name}` : "New task";
    this.form.querySelector('[data-testid="task-save"]').textContent = definition ? "Save" : "Create";
    this.toggle();
    this.form.hidden = false;
    this.el(definition ? "title" : "name").focus();
  }

  close() {
    this.form.hidden = true;
    this.editing = null;
  }

  // The definition the form describes (what POST or PUT sends).
  definition() {
    const v = (name) => this.el(name).value.trim();
    const kind = v("kind");
    const d = { name: v("name"), title: v("title"), description: this.el("description").value, kind, classes: lines(this.el("classes").value) };
    if (kind === "tabular") {
      d.features = lines(this.el("features").value);
      d.label = v("label");
      // Scaling measured or given for the same columns stays; for other columns it would not fit.
      const old = this.editing;
      if (old?.scaling && JSON.stringify(old.features) === JSON.stringify(d.features)) d.scaling = old.scaling;
    } else {
      d.width = Number(v("width"));
      d.height = Number(v("height"));
      d.channels = Number(v("channels"));
    }
    d.model = v("model") === "cnn"
      ? { type: "cnn", conv: integers(v("conv")), kernel: Number(v("kernel")), dense: integers(v("dense")) }
      : { type: "mlp", hidden: integers(v("hidden")) };
    d.training = { epochs: Number(v("epochs")), batch_size: Number(v("batch_size")), lr: Number(v("lr")) };
    d.holdout = Number(v("holdout"));
    return d;
  }

  // The browser's own checks of the visible fields (the server checks everything again).
  validate() {
    return this.form.reportValidity();
  }
}
