// The open round's secure-aggregation stage in words, from /api/status's
// `open_round.secagg` (server/secagg/session.py `describe`); "" without secure aggregation.

import * as format from "../format.js";

// What each stage waits for (server/secagg/session.py `Stage`).
const STAGES = {
  advertise: "volunteers advertise their public keys",
  share: "volunteers share their secrets with their neighbours",
  upload: "volunteers train and upload masked updates",
  unmask: "survivors reveal the shares that unmask the sum",
  done: "the sum is being unmasked",
};

export function describe(sa) {
  if (!sa) return "";
  const what = STAGES[sa.stage] ?? sa.stage;
  return `stage ${sa.stage} (${what}): ${sa.survivors} of ${sa.cohort} volunteers still in, stage ends in ${format.seconds(sa.stage_deadline_in_s)}`;
}
