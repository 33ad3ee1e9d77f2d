// A volunteer's images: which class each picked file is (by its folder, or one label for
// a set of files), and decoding them to the task's width x height x channels as uint8,
// which is all Python gets (webfl.core.tasks.Task.images). Decoding and resizing are a
// browser's job (createImageBitmap, OffscreenCanvas); they work in the page and in the
// worker, which is where they run, off the page's thread. No byte of an image leaves the tab.

// The files of a folder picked with <input webkitdirectory>: ROOT/CLASS/…/FILE. Returns
// {items: [{file, label}], name, skipped: [names]} or {error} naming a folder that is not a class.
export function labelFolder(files, classes) {
  const index = new Map(classes.map((name, i) => [name, i]));
  const items = [];
  const skipped = [];
  let name = "";
  for (const file of files) {
    const parts = (file.webkitRelativePath || file.name).split("/");
    name ||= parts.length > 1 ? parts[0] : "";
    if (parts.length < 3) {
      skipped.push(file.name); // beside the class folders, not in one
      continue;
    }
    const label = index.get(parts[1]);
    if (label === undefined) {
      const shown = classes.slice(0, 5).join(", ") + (classes.length > 5 ? ", …" : "");
      return { error: `the folder “${parts[1].slice(0, 60)}” is not one of the classes (${shown})` };
    }
    items.push({ file, label });
  }
  if (!items.length) return { error: "it has no class folders with images in them (one sub-folder per class, named as the class)" };
  return { items, name, skipped };
}

// Files that are all of one class (the label picker).
export function labelFiles(files, label) {
  return { items: [...files].map((file) => ({ file, label })), name: `${files.length} files`, skipped: [] };
}

// Decode and resize: {pixels: Uint8Array(n*h*w*c), labels: Uint8Array(n), names, skipped}.
// A file the browser cannot decode is skipped and named, never fatal.
export async function decodeImages(items, { width, height, channels }) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  const size = width * height * channels;
  const pixels = new Uint8Array(items.length * size);
  const labels = [];
  const names = [];
  const skipped = [];
  for (const { file, label } of items) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch {
      skipped.push(file.name ?? "drawing");
      continue;
    }
    // Transparent parts count as black, as on the drawing pad and in MNIST.
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    ctx.drawImage(bitmap, 0, 0, width, height);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, width, height).data;
    toChannels(rgba, channels, pixels.subarray(names.length * size, (names.length + 1) * size));
    labels.push(label ?? 0);
    names.push(file.name ?? "drawing");
  }
  return { pixels: pixels.slice(0, names.length * size), labels: Uint8Array.from(labels), names, skipped };
}

// RGBA to RGB, or to gray by integer luma (exact for gray pixels: r = g = b gives r).
function toChannels(rgba, channels, out) {
  for (let p = 0, o = 0; p < rgba.length; p += 4) {
    if (channels === 3) {
      out[o++] = rgba[p];
      out[o++] = rgba[p + 1];
      out[o++] = rgba[p + 2];
    } else {
      out[o++] = (77 * rgba[p] + 150 * rgba[p + 1] + 29 * rgba[p + 2] + 128) >> 8;
    }
  }
}
