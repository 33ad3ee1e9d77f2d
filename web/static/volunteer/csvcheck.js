// A first look at a chosen CSV file, the moment it is picked: the runtime (and with it
// the full check, webfl.core.data.parse_csv) is seconds away, but the usual mistakes —
// the wrong file, the wrong number of columns — can be named at once. Only the start
// of the file is read, only its shape is checked: parse_csv stays the authority.

const HEAD_BYTES = 64 * 1024;

// Resolves to a message for the volunteer, or null when nothing is obviously wrong.
// ``columns``: a tabular task's column names (features and label), which the header must
// name in any order; without them, rows are a label and ``numFeatures`` values.
export async function firstLook(file, numFeatures, columns = null) {
  if (file.size === 0) return "the file is empty";
  const text = await file.slice(0, HEAD_BYTES).text();
  if (text.includes("\u0000")) return "it is not a text (CSV) file";
  const lines = text.split(/\r?\n/);
  if (file.size > HEAD_BYTES) lines.pop(); // the last line may be cut short
  const rows = lines.filter((line) => line.trim());
  if (columns) {
    const header = (rows[0] ?? "").split(",").map((name) => name.trim().replace(/^"(.*)"$/, "$1"));
    const missing = columns.find((name) => !header.includes(name));
    if (missing !== undefined) return `its header row has no column “${missing.slice(0, 40)}”`;
    return rows.length > 1 || file.size > HEAD_BYTES ? null : "the file has no data rows";
  }
  if (rows.length && !isNumber(rows[0].split(",")[0])) rows.shift(); // a header row
  if (!rows.length) return file.size > HEAD_BYTES ? null : "the file has no data rows";
  const cells = rows[0].split(",");
  if (cells.length !== numFeatures + 1) {
    return `each row needs a label and ${numFeatures} features, got ${cells.length} columns`;
  }
  const bad = cells.findIndex((value) => !isNumber(value));
  return bad >= 0 ? `not a numeric CSV: “${cells[bad].trim().slice(0, 20)}” in the first row` : null;
}

function isNumber(value) {
  return value.trim() !== "" && Number.isFinite(Number(value));
}
