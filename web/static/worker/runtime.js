// Loads Pyodide, NumPy and the webfl core wheel, and turns every way that can fail
// into one sentence a volunteer can act on (or report). Pyodide's own errors are
// often silent: loadPackage() does not throw on a 404 or a hash mismatch, it only
// calls errorCallback, and the failure would surface later as ModuleNotFoundError.

import { installKernel, prepareKernel } from "./kernel.js";
import { timed } from "./timing.js";

export class AssetError extends Error {}

// Built at set-up (backend/webfl/build/wasm.py); without it training uses NumPy alone.
const KERNEL_URL = "/static/kernels/gemm.wasm";

const RUNTIME_FILES = ["pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"];

function absolute(url) {
  return new URL(url, self.location.href).href;
}

function shortUrl(url) {
  const u = new URL(url);
  return u.origin === self.location.origin ? u.pathname : u.href;
}

// Which of these URLs fails, and how? A HEAD probe names the culprit of an opaque failure.
export async function firstFailure(urls) {
  for (const url of urls) {
    try {
      const response = await fetch(url, { method: "HEAD", cache: "no-store" });
      if (!response.ok) return `HTTP ${response.status} at ${shortUrl(url)}`;
    } catch {
      return `no response from ${shortUrl(url)}`;
    }
  }
  return null;
}

export function checkWebAssembly() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    throw new AssetError(
      "This browser cannot run WebAssembly, which the in-browser Python needs. " +
        "Try a current Chrome, Firefox, Safari or Edge, or enable WebAssembly.",
    );
  }
}

async function loadPyodideRuntime(indexURL, version) {
  let module;
  try {
    module = await import(indexURL + "pyodide.mjs");
  } catch (error) {
    const why = (await firstFailure([indexURL + "pyodide.mjs"])) || error.message;
    throw new AssetError(`The Python runtime (Pyodide ${version}) could not be loaded (${why}).`);
  }
  const files = RUNTIME_FILES.map((name) => indexURL + name);
  try {
    // Some failures (a missing .wasm) make Pyodide abort without rejecting: watch for them.
    return await watched(module.loadPyodide({ indexURL, stdout: () => {}, stderr: (line) => console.warn(line) }), files);
  } catch (error) {
    const why = error instanceof AssetError ? error.message : (await firstFailure(files)) || error.message;
    throw new AssetError(`The Python runtime (Pyodide ${version}) could not be loaded (${why}).`);
  }
}

const WATCH_EVERY_MS = 4000;

// `promise`, unless one of `urls` turns out to be unloadable while we wait for it.
function watched(promise, urls) {
  let timer;
  const stalled = new Promise((_, reject) => {
    const check = async () => {
      const why = await firstFailure(urls);
      if (why) reject(new AssetError(why));
      else timer = setTimeout(check, WATCH_EVERY_MS);
    };
    timer = setTimeout(check, WATCH_EVERY_MS);
  });
  return Promise.race([promise, stalled]).finally(() => clearTimeout(timer));
}

// Load one package (by URL or by name) and prove it imports; explain if it does not.
async function loadChecked(pyodide, target, module, what) {
  const errors = [];
  try {
    await pyodide.loadPackage(target, { messageCallback: () => {}, errorCallback: (m) => errors.push(m) });
  } catch (error) {
    errors.push(error.message);
  }
  try {
    pyodide.pyimport(module).destroy();
    return;
  } catch (error) {
    const why = target.includes("/") ? await firstFailure([target]) : null;
    const detail = why || errors.join("; ") || error.message.trim().split("\n").pop();
    throw new AssetError(`${what} could not be loaded (${detail}).`);
  }
}

// Start fetching a wheel now, in parallel with Pyodide, and hash it with the browser's
// SHA-256 as soon as it has arrived (so the hash is off the critical path); verify()
// compares later. onBytes(n): bytes arrived so far, for the progress bar.
function prefetch(url, onBytes) {
  return fetch(url)
    .then(async (response) => {
      const bytes = response.ok ? await readAll(response, onBytes) : null;
      return { response, bytes, sha256: bytes ? await browserDigest(bytes) : null };
    })
    .catch(() => ({ response: null, bytes: null, sha256: null })); // no response, or it broke off: verify() says so
}

async function readAll(response, onBytes) {
  const chunks = [];
  let length = 0;
  for (const reader = response.body.getReader(); ; ) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    length += value.length;
    onBytes(length);
  }
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

// sha256 as hex with the browser's own SHA-256, where it offers one (https and
// localhost pages); else null, and verify() hashes with Python's hashlib (slower: the
// bytes are copied into Pyodide first).
async function browserDigest(bytes) {
  if (!self.crypto?.subtle) return null;
  try {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  } catch {
    return null;
  }
}

