// C = alpha * op(A) @ op(B) + beta * C (+ bias) (ReLU) (masked), float32, row-major,
// WebAssembly SIMD128. Built at set-up by webfl.build.kernels into the page's static
// files; the browser's worker instantiates it against Pyodide's own memory, so NumPy
// arrays are passed as byte addresses with no copies (webfl.core.kernels.WasmKernels).
//
// flags: 1 = op(A) is A transposed, 2 = op(B) is B transposed, 4 = ReLU after the bias.
// bias: 0 or N floats added to every row. mask: 0 or an M x N array with row stride ldc;
// where mask <= 0 the result is 0 (the ReLU's derivative, folded into backprop).
// beta == 0 never reads C, so C may hold anything (even NaN) on entry.
// No libc: built with -nostdlib, so everything is written out here.

#include <wasm_simd128.h>

#define TRANS_A 1
#define TRANS_B 2
#define RELU 4

#define INLINE static inline __attribute__((always_inline))
// Block loops unrolled in full: the accumulators then live in wasm locals, never on a stack.
#define UNROLL _Pragma("clang loop unroll(full)")

typedef struct {
  float alpha, beta;
  float *c;
  int ldc;
  const float *bias, *mask;
  int relu;
} Out;

// One result vector C[i, j..j+3] from its accumulator.
INLINE void store4(const Out *o, int i, int j, v128_t acc) {
  float *p = o->c + i * o->ldc + j;
  v128_t v = wasm_f32x4_mul(acc, wasm_f32x4_splat(o->alpha));
  if (o->beta != 0.0f) v = wasm_f32x4_add(v, wasm_f32x4_mul(wasm_v128_load(p), wasm_f32x4_splat(o->beta)));
  if (o->bias) v = wasm_f32x4_add(v, wasm_v128_load(o->bias + j));
  if (o->relu) v = wasm_f32x4_max(v, wasm_f32x4_splat(0.0f));
  if (o->mask) v = wasm_v128_and(v, wasm_f32x4_gt(wasm_v128_load(o->mask + i * o->ldc + j), wasm_f32x4_splat(0.0f)));
  wasm_v128_store(p, v);
}

// Four values that are all 0 (or -0: a bit test would miss those; NaN is not 0).
INLINE int all_zero(v128_t a) { return !wasm_v128_any_true(wasm_f32x4_ne(a, wasm_f32x4_splat(0.0f))); }

// Whether a zero product leaves C exactly as it was (then its store can be skipped).
INLINE int keeps_c(const Out *o) { return o->beta == 1.0f && !o->bias && !o->relu && !o->mask; }

INLINE void store1(const Out *o, int i, int j, float acc) {
  float *p = o->c + i * o->ldc + j;
  float v = o->alpha * acc;
  if (o->beta != 0.0f) v += o->beta * *p;
  if (o->bias) v += o->bias[j];
  if (o->relu && !(v > 0.0f)) v = 0.0f;
  if (o->mask && !(o->mask[i * o->ldc + j] > 0.0f)) v = 0.0f;
  *p = v;
}

// op(B) = B: an R x 4V block of C, vectorised along its row; each A element is broadcast.
INLINE void block_nb(const Out *o, int R, int V, int i0, int j0, int K, const float *A, int lda, int ta,
                     const float *B, int ldb) {
  v128_t acc[4][4];
  UNROLL for (int r = 0; r < R; r++)
    UNROLL for (int q = 0; q < V; q++) acc[r][q] = wasm_f32x4_splat(0.0f);
  for (int k = 0; k < K; k++) {
    v128_t b[4];
    UNROLL for (int q = 0; q < V; q++) b[q] = wasm_v128_load(B + k * ldb + j0 + 4 * q);
    UNROLL for (int r = 0; r < R; r++) {
      v128_t a = wasm_f32x4_splat(ta ? A[k * lda + i0 + r] : A[(i0 + r) * lda + k]);
      UNROLL for (int q = 0; q < V; q++) acc[r][q] = wasm_f32x4_add(acc[r][q], wasm_f32x4_mul(a, b[q]));
    }
  }
  UNROLL for (int r = 0; r < R; r++)
    UNROLL for (int q = 0; q < V; q++) store4(o, i0 + r, j0 + 4 * q, acc[r][q]);
}

