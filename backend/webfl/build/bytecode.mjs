// Compiles Python sources with Pyodide's own interpreter, under Node (run by
// bytecode.py at set-up). stdin: {pyodide: dir of npm pyodide, sources: {name: base64}};
// stdout: {cache_tag, pyc: {name: base64 of a checked-hash .pyc}}.
import { readFileSync } from "fs";

const { pyodide: dir, sources } = JSON.parse(readFileSync(0, "utf8"));
const { loadPyodide } = await import(`${dir}/pyodide.mjs`);
// A fixed hash seed: the order of set constants in the bytecode must not vary by run.
const py = await loadPyodide({ indexURL: `${dir}/`, env: { PYTHONHASHSEED: "0" }, stdout: () => {}, stderr: (line) => console.error(line) });
py.globals.set("sources", py.toPy(sources));
process.stdout.write(
  py.runPython(`
import base64, importlib.util, json, sys
from importlib._bootstrap_external import _code_to_hash_pyc

def pyc(name, encoded):
    source = base64.b64decode(encoded)
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    return base64.b64encode(_code_to_hash_pyc(code, importlib.util.source_hash(source), checked=True)).decode()

json.dumps({"cache_tag": sys.implementation.cache_tag, "pyc": {name: pyc(name, text) for name, text in sources.items()}})
`),
);
