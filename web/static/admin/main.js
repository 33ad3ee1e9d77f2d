// The admin page: launch and stop runs, and a live view polled every second.

import { SignedOut, call } from "./api.js";
import { Dashboard } from "./view.js";

const POLL_MS = 1000;
const dashboard = new Dashboard(document);
const form = document.querySelector('[data-testid="launch-form"]');
const result = document.querySelector('[data-testid="launch-result"]');

function signedOut() {
  // The session expired or the token changed: the server shows the sign-in form.
  window.location.assign("/admin");
}

async function refresh() {
  try {
    dashboard.render(await call("GET", "/api/status"));
    dashboard.error(null);
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    dashboard.error(`Cannot get the status: ${error.message}`);
  }
}

function settings() {
  const body = {};
  for (const input of form.querySelectorAll("input")) {
    body[input.name] = input.type === "text" ? input.value.trim() : Number(input.value);
  }
  for (const select of form.querySelectorAll("select")) body[select.name] = select.value;
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  result.textContent = "Launching…";
  try {
    const started = await call("POST", "/api/rounds", settings());
    result.textContent = `Run ${started.run} started: ${started.config.rounds} round(s).`;
  } catch (error) {
    if (error instanceof SignedOut) return signedOut();
    result.textContent = `Not launched: ${error.message}`;
  }
  refresh();
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
poll();
