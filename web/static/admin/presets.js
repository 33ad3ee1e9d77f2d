// Named presets for the launch form. Each sets a few settings; every other one keeps the
// API's default (the form is reset to /api/run-settings' defaults first).

export const PRESETS = [
  {
    id: "quick-demo",
    name: "Quick demo",
    about: "3 short rounds with whoever is there: a few browser tabs are enough.",
    settings: { rounds: 3, clients_per_round: 3, min_updates: 1, local_epochs: 1, deadline_s: 30, select_timeout_s: 2 },
  },
  {
    id: "robust",
    name: "Robust",
    about: "Trimmed mean, updates over 3x the recent median norm refused, 50% over-selection for stragglers.",
    settings: { rounds: 10, clients_per_round: 10, min_updates: 5, aggregator: "trimmed_mean:0.2", norm_bound: "x=3", over_selection: 1.5 },
  },
  {
    id: "low-bandwidth",
    name: "Low bandwidth",
    about: "Top-1% sparsified 8-bit updates up, 8-bit model deltas down.",
    settings: { rounds: 10, codec: "topk:0.01+q8", downlink: "delta:q8" },
  },
  {
    id: "async",
    name: "Async",
    about: "FedBuff: no round barrier, a commit every 5 updates, updates over 5 versions old refused.",
    settings: { rounds: 20, mode: "fedbuff", buffer_size: 5, max_staleness: 5, staleness_exponent: 0.5 },
  },
];
