// The WebAssembly SIMD128 matrix-multiply kernel (gemm.wasm, built at set-up from
// backend/webfl/build/kernels/gemm.c), run against Pyodide's own memory so that NumPy
// arrays reach it as addresses, without copies. Emscripten hands its memory to the
// runtime's module as imports.env.memory; we catch it by wrapping WebAssembly's
// instantiate functions while Pyodide starts. That is an Emscripten internal (Pyodide's
// version is pinned), so the catch is checked against Pyodide's heap before use, and
// any miss means NumPy alone: slower, never wrong (the core also self-checks the kernel).

// A module with one SIMD instruction: valid only where SIMD128 is supported.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

export function hasSimd() {
  try {
    return WebAssembly.validate(SIMD_PROBE);
  } catch {
    return false;
  }
}

// Start downloading and compiling the kernel now (in parallel with Pyodide), and catch
// the memory Pyodide is instantiated with. Returns {module, memory, stop}: `module` a
// promise of the compiled module or null, `memory()` the caught memory, `stop()` to
// unwrap WebAssembly once Pyodide has started.
export function prepareKernel(url) {
  if (!hasSimd()) {
    console.info("webfl: this browser has no WebAssembly SIMD; training with NumPy");
    return { module: Promise.resolve(null), memory: () => null, stop() {} };
  }
  let memory = null;
  const catchMemory = (imports) => {
    const candidate = imports?.env?.memory;
    if (memory === null && candidate instanceof WebAssembly.Memory) memory = candidate;
  };
  const { instantiate, instantiateStreaming } = WebAssembly;
  WebAssembly.instantiate = function (source, imports, ...rest) {
    catchMemory(imports);
    return instantiate.call(this, source, imports, ...rest);
  };
  if (instantiateStreaming) {
    WebAssembly.instantiateStreaming = function (source, imports, ...rest) {
      catchMemory(imports);
      return instantiateStreaming.call(this, source, imports, ...rest);
    };
  }
  const module = fetch(url)
    .then((response) => {
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return WebAssembly.compileStreaming ? WebAssembly.compileStreaming(response) : response.arrayBuffer().then((b) => WebAssembly.compile(b));
    })
    .catch((error) => {
      console.info(`webfl: the fast kernel is unavailable (${error.message}); training with NumPy`);
      return null;
    });
  return {
    module,
    memory: () => memory,
    stop() {
      WebAssembly.instantiate = instantiate;
      if (instantiateStreaming) WebAssembly.instantiateStreaming = instantiateStreaming;
    },
  };
}

// Instantiate the kernel on Pyodide's heap and hand it to the core; returns the
// backend's name ("wasm-simd128" or "numpy").
export async function installKernel(pyodide, prepared) {
  prepared.stop();
  const module = await prepared.module;
  const memory = prepared.memory();
  if (!module) return "numpy";
  if (!memory || memory.buffer !== pyodide._module.HEAPU8.buffer) {
    console.info("webfl: Pyodide's memory was not found; training with NumPy");
    return "numpy";
  }
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const kernels = pyodide.pyimport("webfl.core.kernels");
  try {
    return kernels.install_wasm(instance.exports.gemm);
  } finally {
    kernels.destroy();
  }
}
