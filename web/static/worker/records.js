// Records that must outlive a reload, kept in IndexedDB (database "webfl"), one object
// store per kind, one record per task/model key:
// - "residuals": top-k's error-feedback residual {spec, bytes}. What top-k leaves out of
//   one update is added to the next; losing it would silently drop part of this
//   volunteer's work.
// - "pending": the update awaiting its verdict {volunteer, resume, round, frame}, so a
//   reload re-sends it (webfl.core.browser.BrowserSession decides when).
// - "models" and "personal": the last global model and the volunteer's personal
//   fine-tune, for predictions on the device (worker/ondevice.js).
// Failures only log: a browser without IndexedDB (or in a private mode that refuses it)
// still trains, it only forgets on reload.

const DB = "webfl";
const VERSION = 3; // 1 had "residuals" only, 2 added "pending"
const STORES = ["residuals", "pending", "models", "personal"];

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      for (const name of STORES) if (!db.objectStoreNames.contains(name)) db.createObjectStore(name);
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(storeName, mode, action) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(storeName, mode);
      const request = action(tx.objectStore(storeName));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export class Records {
  // what: how log lines name these records.
  constructor(storeName, what) {
    this.storeName = storeName;
    this.what = what;
  }

  // Resolves once the record is durable (the transaction completed), or failed to be.
  async put(key, value) {
    try {
      await run(this.storeName, "readwrite", (store) => store.put({ ...value, saved: Date.now() }, key));
    } catch (error) {
      console.warn(`could not keep the ${this.what}`, error);
    }
  }

  async delete(key) {
    try {
      await run(this.storeName, "readwrite", (store) => store.delete(key));
    } catch (error) {
      console.warn(`could not forget the ${this.what}`, error);
    }
  }

  async get(key) {
    try {
      return (await run(this.storeName, "readonly", (store) => store.get(key))) ?? null;
    } catch (error) {
      console.warn(`could not read the ${this.what}`, error);
      return null;
    }
  }
}