function pythonDigest(pyodide, bytes) {
  const digest = pyodide.runPython("import hashlib\nlambda data: hashlib.sha256(data.to_bytes()).hexdigest()");
  try {
    return digest(bytes);
  } finally {
    digest.destroy();
  }
}

// Check a prefetched wheel's sha256 before anything from it runs, and return its bytes.
// Pyodide verifies only packages it loads by name from its lock file, not wheels loaded
// by URL. The bytes stay in the HTTP cache, so a loadPackage() that follows does not
// download them again.
async function verify(pyodide, url, fetched, sha256, what) {
  const { response, bytes, sha256: hashed } = await fetched;
  if (!response) throw new AssetError(`${what} could not be loaded (no response from ${shortUrl(url)}).`);
  if (!response.ok) throw new AssetError(`${what} could not be loaded (HTTP ${response.status} at ${shortUrl(url)}).`);
  const actual = hashed ?? pythonDigest(pyodide, bytes);
  if (actual !== sha256) {
    throw new AssetError(
      `${what} at ${shortUrl(url)} is not the file the server announced (sha256 ${actual.slice(0, 12)}… instead of ${sha256.slice(0, 12)}…). ` +
        "Reload the page; if it persists, the server's files need rebuilding (make setup).",
    );
  }
  return bytes;
}

// A pure-Python wheel, from the very bytes that were verified, into site-packages: no
// second request (the core wheel's URL revalidates) and nothing swapped in between.
function installPure(pyodide, bytes, module, what) {
  try {
    // Pyodide's own choice (its package loader's); sysconfig would be imported for it (~0.05 s).
    const sitePackages = pyodide.runPython("import site; site.getsitepackages()[0]");
    pyodide.unpackArchive(bytes, "wheel", { extractDir: sitePackages });
    // Only site-packages changed: its finder forgets its listing. importlib.invalidate_caches()
    // would also import importlib.metadata for its finder (~0.1 s in Pyodide).
    pyodide.runPython(`import sys; finder = sys.path_importer_cache.get(${JSON.stringify(sitePackages)})\nif finder: finder.invalidate_caches()`);
    pyodide.pyimport(module).destroy();
  } catch (error) {
    throw new AssetError(`${what} could not be loaded (${error.message.trim().split("\n").pop()}).`);
  }
}

// stage(label, fraction): progress for the page's loading bar; downloads: a Downloads
// (./downloads.js) that the wheels read here report their bytes to.
export async function loadRuntime(config, stage, downloads) {
  checkWebAssembly();
  const indexURL = absolute(config.pyodide.index_url);
  // Everything downloads at once: the wheels and the kernel (compiled as it streams in,
  // catching Pyodide's memory on the way) while Pyodide loads itself.
  const kernel = prepareKernel(absolute(KERNEL_URL));
  const numpy = config.numpy.url ? absolute(config.numpy.url) : config.numpy.name;
  const numpyFetch = config.numpy.url ? prefetch(numpy, (n) => downloads.progress(numpy, n)) : null;
  const core = absolute(config.core.url);
  const coreFetch = prefetch(core, (n) => downloads.progress(core, n));
  stage(`Downloading the Python runtime (Pyodide ${config.pyodide.version}), NumPy and the learning core`, 0.02);
  let pyodide;
  try {
    pyodide = await timed("pyodide", () => loadPyodideRuntime(indexURL, config.pyodide.version));
  } finally {
    kernel.stop();
  }

  stage("Loading NumPy", 0.86);
  if (numpyFetch) await timed("numpy-verify", () => verify(pyodide, numpy, numpyFetch, config.numpy.sha256, "The NumPy wheel"));
  await timed("numpy-load", () => loadChecked(pyodide, numpy, "numpy", "The NumPy wheel"));

  stage("Loading the webfl learning core", 0.9);
  const coreBytes = await timed("core-verify", () => verify(pyodide, core, coreFetch, config.core.sha256, "The webfl learning core wheel"));
  await timed("core-import", () => installPure(pyodide, coreBytes, "webfl.core.browser", "The webfl learning core wheel"));

  stage("Checking versions", 0.94);
  const browser = pyodide.pyimport("webfl.core.browser");
  const version = browser.version();
  if (version !== config.version) {
    browser.destroy();
    throw new AssetError(
      `This page's learning core is version ${version} but the server runs ${config.version}. ` +
        "Reload the page; if it persists, the server's wheel needs rebuilding (make setup).",
    );
  }
  const compute = await timed("kernel", () => installKernel(pyodide, kernel)).catch((error) => {
    console.info(`webfl: the fast kernel could not be installed (${error.message}); training with NumPy`);
    return "numpy";
  });
  // Reachable from devtools and bench/browser.py (Playwright's worker.evaluate); only
  // this origin's code can reach a dedicated worker, so this exposes nothing new.
  self.pyodide = pyodide;
  return { pyodide, browser, compute };
}
