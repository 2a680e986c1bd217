// A CPU emulation of templates/prt_tile.cuh and the few CUDA built-ins generated kernels use, so
// the generated CUDA runs unchanged on this machine (no GPU) and can be compared with the
// interpreter. Each CUDA thread is a fiber (ucontext); __syncthreads, warp shuffles, ldmatrix and
// mma.sync are rendezvous of the block or of the warp's 32 lanes, computed per the PTX ISA's
// fragment layouts; cp.async copies complete only at cp.async.wait_group, as on the GPU. Fibers run
// one at a time to their next rendezvous, in thread order or reversed, so a missing barrier shows
// up as a wrong result. Test-only: included instead of the real header by test/codegen-emu.test.ts.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <math.h>
#include <type_traits>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__
#define __align__(n)

// ---- types ------------------------------------------------------------------------------------
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
struct float2 { float x, y; };

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __int_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float __half2float(__half h) {
  const uint32_t s = (h.bits >> 15) & 1, e = (h.bits >> 10) & 31, m = h.bits & 1023;
  float v;
  if (e == 0) v = std::ldexp(static_cast<float>(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(m | 1024), static_cast<int>(e) - 25);
  return s ? -v : v;
}
inline __half __float2half_rn(float f) {
  // round to nearest even through double arithmetic on the exact value
  __half h;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  double a = std::fabs(static_cast<double>(f));
  if (std::isnan(f)) { h.bits = 0x7e00; return h; }
  if (a >= 65520.0) { h.bits = sign | 0x7c00; return h; }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;    // a = 1.x * 2^exp
  if (exp < -14) exp = -14;
  const double ulp = std::ldexp(1.0, exp - 10);
  double q = std::nearbyint(a / ulp);  // round half even (default rounding mode)
  double r = q * ulp;
  // encode r
  if (r == 0) { h.bits = sign; return h; }
  int re;
  std::frexp(r, &re);
  int rexp = re - 1;
  if (rexp < -14) {
    h.bits = sign | static_cast<uint16_t>(r / std::ldexp(1.0, -24));
  } else {
    const uint16_t m = static_cast<uint16_t>((r / std::ldexp(1.0, rexp) - 1.0) * 1024.0);
    h.bits = sign | static_cast<uint16_t>((rexp + 15) << 10) | m;
  }
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) { return __int_as_float(static_cast<unsigned>(b.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  __nv_bfloat16 b;
  uint32_t u = f2u(f);
  if (std::isnan(f)) { b.bits = 0x7fc0; return b; }
  u += 0x7fff + ((u >> 16) & 1);
  b.bits = static_cast<uint16_t>(u >> 16);
  return b;
}

// ---- the block scheduler ----------------------------------------------------------------------
struct uint3_ { unsigned x = 0, y = 0, z = 0; };
inline uint3_ threadIdx, blockIdx;

namespace emu {

struct Copy { unsigned char* dst; const unsigned char* src; int bytes; int size; };  // size: the copy's width (4 or 16 B)

struct Fiber {
  ucontext_t ctx;
  bool done = false;
  // what it waits for: 0 none, 1 block barrier of generation `gen`, 2 warp rendezvous of phase `gen`
  int wait = 0;
  unsigned long gen = 0;
  std::deque<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                // issued, not yet committed
  // wgmma accumulators in flight: (the registers, the result so far), written back by the wait
  std::vector<std::pair<float*, std::vector<float>>> pendingWgmma;
};

struct Warp {
  int arrived = 0;
  unsigned long phase = 0;
  uint64_t slot[32][10];  // per-lane deposits of the current collective
};

/** A warpgroup (4 consecutive warps, 128 threads): wgmma is its collective. */
struct Group {
  int arrived = 0;
  unsigned long phase = 0;
  const void* slot[128][8];  // per-thread deposits (pointers to its registers)
  uint64_t word[128][4];
};

struct Block {
  int threads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<Group> groups;
  int arrivedBarrier = 0;
  unsigned long barrierGen = 0;
  // __syncthreads_or: the votes of the generation in progress, and the last completed one's answer
  // (read by the waiters after the release; the next answer needs every thread to arrive again)
  bool voteAcc = false, voteResult = false;
  int current = -1;
  ucontext_t sched;
  void (*body)() = nullptr;
};

inline Block* block = nullptr;
/** Fiber stacks, allocated once and reused by every block. */
inline std::vector<std::vector<unsigned char>> stacks;

inline Fiber& self() { return block->fibers[block->current]; }
inline void yield() { swapcontext(&self().ctx, &block->sched); }
inline int lane() { return block->current & 31; }
inline Warp& warp() { return block->warps[block->current >> 5]; }

/** Wait until all 32 lanes of this thread's warp arrive here; `last` runs once, in the last lane
 * to arrive, before any lane leaves. */
template <typename F> inline void warp_sync(F last) {
  Warp& w = warp();
  const unsigned long phase = w.phase;
  if (++w.arrived == 32) {
    last();
    w.arrived = 0;
    w.phase++;
    return;
  }
  Fiber& f = self();
  f.wait = 2;
  f.gen = phase;
  while (warp().phase == phase) yield();
  self().wait = 0;
}
inline void warp_sync() { warp_sync([] {}); }

inline Group& group() { return block->groups[block->current >> 7]; }
/** Wait until all 128 threads of this thread's warpgroup arrive; `last` runs once, in the last. */
template <typename F> inline void group_sync(F last) {
  Group& g = group();
  const unsigned long phase = g.phase;
  if (++g.arrived == 128) {
    last();
    g.arrived = 0;
    g.phase++;
    return;
  }
  Fiber& f = self();
  f.wait = 3;
  f.gen = phase;
  while (group().phase == phase) yield();
  self().wait = 0;
}

inline void syncthreads(bool vote = false) {
  const unsigned long gen = block->barrierGen;
  block->voteAcc = block->voteAcc || vote;
  if (++block->arrivedBarrier == block->threads) {
    block->arrivedBarrier = 0;
    block->barrierGen++;
    block->voteResult = block->voteAcc;
    block->voteAcc = false;
    return;
  }
  Fiber& f = self();
  f.wait = 1;
  f.gen = gen;
  while (block->barrierGen == gen) yield();
  self().wait = 0;
}

inline void trampoline() {
  block->body();
  self().done = true;
  swapcontext(&self().ctx, &block->sched);
}

/** Run one block of `threads` threads to completion; `reverse` runs fibers in reverse order. */
inline void run_block(unsigned bx, unsigned by, unsigned bz, int threads, bool reverse, void (*body)()) {
  Block b;
  b.threads = threads;
  b.fibers.resize(threads);
  b.warps.resize((threads + 31) / 32);
  b.groups.resize((threads + 127) / 128);
  b.body = body;
  block = &b;
  blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
  if (stacks.size() < static_cast<size_t>(threads)) stacks.resize(threads);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    if (stacks[t].empty()) stacks[t].resize(128 * 1024);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks[t].data();
    f.ctx.uc_stack.ss_size = stacks[t].size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (;;) {
    int alive = 0;
    for (int i = 0; i < threads; ++i) {
      const int t = reverse ? threads - 1 - i : i;
      Fiber& f = b.fibers[t];
      if (f.done) continue;
      alive++;
      b.current = t;
      threadIdx.x = static_cast<unsigned>(t);
      swapcontext(&b.sched, &f.ctx);
    }
    if (alive == 0) break;
    // a deadlock: a thread waits on a rendezvous that a finished thread (of its block, or of its
    // warp for warp collectives) never reached; control flow is uniform, so it cannot complete
    bool finished = false, blocked = false;
    std::vector<bool> warpDone(b.warps.size(), false), groupDone(b.groups.size(), false);
    for (int t = 0; t < threads; ++t) {
      finished = finished || b.fibers[t].done;
      if (b.fibers[t].done) warpDone[t >> 5] = true, groupDone[t >> 7] = true;
    }
    for (int t = 0; t < threads; ++t) {
      const Fiber& f = b.fibers[t];
      if (f.wait == 1 && b.barrierGen == f.gen && finished) blocked = true;
      if (f.wait == 2 && b.warps[t >> 5].phase == f.gen && warpDone[t >> 5]) blocked = true;
      if (f.wait == 3 && b.groups[t >> 7].phase == f.gen && groupDone[t >> 7]) blocked = true;
    }
    if (blocked) {
      std::fprintf(stderr, "emu: deadlock: a barrier or warp collective some threads never reach\n");
      std::exit(3);
    }
  }
  block = nullptr;
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }
inline int __syncthreads_or(int pred) {
  emu::syncthreads(pred != 0);
  return emu::block->voteResult ? 1 : 0;
}

inline float __shfl_xor_sync(unsigned, float v, int o) {
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  float r;
  std::memcpy(&r, &w.slot[l ^ o][0], 4);
  emu::warp_sync();
  return r;
}
inline float __shfl_up_sync(unsigned, float v, int o) {
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  float r;
  std::memcpy(&r, &w.slot[l >= o ? l - o : l][0], 4);
  emu::warp_sync();
  return r;
}
inline float __shfl_sync(unsigned, float v, int src) {
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  float r;
  std::memcpy(&r, &w.slot[src & 31][0], 4);
  emu::warp_sync();
  return r;
}

inline int __shfl_sync(unsigned, int v, int src) {
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  int r;
  std::memcpy(&r, &w.slot[src & 31][0], 4);
  emu::warp_sync();
  return r;
}
inline int __shfl_up_sync(unsigned, int v, int o) {
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  int r;
  std::memcpy(&r, &w.slot[l >= o ? l - o : l][0], 4);
  emu::warp_sync();
  return r;
}
template <typename T> T __shfl_down_sync(unsigned, T v, int o) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  auto& w = emu::warp();
  const int l = emu::lane();
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  T r;
  std::memcpy(&r, &w.slot[l + o < 32 ? l + o : l][0], 4);
  emu::warp_sync();
  return r;
}
inline unsigned __ballot_sync(unsigned, bool p) {
  auto& w = emu::warp();
  const int l = emu::lane();
  const int v = p ? 1 : 0;
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  unsigned bits = 0;
  for (int j = 0; j < 32; ++j) {
    int u;
    std::memcpy(&u, &w.slot[j][0], 4);
    if (u != 0) bits |= 1u << j;
  }
  emu::warp_sync();
  return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline bool __all_sync(unsigned, bool p) {
  auto& w = emu::warp();
  const int l = emu::lane();
  const int v = p ? 1 : 0;
  std::memcpy(&w.slot[l][0], &v, 4);
  emu::warp_sync();
  bool all = true;
  for (int j = 0; j < 32; ++j) {
    int u;
    std::memcpy(&u, &w.slot[j][0], 4);
    all = all && u != 0;
  }
  emu::warp_sync();
  return all;
}

// ---- the primitives of templates/prt_tile.cuh ---------------------------------------------------
/** The block's shared memory (the harness defines it, 1024-byte aligned): shared addresses are offsets into it. */
extern unsigned char prt_smem[];

namespace prt {

inline float to_f32(float x) { return x; }
inline float to_f32(__half x) { return __half2float(x); }
inline float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> inline __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

inline float max_nan(float a, float b) { return (a != a || b != b) ? NAN : std::fmax(a, b); }
inline float min_nan(float a, float b) { return (a != a || b != b) ? NAN : std::fmin(a, b); }
inline int max_nan(int a, int b) { return a > b ? a : b; }
inline int min_nan(int a, int b) { return a < b ? a : b; }

inline float exp(float x) { return std::exp2(x * 1.4426950408889634f); }
inline float log(float x) { return std::log2(x) * 0.6931471805599453f; }

template <int N, typename T> T powi(T x) {
  T y = T(1);
  for (int i = 0; i < N; ++i) y = y * x;
  return y;
}

/** cp.async of `Size` bytes (4 or 16), zero-filled past src_bytes, at Size-aligned addresses. */
template <int Size> void cp_async(void* smem, const void* gmem, int src_bytes) {
  if (src_bytes < 0 || src_bytes > Size) { std::fprintf(stderr, "emu: cp.async src size %d of %d\n", src_bytes, Size); std::exit(3); }
  if ((reinterpret_cast<uintptr_t>(smem) % Size) || (src_bytes > 0 && (reinterpret_cast<uintptr_t>(gmem) % Size))) {
    std::fprintf(stderr, "emu: cp.async address not %d-byte aligned\n", Size);
    std::exit(3);
  }
  emu::self().open.push_back({static_cast<unsigned char*>(smem), static_cast<const unsigned char*>(gmem), src_bytes, Size});
}
/** Two adjacent f32 in one 8-byte load: the address must be 8-byte aligned, as on the GPU. */
inline float2 lds_f32x2(const float* p) {
  if (reinterpret_cast<uintptr_t>(p) % 8) { std::fprintf(stderr, "emu: lds_f32x2 address not 8-byte aligned\n"); std::exit(3); }
  return {p[0], p[1]};
}
/** A DSL fetch: element i of a 1-D i32 table of n elements, 0 out of bounds. */
inline int fetch_i32(const int* t, long long n, int i) { return (i >= 0 && i < n) ? t[i] : 0; }
/** Eight 16-bit elements in one 16-byte load: the address must be 16-byte aligned, as on the GPU. */
template <typename T> inline void lds_b16x8(const T* p, uint32_t (&w)[4]) {
  if (reinterpret_cast<uintptr_t>(p) % 16) { std::fprintf(stderr, "emu: lds_b16x8 address not 16-byte aligned\n"); std::exit(3); }
  std::memcpy(w, p, 16);
}
inline void cp_async_16(void* smem, const void* gmem, int src_bytes) { cp_async<16>(smem, gmem, src_bytes); }
inline void cp_async_4(void* smem, const void* gmem, int src_bytes) { cp_async<4>(smem, gmem, src_bytes); }
inline void cp_async_commit() {
  auto& f = emu::self();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}
template <int N> void cp_async_wait() {
  auto& f = emu::self();
  while (static_cast<int>(f.groups.size()) > N) {
    for (const auto& c : f.groups.front()) {
      std::memset(c.dst, 0, c.size);
      if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
    }
    f.groups.pop_front();
  }
}
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int a_row(int lane) { return lane & 15; }
inline int a_col(int lane) { return (lane >> 4) << 3; }
inline int at_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
inline int at_col(int lane) { return ((lane >> 3) & 1) << 3; }
inline int frag_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
inline int frag_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }

/** ldmatrix .x{n}[.trans]: lanes 8j..8j+7 give the row addresses of 8x8 matrix j; lane l receives
 * of matrix j row l/4, columns 2(l%4), 2(l%4)+1 (transposed: column l/4, rows 2(l%4), 2(l%4)+1). */
template <int N> void ldmatrix(uint32_t* r, const void* p, bool trans) {
  auto& w = emu::warp();
  const int l = emu::lane();
  w.slot[l][0] = reinterpret_cast<uint64_t>(p);
  emu::warp_sync();
  for (int j = 0; j < N; ++j) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(w.slot[8 * j + (l >> 2)][0]);
      lo = row[2 * (l & 3)];
      hi = row[2 * (l & 3) + 1];
    } else {
      const uint16_t* r0 = reinterpret_cast<const uint16_t*>(w.slot[8 * j + 2 * (l & 3)][0]);
      const uint16_t* r1 = reinterpret_cast<const uint16_t*>(w.slot[8 * j + 2 * (l & 3) + 1][0]);
      lo = r0[l >> 2];
      hi = r1[l >> 2];
    }
    r[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  emu::warp_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix<4>(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { ldmatrix<4>(r, p, true); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void* p) { ldmatrix<2>(r, p, false); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) { ldmatrix<2>(r, p, true); }

inline uint32_t pack2(__nv_bfloat16 lo, __nv_bfloat16 hi) { return static_cast<uint32_t>(lo.bits) | (static_cast<uint32_t>(hi.bits) << 16); }
inline uint32_t pack2(__half lo, __half hi) { return static_cast<uint32_t>(lo.bits) | (static_cast<uint32_t>(hi.bits) << 16); }
template <typename T> float b16_half(uint32_t r, int h) {
  const uint16_t v = static_cast<uint16_t>(h ? (r >> 16) : (r & 0xffffu));
  if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(__nv_bfloat16{v});
  else return __half2float(__half{v});
}

inline float b16_to_f32(uint16_t v, bool bf) { return bf ? __bfloat162float(__nv_bfloat16{v}) : __half2float(__half{v}); }

template <typename T> uint32_t pack2_rn(float lo, float hi) { return pack2(from_f32<T>(lo), from_f32<T>(hi)); }

// ---- sm_90a: swizzled layout, descriptors, wgmma -------------------------------------------------
inline unsigned smem_addr(const void* p) { return static_cast<unsigned>(static_cast<const unsigned char*>(p) - prt_smem); }
template <int W> int swz(int off) {
  constexpr int mask = W == 128 ? 7 : W == 64 ? 3 : 1;
  return off ^ (((off >> 6) & mask) << 3);
}
template <int W> uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  constexpr uint64_t mode = W == 128 ? 1 : W == 64 ? 2 : 3;
  const uint32_t a = smem_addr(p);
  return static_cast<uint64_t>((a & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32) | (mode << 62);
}
// wgmma computes at the instruction here, into a shadow of the accumulator that wgmma_wait<0>
// writes back; until then the registers read NaN, as on the GPU they are not the result (a read
// before the wait shows, and a write is lost as it would be)
inline void wgmma_fence() {}
inline void wgmma_commit() {}
template <int N> void wgmma_wait() {
  if (N != 0) return;  // the generated code waits for everything; anything else stays pending here
  auto& f = emu::self();
  for (auto& p : f.pendingWgmma) std::memcpy(p.first, p.second.data(), p.second.size() * sizeof(float));
  f.pendingWgmma.clear();
}
template <int S, int Q> void wgmma_fence_regs(float (&)[S][Q][4]) {}
inline void fence_proxy_async() {}

/** The shared byte address of element (mn, k) of a wgmma operand, decoded from its descriptor as
 * the PTX ISA's canonical layouts say ("Shared Memory Matrix Layout", "Matrix Descriptor Format"),
 * independently of how the generator lays tiles out: K-major ((8,m),(T,2k)) : ((W/2, SBO), (1, T)),
 * MN-major ((T, W/16, m), (8, k)) : ((1, T, LBO), (W/2, SBO)) in elements (T = 8 of 16 bits), then
 * the swizzle: address bits 4-6 XOR bits 7-9 (as many bits as the W-byte pattern has). */
inline unsigned wgmma_addr(uint64_t desc, bool kMajor, int mn, int k) {
  const unsigned start = static_cast<unsigned>(desc & 0x3FFF) << 4;
  const unsigned lbo = static_cast<unsigned>((desc >> 16) & 0x3FFF) << 4, sbo = static_cast<unsigned>((desc >> 32) & 0x3FFF) << 4;
  const unsigned mode = static_cast<unsigned>(desc >> 62);
  if (mode == 0) { std::fprintf(stderr, "emu: wgmma descriptor without a swizzle mode\n"); std::exit(3); }
  const unsigned W = mode == 1 ? 128 : mode == 2 ? 64 : 32, E = W / 2, mask = W / 16 - 1;
  unsigned a = kMajor ? start + (mn % 8) * W + (mn / 8) * sbo + (k / 8) * 16 + (k % 8) * 2
                      : start + 2 * (mn % E) + (mn / E) * lbo + (k % 8) * W + (k / 8) * sbo;
  a ^= ((a >> 7) & mask) << 4;
  return a;
}

/** wgmma m64nNk16 over the warpgroup: d[64 x N] = (scale_d ? d : 0) + A[64 x 16] B[16 x N], f32
 * accumulation in k order. Thread t of the group (warp w = t / 32, lane g = l / 4, t2 = 2 (l % 4))
 * holds d[q][e] at (16 w + g + 8 (e / 2), 8 q + t2 + e % 2) and, for A from registers, register
 * rg's halves h at (16 w + g + 8 (rg % 2), t2 + 8 (rg / 2) + h). */
template <int N, typename T> struct Wgmma {
  static constexpr bool bf = std::is_same<T, __nv_bfloat16>::value;
  static float at(unsigned addr) {
    uint16_t v;
    std::memcpy(&v, prt_smem + addr, 2);
    return b16_to_f32(v, bf);
  }
  static void run(float (&d)[N / 8][4], const uint32_t* a, uint64_t da, uint64_t db, int scale_d, int ta, int tb) {
    auto& g = emu::group();
    const int t = emu::block->current & 127;
    g.slot[t][0] = &d;
    g.slot[t][1] = a;
    g.word[t][0] = da;
    g.word[t][1] = db;
    g.word[t][2] = static_cast<uint64_t>(scale_d != 0);
    emu::group_sync([&g, ta, tb] {
      for (int x = 1; x < 128; ++x)
        if (g.word[x][0] != g.word[0][0] || g.word[x][1] != g.word[0][1] || g.word[x][2] != g.word[0][2] || (g.slot[x][1] == nullptr) != (g.slot[0][1] == nullptr)) {
          std::fprintf(stderr, "emu: wgmma operands differ between the threads of a warpgroup\n");
          std::exit(3);
        }
      static float A[64][16], B[16][N];
      for (int kk = 0; kk < 16; ++kk)
        for (int n = 0; n < N; ++n) B[kk][n] = at(wgmma_addr(g.word[0][1], tb == 0, n, kk));
      if (g.slot[0][1] == nullptr) {
        for (int m = 0; m < 64; ++m)
          for (int kk = 0; kk < 16; ++kk) A[m][kk] = at(wgmma_addr(g.word[0][0], ta == 0, m, kk));
      } else {
        for (int x = 0; x < 128; ++x) {
          const uint32_t* r = static_cast<const uint32_t*>(g.slot[x][1]);
          const int w = x >> 5, l = x & 31, gg = l >> 2, t2 = (l & 3) * 2;
          for (int rg = 0; rg < 4; ++rg)
            for (int h = 0; h < 2; ++h) A[16 * w + gg + 8 * (rg & 1)][t2 + 8 * (rg >> 1) + h] = b16_to_f32(static_cast<uint16_t>(h ? r[rg] >> 16 : r[rg] & 0xffff), bf);
        }
      }
      const int first = emu::block->current & ~127;
      for (int x = 0; x < 128; ++x) {
        float* regs = static_cast<float*>(const_cast<void*>(g.slot[x][0]));
        auto& pending = emu::block->fibers[first + x].pendingWgmma;
        auto it = std::find_if(pending.begin(), pending.end(), [regs](const auto& p) { return p.first == regs; });
        if (it == pending.end()) {
          pending.emplace_back(regs, std::vector<float>(regs, regs + N / 2));
          it = pending.end() - 1;
        }
        float* dd = it->second.data();
        const int w = x >> 5, l = x & 31, gg = l >> 2, t2 = (l & 3) * 2;
        for (int q = 0; q < N / 8; ++q)
          for (int e = 0; e < 4; ++e) {
            const int m = 16 * w + gg + 8 * (e >> 1), n = 8 * q + t2 + (e & 1);
            float acc = g.word[0][2] ? dd[4 * q + e] : 0.0f;
            for (int kk = 0; kk < 16; ++kk) acc += A[m][kk] * B[kk][n];
            dd[4 * q + e] = acc;
            regs[4 * q + e] = NAN;
          }
      }
    });
  }
  template <int TA, int TB> static void ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int scale_d) { run(d, nullptr, da, db, scale_d, TA, TB); }
  template <int TB> static void rs(float (&d)[N / 8][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint64_t db, int scale_d) {
    const uint32_t a[4] = {a0, a1, a2, a3};
    run(d, a, 0, db, scale_d, 0, TB);
  }
};

/** mma.sync m16n8k16: lane (g = l/4, t = l%4) holds A (g, 2t..) (g+8, 2t..) (g, 2t+8..) (g+8, 2t+8..),
 * B (k = 2t.., n = g) (k = 2t+8.., n = g), C/D (g, 2t..) (g+8, 2t..). */
template <typename T> void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  constexpr bool bf = std::is_same<T, __nv_bfloat16>::value;
  auto& w = emu::warp();
  const int l = emu::lane();
  for (int i = 0; i < 4; ++i) w.slot[l][i] = a[i];
  w.slot[l][4] = b0;
  w.slot[l][5] = b1;
  for (int e = 0; e < 4; ++e) std::memcpy(&w.slot[l][6 + e], &d[e], 4);
  emu::warp_sync([&w] {
    float A[16][16], B[16][8];
    for (int ln = 0; ln < 32; ++ln) {
      const int g = ln >> 2, t = ln & 3;
      const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int i = 0; i < 4; ++i) {
        const uint32_t v = static_cast<uint32_t>(w.slot[ln][i]);
        A[ar[i]][ac[i]] = b16_to_f32(v & 0xffff, bf);
        A[ar[i]][ac[i] + 1] = b16_to_f32(v >> 16, bf);
      }
      for (int i = 0; i < 2; ++i) {
        const uint32_t v = static_cast<uint32_t>(w.slot[ln][4 + i]);
        B[2 * t + 8 * i][g] = b16_to_f32(v & 0xffff, bf);
        B[2 * t + 8 * i + 1][g] = b16_to_f32(v >> 16, bf);
      }
    }
    for (int ln = 0; ln < 32; ++ln)
      for (int e = 0; e < 4; ++e) {
        const int r = frag_row(ln, e), c = frag_col(ln, e);
        float s;
        std::memcpy(&s, &w.slot[ln][6 + e], 4);
        for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][c];
        std::memcpy(&w.slot[ln][6 + e], &s, 4);
      }
  });
  for (int e = 0; e < 4; ++e) std::memcpy(&d[e], &w.slot[l][6 + e], 4);
  emu::warp_sync();
}

// Over the 4 lanes of a quad (lanes 4g .. 4g+3: one row of an m16n8 accumulator tile), every
// lane gets the result; the pairwise order makes it bit-identical on the 4 lanes.
inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
inline float quad_max(float v) {
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return max_nan(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
// Over the 8 lanes of one lane & 3 (one column pair of an m16n8 accumulator tile), every lane
// gets the result, bit-identical (pairwise order).
inline float column_lanes_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  return v + __shfl_xor_sync(0xffffffffu, v, 16);
}
inline float column_lanes_max(float v) {
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, 8));
  return max_nan(v, __shfl_xor_sync(0xffffffffu, v, 16));
}
inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
inline float warp_inclusive_sum(float v, int lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}
// fibers run one at a time between rendezvous, so a plain add is atomic here
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
// the device header's run-wise warp sum, with the same shuffles (see templates/prt_tile.cuh)
inline void add_keyed(float* p, float v, int key, int lane) {
  const int prev = __shfl_up_sync(0xffffffffu, key, 1);
  const bool head = lane == 0 || prev != key;
  const unsigned heads = __ballot_sync(0xffffffffu, head);
  if (heads != 0xffffffffu) {
    const int run = __popc(heads & (0xffffffffu >> (31 - lane)));
    for (int o = 1; o < 32; o <<= 1) {
      const float u = __shfl_down_sync(0xffffffffu, v, o);
      const int ru = __shfl_down_sync(0xffffffffu, run, o);
      if (lane + o < 32 && ru == run) v += u;
    }
  }
  if (head && key >= 0) atomicAdd(p, v);
}
template <typename T> int lower_bound(const T* t, int lo, int hi, int key) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (static_cast<int>(t[mid]) < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

}  // namespace prt

using std::abs;
