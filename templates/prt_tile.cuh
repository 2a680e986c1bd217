// prt_tile.cuh: the hand-written tile primitives that generated kernels call (sm_80 and later).
// Nothing here knows a retention kernel: dtype conversions, NaN-propagating min/max, integer powers,
// cp.async copies, ldmatrix fragment loads, one m16n8k16 tensor-core step, warp reductions and
// scans, and for sm_90a the swizzled shared layout, wgmma descriptors and the warpgroup mma's
// fences (the instructions themselves: prt_wgmma.cuh, generated per shape). The algorithm that
// calls them is generated from the DSL (codegen/).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace prt {

// ---- dtype conversions: every value is computed in f32 and rounded once when written ----------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---- scalar math with the interpreter's semantics ----------------------------------------------
// Math.max / Math.min propagate NaN; fmaxf / fminf drop it.
// max / min that return NaN when either input is NaN: one instruction (max.NaN, sm_80+), where the
// comparisons and a select took four (a row max over a 128-key block is 64 of them per thread)
__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float min_nan(float a, float b) {
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ int max_nan(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int min_nan(int a, int b) { return a < b ? a : b; }

/** e^x and ln x through the multi-function unit's base-2 instructions (ex2.approx, lg2.approx: 2^-22
 * relative, subnormals flushed to 0: below 1.2e-38, far under any weight or gate factor the
 * results are compared with), one instruction and a multiply each instead of the tens of
 * expf / logf: the attention's per-score exponent and logarithm are its critical path.
 * exp(-inf) = 0, log(0) = -inf, NaN stays NaN. */
__device__ __forceinline__ float exp(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}
__device__ __forceinline__ float log(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y * 0.6931471805599453f;
}

/** x^N by repeated multiplication, left to right (the interpreter's order). */
template <int N, typename T> __device__ __forceinline__ T powi(T x) {
  T y = T(1);
#pragma unroll
  for (int i = 0; i < N; ++i) y = y * x;
  return y;
}

// ---- cp.async: 16-byte global -> shared copies, zero-filled past src_bytes ---------------------
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
/** One 4-byte element (an f32 down a strided dim), zero-filled when src_bytes is 0. */
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/** Wait until at most N committed groups of this thread are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/** Two adjacent f32 of a shared vector (8-byte aligned) in one load: a fragment element pair's
 * column factors. */
__device__ __forceinline__ float2 lds_f32x2(const float* p) { return *reinterpret_cast<const float2*>(p); }

/** Eight 16-bit elements of a shared tile (16-byte aligned) in one load, as four words, element
 * u in the half u & 1 of word u >> 1 (b16_half): an `if any` vote over a bf16 / f16 tile. */
template <typename T> __device__ __forceinline__ void lds_b16x8(const T* p, uint32_t (&w)[4]) {
  const uint4 x = *reinterpret_cast<const uint4*>(p);
  w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
}

/** Element i of a 1-D i32 table of n elements, 0 out of bounds (as a load's elements): a DSL
 * `fetch`, the same address in every thread of a program (a broadcast through the read-only cache). */
__device__ __forceinline__ int fetch_i32(const int* __restrict__ t, long long n, int i) {
  return (i >= 0 && i < n) ? __ldg(t + i) : 0;
}

/** A 16-byte-aligned pointer test, for the uniform fast-path checks of async loads. */
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- ldmatrix: 8x8 b16 matrices from shared memory into mma fragments --------------------------
__device__ __forceinline__ unsigned smem_addr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}

// Lane addresses (row, col) inside a 16x16 (A) or 16x8 (B) operand block, per storage order.
// A [16 x 16] stored row-major (m, k): x4.                 A stored as [k, m] (transposed): x4.trans.
// B [16 x 8] stored as [n, k] (transposed): x2 / x4 (two n-tiles).  B stored as [k, n]: x2.trans / x4.trans.
__device__ __forceinline__ int a_row(int lane) { return lane & 15; }
__device__ __forceinline__ int a_col(int lane) { return (lane >> 4) << 3; }
__device__ __forceinline__ int at_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__device__ __forceinline__ int at_col(int lane) { return ((lane >> 3) & 1) << 3; }

// ---- mma registers built in registers: two 16-bit values per 32-bit register, the first low -----
__device__ __forceinline__ uint32_t pack2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}
__device__ __forceinline__ uint32_t pack2(__half lo, __half hi) {
  return static_cast<uint32_t>(__half_as_ushort(lo)) | (static_cast<uint32_t>(__half_as_ushort(hi)) << 16);
}
/** Two f32 rounded (to nearest even) to T and packed, lo in the low half: one cvt.rn.*x2.f32. */
template <typename T> __device__ __forceinline__ uint32_t pack2_rn(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2_rn<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2_rn<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
/** Value h (0: low half, 1: high) of a register of two 16-bit T, as f32. */
template <typename T> __device__ __forceinline__ float b16_half(uint32_t r, int h);
template <> __device__ __forceinline__ float b16_half<__nv_bfloat16>(uint32_t r, int h) { return __uint_as_float(h ? (r & 0xffff0000u) : (r << 16)); }
template <> __device__ __forceinline__ float b16_half<__half>(uint32_t r, int h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h ? (r >> 16) : (r & 0xffffu))));
}

