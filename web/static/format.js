// Number formatting shared by the volunteer and admin pages.

export function bytes(n) {
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

export function percent(x) {
  return Number.isFinite(x) ? `${(100 * x).toFixed(1)} %` : "—";
}

export function fixed(x, digits = 3) {
  return Number.isFinite(x) ? x.toFixed(digits) : "—";
}

export function seconds(s) {
  if (!Number.isFinite(s)) return "—";
  return s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// The run's differential-privacy guarantee in plain words, from the status frame's
// `privacy` (null: the run's updates are not private); "" when there is no run.
export function privacy(p, inRun) {
  if (!p) return inRun ? "Updates in this run are not differentially private." : "";
  const clip = Number(p.clip.toPrecision(3));
  if (!p.noise) return `Your update each round is clipped to a norm of ${clip}, but no noise is added: this run is not differentially private.`;
  const eps = p.epsilon == null ? "unbounded" : String(Number(p.epsilon.toPrecision(2)));
  return `This run so far: ε = ${eps}, δ = ${p.delta.toExponential(0)}; your update each round is clipped to a norm of ${clip} and noise is added.`;
}