// op(A) = A^T, 4 rows: the 4 A elements of a step are adjacent, so one vector load; a
// step whose 4 are all zero adds nothing and is skipped (the weight gradient of MNIST's
// background pixels, of ReLUs that are off). Only non-finite B (0 * inf) could tell.
INLINE void block_tn4(const Out *o, int V, int i0, int j0, int K, const float *A, int lda, const float *B, int ldb) {
  v128_t acc[4][4];
  UNROLL for (int r = 0; r < 4; r++)
    UNROLL for (int q = 0; q < V; q++) acc[r][q] = wasm_f32x4_splat(0.0f);
  int touched = 0;
  for (int k = 0; k < K; k++) {
    const v128_t a = wasm_v128_load(A + k * lda + i0);
    if (all_zero(a)) continue;
    touched = 1;
    const v128_t as[4] = {wasm_i32x4_shuffle(a, a, 0, 0, 0, 0), wasm_i32x4_shuffle(a, a, 1, 1, 1, 1),
                          wasm_i32x4_shuffle(a, a, 2, 2, 2, 2), wasm_i32x4_shuffle(a, a, 3, 3, 3, 3)};
    v128_t b[4];
    UNROLL for (int q = 0; q < V; q++) b[q] = wasm_v128_load(B + k * ldb + j0 + 4 * q);
    UNROLL for (int r = 0; r < 4; r++)
      UNROLL for (int q = 0; q < V; q++) acc[r][q] = wasm_f32x4_add(acc[r][q], wasm_f32x4_mul(as[r], b[q]));
  }
  // Nothing added and C kept as it is: the weights of pixels no example of the batch
  // lit, in the SGD step. Skipping the store saves a pass over those weights.
  if (!touched && keeps_c(o)) return;
  UNROLL for (int r = 0; r < 4; r++)
    UNROLL for (int q = 0; q < V; q++) store4(o, i0 + r, j0 + 4 * q, acc[r][q]);
}

// All rows against one strip of 4V columns of B: the strip (K x 4V floats) stays in
// cache while every block of rows passes over it.
INLINE void strip_nb(const Out *o, int V, int j0, int M, int K, const float *A, int lda, int ta, const float *B,
                     int ldb) {
  int i = 0;
  if (ta)
    for (; i + 4 <= M; i += 4) block_tn4(o, V, i, j0, K, A, lda, B, ldb);
  else
    for (; i + 4 <= M; i += 4) block_nb(o, 4, V, i, j0, K, A, lda, ta, B, ldb);
  for (; i + 2 <= M; i += 2) block_nb(o, 2, V, i, j0, K, A, lda, ta, B, ldb);
  for (; i < M; i++) block_nb(o, 1, V, i, j0, K, A, lda, ta, B, ldb);
}

