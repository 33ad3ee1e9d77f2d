// The volunteer's runtime cache: Pyodide, NumPy and the learning core come from here, so a
// returning volunteer starts without downloading ~9 MB again, even when the HTTP cache was
// cleared or is bypassed. Served from the root (/sw.js) so its scope covers /pyodide/,
// /wheels/ and /vendor/. The page registers it as /sw.js?v=<deployment>: a new deployment
// is a new script, which installs and, on activation, deletes the older deployments' caches.
// The worker still checks every wheel's sha256 against /api/config, whatever served it.

const PREFIX = "webfl-runtime-";
const CACHE = PREFIX + new URL(self.location.href).searchParams.get("v");
// These URLs change whenever their bytes do (a version in the path or the file name).
const IMMUTABLE = /^\/(pyodide|vendor)\/|^\/wheels\/(?!webfl-)/;
// The core wheel and the matrix kernel keep their URLs across rebuilds of one version: the
// network decides, and the cache only stands in when the network fails. So for the volunteer
// pages and their scripts: a volunteer who lost the server can reopen the page and try the
// last model (the worker keeps it, and the configuration, in IndexedDB).
const CORE = /^\/wheels\/webfl-|^\/static\/kernels\//;
const PAGES = /^\/(t\/[a-z0-9-]{1,40}|embed)?$|^\/static\//;

self.addEventListener("install", () => self.skipWaiting());

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
      // Control the open page now, so the worker it starts on "Join" is served from here.
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (IMMUTABLE.test(url.pathname)) event.respondWith(cacheFirst(event));
  else if (CORE.test(url.pathname) || PAGES.test(url.pathname)) event.respondWith(networkFirst(event));
});

async function cacheFirst(event) {
  const cache = await caches.open(CACHE);
  return (await cache.match(event.request)) ?? fetchAndKeep(event, cache);
}

async function networkFirst(event) {
  const cache = await caches.open(CACHE);
  try {
    return await fetchAndKeep(event, cache);
  } catch (error) {
    const kept = await cache.match(event.request);
    if (kept) return kept;
    throw error;
  }
}

// The response goes out at once (Pyodide compiles the wasm while it streams) and a copy
// is stored behind it.
async function fetchAndKeep(event, cache) {
  const response = await fetch(event.request);
  if (response.ok) event.waitUntil(cache.put(event.request, response.clone()));
  return response;
}
