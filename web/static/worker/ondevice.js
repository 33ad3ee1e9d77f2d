// The model on the volunteer's device: "try the model", the kept model, personalisation.
// Python does every number (webfl.core.browser.BrowserSession over webfl.core.predict);
// this decodes images (a browser thing) and moves bytes to and from IndexedDB:
// - "models": the last global model {meta, bytes} per task/model, so predictions work
//   when the server is unreachable; and the page's configuration per task
//   ("config/NAME"), so the worker can start from the service worker's cached runtime.
// - "personal": the volunteer's fine-tune of a global model {meta, bytes}. It is never
//   uploaded: updates are always trained from the global model.

import { Records } from "./records.js";

// Image decoding is fetched when images first come, not on every worker's start-up.
const decodeImages = async (...args) => (await import("../volunteer/images.js")).decodeImages(...args);

const models = new Records("models", "last global model");
const personal = new Records("personal", "personal model");

// The last line of a Python traceback, without its "ValueError: " (a sentence for the page).
export function reason(error) {
  return String(error?.message ?? error).trim().split("\n").pop().replace(/^ValueError: /, "");
}

export class DeviceModels {
  // bytesOut: copies Python's bytes out of their proxy (worker.js).
  constructor(bytesOut) {
    this.bytesOut = bytesOut;
    this.keptMeta = null; // the record in IndexedDB, as session.model_record() said
  }

  keepConfig(config) {
    return models.put(`config/${config.task.name}`, { config });
  }

  async keptConfig(task) {
    return (await models.get(`config/${task}`))?.config ?? null;
  }

  // Mirror the session's latest global model into IndexedDB (written only when it changes).
  async keep(session, key) {
    const meta = session.model_record();
    if (!meta || meta === this.keptMeta) return;
    this.keptMeta = meta;
    await models.put(key, { meta, bytes: this.bytesOut(session.model_bytes()) });
  }

  // The kept global and personal models for `key`, read before the session exists.
  async read(key) {
    const [kept, mine] = await Promise.all([models.get(key), personal.get(key)]);
    return { kept, mine };
  }

  // Hand what read() found to the session.
  restore(session, { kept, mine }) {
    if (kept && session.load_model(kept.meta, kept.bytes)) {
      this.keptMeta = kept.meta;
      console.info(`webfl: the last model (version ${JSON.parse(kept.meta).version}) is on this device for predictions`);
    }
    if (mine && !session.load_personal(mine.meta, mine.bytes)) console.info("webfl: the kept personal model does not fit this task; ignored");
  }

  async personalise(session, key) {
    const summary = JSON.parse(session.personalise());
    await personal.put(key, { meta: session.personal_record(), bytes: this.bytesOut(session.personal_bytes()) });
    return summary;
  }

  // input: {kind: "csv", file} or {kind: "images", items: [{file}]}; resolves the table's
  // JSON (webfl.core.predict.Predictions.to_dict) with each row's name for images.
  async predict(session, input, task, which) {
    if (input.kind === "csv") return { ...JSON.parse(session.predict_csv(await input.file.text(), which)), names: null, skipped: [] };
    const decoded = await decodeImages(input.items, task);
    if (!decoded.names.length) throw new Error(`no image could be read (${decoded.skipped.slice(0, 5).join(", ")})`);
    const result = JSON.parse(session.predict_images(decoded.pixels, decoded.names.length, which));
    return { ...result, names: decoded.names, skipped: decoded.skipped };
  }
}

// Decode labelled images for training: {pixels, labels, skipped}; an error if none is readable.
export async function trainingImages(items, task) {
  const decoded = await decodeImages(items, task);
  if (!decoded.names.length) throw new Error(`none of the ${items.length} files is an image this browser can read`);
  return decoded;
}
