// The admin page: launch and stop runs, and a live view polled every second.

import { SignedOut, call } from "./api.js";
import { LaunchForm } from "./form.js";
import { Dashboard } from "./view.js";

const POLL_MS = 1000;
const dashboard = new Dashboard(document);
const form = document.querySelector('[data-testid="launch-form"]');
const result = document.querySelector('[data-testid="launch-result"]');
const launchForm = new LaunchForm(document, form);
// What /api/history was last fetched for: runs change status only when a run starts or
// ends, rounds only when one commits, and a round is abandoned only as the engine
// changes state.
let historyKey = null;

function signedOut() {
  // The session expired or the token changed: the server shows the sign-in form.
  window.location.assign("/admin");
}

async function refresh() {
  try {
    const status = await call("GET", "/api/status");
    const key = `${status.run?.id}:${status.run?.running}:${status.history.length}:${status.state}`;
    if (key !== historyKey) {
      dashboard.renderRuns(await call("GET", "/api/history"));
      historyKey = key;
    }
    dashboard.render(status);
    dashboard.error(null);
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot get the status: ${error.message}`);
  }
}

async function buildForm() {
  try {
    const { settings } = await call("GET", "/api/run-settings");
    launchForm.build(settings, (preset) => {
      result.textContent = `Preset “${preset.name}” filled in: ${preset.about}`;
    });
    dashboard.formReady = true;
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot get the run settings: ${error.message}`);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!launchForm.validate()) return;
  result.textContent = "Launching…";
  try {
    const started = await call("POST", "/api/rounds", launchForm.values());
    result.textContent = `Run ${started.run} started: ${started.config.rounds} round(s).`;
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    result.textContent = `Not launched: ${error.message}`;
  }
  refresh();
});

document.querySelector('[data-testid="reset-defaults"]').addEventListener("click", () => {
  launchForm.apply();
  result.textContent = "Every setting is back to the API's default.";
});

document.querySelector('[data-testid="stop"]').addEventListener("click", async () => {
  try {
    const { stopped } = await call("POST", "/api/rounds/stop");
    result.textContent = stopped ? "Run stopped." : "No run was running.";
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    result.textContent = `Not stopped: ${error.message}`;
  }
  refresh();
});

// setTimeout after each answer rather than setInterval: a slow server never gets
// a pile of overlapping polls.
async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

dashboard.initChart();
buildForm().then(poll);
