// Bytes per loading stage, for the page's progress bar. /api/config announces each file
// the worker downloads and its size as sent (gzip where served), grouped by stage; a
// file counts in full once it has arrived (from the network or a cache: either way that
// part of the wait is over), and the wheels this worker fetches itself count as they
// stream in. Stages another server provides (--pyodide-url) have no sizes: left out.

export const STAGES = ["runtime", "numpy", "core", "kernel"];

export class Downloads {
  // announced: config.downloads ({stage: {urlPath: bytes} | null}); post(event) to the page.
  constructor(announced, post) {
    this.post = post;
    this.files = new Map(); // url path -> {stage, size, done}
    for (const stage of STAGES) {
      for (const [path, size] of Object.entries(announced?.[stage] ?? {})) this.files.set(path, { stage, size, done: 0 });
    }
    this.observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const file = this.files.get(new URL(entry.name).pathname);
        if (file) file.done = file.size;
      }
      this.report();
    });
    this.observer.observe({ type: "resource", buffered: true });
  }

  // `bytes` of the file at `url` have arrived so far (a download this worker reads itself).
  progress(url, bytes) {
    const file = this.files.get(new URL(url).pathname);
    if (file && bytes > file.done) {
      file.done = Math.min(bytes, file.size);
      this.report();
    }
  }

  report() {
    const stages = STAGES.map((stage) => ({ stage, done: 0, total: 0 }));
    for (const file of this.files.values()) {
      const s = stages[STAGES.indexOf(file.stage)];
      s.done += file.done;
      s.total += file.size;
    }
    this.post({ stages: stages.filter((s) => s.total > 0) });
  }

  stop() {
    this.observer.disconnect();
  }
}
