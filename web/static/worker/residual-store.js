// The error-feedback residual of top-k codecs, kept in IndexedDB so a reload keeps it.
// What top-k leaves out of one update is added to the next; losing it on a reload would
// silently drop part of this volunteer's work. One record per task/model key:
// {spec, bytes} (the codec spec and the residual's float32 bytes). Failures only log:
// a browser without IndexedDB (or in a private mode that refuses it) still trains.

const DB = "webfl";
const STORE = "residuals";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, action) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = action(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export async function saveResidual(key, spec, bytes) {
  try {
    if (!spec) await run("readwrite", (store) => store.delete(key));
    else await run("readwrite", (store) => store.put({ spec, bytes, saved: Date.now() }, key));
  } catch (error) {
    console.warn("could not keep the error-feedback residual", error);
  }
}

export async function loadResidual(key) {
  try {
    return (await run("readonly", (store) => store.get(key))) ?? null;
  } catch (error) {
    console.warn("could not read the error-feedback residual", error);
    return null;
  }
}
