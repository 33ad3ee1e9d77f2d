// A round's cohort funnel (server/rounds/funnel.py) as a row of bars with their numbers,
// and the same in one line of text for a history row. Every number is text: the bars
// (<meter>, read out as "value of max") only repeat it.

import * as format from "../format.js";

export const STEPS = [
  ["connected", "connected"],
  ["ready", "ready"],
  ["selected", "selected"],
  ["trained", "trained"],
  ["reported", "reported"],
  ["accepted", "accepted"],
];

// The page's words for the rejection reasons (server/rounds/validation.py REASONS).
const REASONS = {
  round: "round not open",
  not_selected: "not selected",
  duplicate: "duplicate",
  token: "bad token",
  model_version: "wrong model",
  stale: "too stale",
  codec: "wrong codec",
  num_examples: "bad example count",
  nan: "NaN or Inf",
  malformed: "malformed",
  norm: "norm out of bounds",
  protocol: "protocol error",
  rate: "over a rate limit",
  connections: "too many connections",
  idle: "idle",
};

export function reasons(counts) {
  const parts = Object.entries(counts ?? {}).map(([key, n]) => `${REASONS[key] ?? key} ${n}`);
  return parts.length ? parts.join(", ") : "none";
}

// Drop-outs, stragglers, the cap and the example counts, as a list of short phrases.
function details(f) {
  const out = [`rejected: ${reasons(f.rejected)}`];
  if (f.dropouts) out.push(`${f.dropouts} dropped out`);
  if (f.stragglers) out.push(`${f.stragglers} still training at the close`);
  if (f.capped) out.push(`${f.capped} capped at ${f.max_examples} examples`);
  const e = f.examples;
  if (e) out.push(`examples ${e.min}–${e.max} (median ${e.median}), largest update ${format.percent(e.top_share)} of the weight`);
  return out;
}

export function summary(f) {
  if (!f) return "—";
  const steps = STEPS.map(([key, label]) => `${f[key]} ${label}`).join(" → ");
  return `${steps}; ${details(f).join("; ")}`;
}

// Fills `root` (a <div> with an id) with the funnel's bars and a line of details.
export function render(root, f) {
  if (!f) {
    root.replaceChildren();
    return;
  }
  const list = document.createElement("ol");
  list.className = "funnel";
  const top = Math.max(1, f.connected, ...STEPS.map(([key]) => f[key]));
  for (const [key, label] of STEPS) {
    const item = document.createElement("li");
    item.dataset.step = key;
    const id = `${root.id}-${key}`;
    const name = document.createElement("span");
    name.id = id;
    name.textContent = label;
    const bar = document.createElement("meter");
    bar.min = 0;
    bar.max = top;
    bar.value = f[key];
    bar.setAttribute("aria-labelledby", id);
    const n = document.createElement("span");
    n.className = "n";
    n.dataset.testid = `funnel-${key}`;
    n.textContent = String(f[key]);
    item.append(name, bar, n);
    list.append(item);
  }
  const more = document.createElement("p");
  more.className = "small";
  more.dataset.testid = "funnel-details";
  more.textContent = details(f).join("; ");
  root.replaceChildren(list, more);
}