// op(A) = A with mostly zero rows (a batch of images: MNIST is 81% background): one
// row of C, 4V columns, four steps of k at a time from one vector of A; four zeros in a
// row add nothing and are skipped. Without the 4-row reuse of B's loads, this pays only
// when most of those groups are zero (mostly_zero).
INLINE void row_sparse(const Out *o, int V, int i, int j0, int K, const float *A, int lda, const float *B, int ldb) {
  v128_t acc[8];
  UNROLL for (int q = 0; q < V; q++) acc[q] = wasm_f32x4_splat(0.0f);
  const float *a_row = A + i * lda;
  int k = 0;
  for (; k + 4 <= K; k += 4) {
    const v128_t a = wasm_v128_load(a_row + k);
    if (all_zero(a)) continue;
    const v128_t as[4] = {wasm_i32x4_shuffle(a, a, 0, 0, 0, 0), wasm_i32x4_shuffle(a, a, 1, 1, 1, 1),
                          wasm_i32x4_shuffle(a, a, 2, 2, 2, 2), wasm_i32x4_shuffle(a, a, 3, 3, 3, 3)};
    UNROLL for (int s = 0; s < 4; s++)
      UNROLL for (int q = 0; q < V; q++)
        acc[q] = wasm_f32x4_add(acc[q], wasm_f32x4_mul(as[s], wasm_v128_load(B + (k + s) * ldb + j0 + 4 * q)));
  }
  for (; k < K; k++) {
    const v128_t a = wasm_f32x4_splat(a_row[k]);
    UNROLL for (int q = 0; q < V; q++) acc[q] = wasm_f32x4_add(acc[q], wasm_f32x4_mul(a, wasm_v128_load(B + k * ldb + j0 + 4 * q)));
  }
  UNROLL for (int q = 0; q < V; q++) store4(o, i, j0 + 4 * q, acc[q]);
}

// At least half of A's groups of four adjacent values (along k) are all zero.
static int mostly_zero(int M, int K, const float *A, int lda) {
  int zero = 0;
  for (int i = 0; i < M; i++)
    for (int k = 0; k + 4 <= K; k += 4) zero += all_zero(wasm_v128_load(A + i * lda + k));
  return 2 * zero >= M * (K / 4) && K >= 4;
}

static void gemm_sparse(const Out *o, int M, int N, int K, const float *A, int lda, const float *B, int ldb) {
  for (int i = 0; i < M; i++) {
    int j = 0;
    for (; j + 32 <= N; j += 32) row_sparse(o, 8, i, j, K, A, lda, B, ldb);
    for (; j + 4 <= N; j += 4) row_sparse(o, 1, i, j, K, A, lda, B, ldb);
    for (; j < N; j++) {
      float s = 0.0f;
      for (int k = 0; k < K; k++) s += A[i * lda + k] * B[k * ldb + j];
      store1(o, i, j, s);
    }
  }
}

// Blocks of 4 rows x 12 columns: 12 accumulators, 3 vectors of B, a broadcast and a
// product fit x86-64's 16 vector registers (4 x 16 spilled and ran ~25% slower in V8).
static void gemm_nb(const Out *o, int M, int N, int K, const float *A, int lda, int ta, const float *B, int ldb) {
  if (!ta && mostly_zero(M, K, A, lda)) {
    gemm_sparse(o, M, N, K, A, lda, B, ldb);
    return;
  }
  int j = 0;
  for (; j + 12 <= N; j += 12) strip_nb(o, 3, j, M, K, A, lda, ta, B, ldb);
  for (; j + 4 <= N; j += 4) strip_nb(o, 1, j, M, K, A, lda, ta, B, ldb);
  for (; j < N; j++)
    for (int i = 0; i < M; i++) {
      float s = 0.0f;
      for (int k = 0; k < K; k++) s += (ta ? A[k * lda + i] : A[i * lda + k]) * B[k * ldb + j];
      store1(o, i, j, s);
    }
}

INLINE float hsum(v128_t v) {
  return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) + wasm_f32x4_extract_lane(v, 2) +
         wasm_f32x4_extract_lane(v, 3);
}

// op(A) = A, op(B) = B^T: rows of A and of B are both contiguous along k, so each
// result is a dot product; an R x 4 block shares its loads.
INLINE void block_nt(const Out *o, int R, int i0, int j0, int K, const float *A, int lda, const float *B, int ldb) {
  v128_t acc[4][4];
  UNROLL for (int r = 0; r < R; r++)
    UNROLL for (int c = 0; c < 4; c++) acc[r][c] = wasm_f32x4_splat(0.0f);
  int k = 0;
  for (; k + 4 <= K; k += 4) {
    v128_t b[4];
    UNROLL for (int c = 0; c < 4; c++) b[c] = wasm_v128_load(B + (j0 + c) * ldb + k);
    UNROLL for (int r = 0; r < R; r++) {
      v128_t a = wasm_v128_load(A + (i0 + r) * lda + k);
      UNROLL for (int c = 0; c < 4; c++) acc[r][c] = wasm_f32x4_add(acc[r][c], wasm_f32x4_mul(a, b[c]));
    }
  }
  UNROLL for (int r = 0; r < R; r++) {
    float s[4];
    UNROLL for (int c = 0; c < 4; c++) {
      s[c] = hsum(acc[r][c]);
      for (int kk = k; kk < K; kk++) s[c] += A[(i0 + r) * lda + kk] * B[(j0 + c) * ldb + kk];
    }
    store4(o, i0 + r, j0, wasm_f32x4_make(s[0], s[1], s[2], s[3]));
  }
}

