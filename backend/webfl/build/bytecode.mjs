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
import base64, json, os, py_compile, sys, tempfile

def pyc(name, encoded):
    # py_compile, the public way to a checked-hash .pyc (PEP 552); dfile: the name
    # tracebacks show, the module's path in the wheel rather than this temporary copy.
    with tempfile.TemporaryDirectory() as work:
        source, target = os.path.join(work, "source.py"), os.path.join(work, "source.pyc")
        with open(source, "wb") as f:
            f.write(base64.b64decode(encoded))
        py_compile.compile(source, cfile=target, dfile=name, doraise=True, optimize=0,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        with open(target, "rb") as f:
            return base64.b64encode(f.read()).decode()

json.dumps({"cache_tag": sys.implementation.cache_tag, "pyc": {name: pyc(name, text) for name, text in sources.items()}})
`),
);
