// Start-up steps as User Timing measures named "webfl:STEP": they show in the devtools
// Performance panel, and bench/browser.py reads them (page and worker) for its per-step
// breakdown of a cold start against a bare Pyodide + NumPy page.

// Run `step` (sync or async) and measure it, whether it succeeds or throws.
export async function timed(name, step) {
  const start = performance.now();
  try {
    return await step();
  } finally {
    performance.measure(`webfl:${name}`, { start });
  }
}

export function mark(name) {
  performance.mark(`webfl:${name}`);
}