// op(B) = B^T with a short k (the gradient into the last hidden layer: k = classes):
// dot products would spend more on their horizontal sums than on the products, so
// gather 8 of B's rows at each k into two vectors and broadcast A instead.
INLINE void block_nt_short(const Out *o, int R, int i0, int j0, int K, const float *A, int lda, const float *B, int ldb) {
  v128_t acc[4][2];
  UNROLL for (int r = 0; r < R; r++)
    UNROLL for (int q = 0; q < 2; q++) acc[r][q] = wasm_f32x4_splat(0.0f);
  for (int k = 0; k < K; k++) {
    const float *b = B + j0 * ldb + k;
    const v128_t bv[2] = {wasm_f32x4_make(b[0], b[ldb], b[2 * ldb], b[3 * ldb]),
                          wasm_f32x4_make(b[4 * ldb], b[5 * ldb], b[6 * ldb], b[7 * ldb])};
    UNROLL for (int r = 0; r < R; r++) {
      const v128_t a = wasm_f32x4_splat(A[(i0 + r) * lda + k]);
      UNROLL for (int q = 0; q < 2; q++) acc[r][q] = wasm_f32x4_add(acc[r][q], wasm_f32x4_mul(a, bv[q]));
    }
  }
  UNROLL for (int r = 0; r < R; r++)
    UNROLL for (int q = 0; q < 2; q++) store4(o, i0 + r, j0 + 4 * q, acc[r][q]);
}

#define SHORT_K 16

INLINE void rows_nt(const Out *o, int R, int i0, int N, int K, const float *A, int lda, const float *B, int ldb) {
  int j = 0;
  if (K < SHORT_K)
    for (; j + 8 <= N; j += 8) block_nt_short(o, R, i0, j, K, A, lda, B, ldb);
  for (; j + 4 <= N; j += 4) block_nt(o, R, i0, j, K, A, lda, B, ldb);
  for (; j < N; j++)
    UNROLL for (int r = 0; r < R; r++) {
      float s = 0.0f;
      for (int k = 0; k < K; k++) s += A[(i0 + r) * lda + k] * B[j * ldb + k];
      store1(o, i0 + r, j, s);
    }
}

__attribute__((export_name("gemm"))) void gemm(int flags, int M, int N, int K, float alpha, const float *A, int lda,
                                               const float *B, int ldb, float beta, float *C, int ldc,
                                               const float *bias, const float *mask) {
  Out o = {alpha, beta, C, ldc, bias, mask, flags & RELU};
  int ta = flags & TRANS_A, tb = flags & TRANS_B;
  int i = 0;
  if (!tb) {
    gemm_nb(&o, M, N, K, A, lda, ta, B, ldb);
  } else if (!ta) {
    for (; i + 4 <= M; i += 4) rows_nt(&o, 4, i, N, K, A, lda, B, ldb);
    for (; i < M; i++) rows_nt(&o, 1, i, N, K, A, lda, B, ldb);
  } else {
    // Both transposed: no layer needs it; kept correct rather than fast.
    for (; i < M; i++)
      for (int j = 0; j < N; j++) {
        float s = 0.0f;
        for (int k = 0; k < K; k++) s += A[k * lda + i] * B[j * ldb + k];
        store1(&o, i, j, s);
      }
  }
}