// ---- one tensor-core step: d[16x8] += a[16x16] b[16x8], fp32 accumulation ----------------------
template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Accumulator fragment of an m16n8 tile: element e of lane (g = lane/4, q = lane%4) is at
// row g + 8*(e/2), column 2q + e%2.
__device__ __forceinline__ int frag_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
__device__ __forceinline__ int frag_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }

// ---- warp-level reductions and scans (all 32 lanes take part) ----------------------------------
// Over the 4 lanes of a quad (lanes 4g .. 4g+3: one row of an m16n8 accumulator tile), every
// lane gets the result; the pairwise order makes it bit-identical on the 4 lanes.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return max_nan(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
// Over the 8 lanes of one lane & 3 (one column pair of an m16n8 accumulator tile), every lane
// gets the result, bit-identical (pairwise order).
__device__ __forceinline__ float column_lanes_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  return v + __shfl_xor_sync(0xffffffffu, v, 16);
}
__device__ __forceinline__ float column_lanes_max(float v) {
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 8));
  return max_nan(v, __shfl_xor_sync(0xffffffffu, v, 16));
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/** Inclusive prefix sum over the lanes of a warp. */
__device__ __forceinline__ float warp_inclusive_sum(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}

/** Adds v into *p (a shared f32) atomically; key identifies *p (-1: this lane adds nothing, v is 0).
 *  Lanes next to each other with the same key form a run (the leading index of consecutive
 *  lexicographic features, one row's partials): each run sums with shuffles and its first lane adds
 *  once, so a warp makes one atomic per distinct target of a run instead of one per lane (a warp
 *  spanning two or three runs used to fall back to 32 atomics on two or three addresses). When no
 *  two neighbours share a key (distinct consecutive columns) every lane adds directly. Runs are
 *  numbered by their heads (not compared by key), so equal keys in separate runs never merge.
 *  All 32 lanes must call it. */
__device__ __forceinline__ void add_keyed(float* p, float v, int key, int lane) {
  const int prev = __shfl_up_sync(0xffffffffu, key, 1);
  const bool head = lane == 0 || prev != key;
  const unsigned heads = __ballot_sync(0xffffffffu, head);
  if (heads != 0xffffffffu) {
    const int run = __popc(heads & (0xffffffffu >> (31 - lane)));  // 1 + the heads before this lane
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {  // suffix sums within the run
      const float u = __shfl_down_sync(0xffffffffu, v, o);
      const int ru = __shfl_down_sync(0xffffffffu, run, o);
      if (lane + o < 32 && ru == run) v += u;
    }
  }
  if (head && key >= 0) atomicAdd(p, v);
}

// ---- sm_90a: the swizzled shared layout and warpgroup mma ------------------------------------
/** Element offset `off` of a 16-bit tile in the swizzled layout of W-byte rows (W = 128, 64, 32):
 * the 16-byte chunk index (offset bits 3-5) XOR the row's place in its group of 8 rows (offset
 * bits 6-8), as many bits as the pattern has. The tile starts on a multiple of 8 W bytes. This is
 * the layout wgmma's descriptors (swizzle modes 1-3) and TMA's SWIZZLE_*B read. */
template <int W> __device__ __forceinline__ int swz(int off) {
  constexpr int mask = W == 128 ? 7 : W == 64 ? 3 : 1;
  return off ^ (((off >> 6) & mask) << 3);
}

/** The wgmma matrix descriptor of a shared operand: start address, leading and stride byte
 * offsets (PTX ISA, "Matrix Descriptor Format"), swizzle mode of W-byte rows. */
template <int W> __device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  constexpr uint64_t mode = W == 128 ? 1 : W == 64 ? 2 : 3;
  const uint32_t a = smem_addr(p);
  return static_cast<uint64_t>((a & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32) | (mode << 62);
}

/** One warpgroup mma per width and dtype: prt_wgmma.cuh specialises it for the shapes in use. */
template <int N, typename T> struct Wgmma;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/** Orders this thread's register writes (accumulators, A fragments) before the wgmma that reads them. */
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/** Wait until at most N committed wgmma groups of the warpgroup are pending. */
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/** Orders this thread's generic-proxy shared-memory writes before async-proxy reads (wgmma, TMA). */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#else
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() {}
template <int N> __device__ __forceinline__ void wgmma_wait() {}
__device__ __forceinline__ void fence_proxy_async() {}
#endif
/** After a deferred wgmma's wait: its accumulator registers pass through an empty asm, so the
 * compiler cannot move their reads above the wait (nor keep them in other registers across it). */
template <int S, int Q> __device__ __forceinline__ void wgmma_fence_regs(float (&d)[S][Q][4]) {
#pragma unroll
  for (int j = 0; j < S; ++j)
#pragma unroll
    for (int q = 0; q < Q; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][q][e])::"memory");
}

/** First position in [lo, hi) of a sorted table whose entry is >= key. */
template <typename T> __device__ __forceinline__ int lower_bound(const T* t, int lo, int hi, int key) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (static_cast<int>(t[mid]) < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

}  // namespace prt
