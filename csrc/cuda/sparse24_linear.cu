// 2:4 sparse x dense on sparse tensor cores (mma.sp m16n8k32, f16/bf16 operands, f32 accumulate).
//
// Weights were reshuffled at pack time into the mma A-fragment order, so each lane loads its
// fragment of a 16x32 tile with one 16-byte load and one uint32 of metadata serves two k tiles
// (sparsity selectors 0 and 1). Two kernels:
// - split-K (m <= kS24SplitMaxM, decode): a block owns one 16-row tile; its 8 warps split K and
//   stream the weight, loading x straight from global (16 B per lane, then a 4x4 in-quad
//   transpose into the B-fragment order); partial sums meet in shared memory.
// - tiled (larger m): 128 rows x 128 tokens per block, 8 warps of 64x32, a 3-stage cp.async
//   pipeline over 64-column steps; B fragments come from shared memory via ldmatrix.
#include <type_traits>

#include "common.cuh"
#include "sparseinfer/cuda_linear.h"

namespace sparseinfer::cuda {
namespace {

template <typename T, int Sel>
__device__ __forceinline__ void mma_sp(float (&c)[4], const uint4& a, const uint32_t (&b)[4], uint32_t e) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e), "n"(Sel));
  } else {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e), "n"(Sel));
  }
}

// Lane t of each quad holds v = x[n][8t .. 8t+8) of a 32-column tile as 4 pairs (row t of a 4x4
// matrix M of pairs); the B fragment wants b[r] = pair (8r + 2t), i.e. column t of M.
__device__ __forceinline__ void quad_transpose(const uint4& v, uint32_t (&b)[4], int t) {
  const bool hi = t & 2, odd = t & 1;
  const uint32_t r0 = __shfl_xor_sync(0xffffffffu, hi ? v.x : v.z, 2);
  const uint32_t r1 = __shfl_xor_sync(0xffffffffu, hi ? v.y : v.w, 2);
  const uint32_t k0 = hi ? v.z : v.x, k1 = hi ? v.w : v.y;  // M[t][c0], M[t][c0+1]
  const uint32_t keep_a = odd ? k1 : k0, keep_b = odd ? r1 : r0;  // M[t][t], M[t^2][t]
  const uint32_t recv_a = __shfl_xor_sync(0xffffffffu, odd ? k0 : k1, 1);  // M[t^1][t]
  const uint32_t recv_b = __shfl_xor_sync(0xffffffffu, odd ? r0 : r1, 1);  // M[t^3][t]
  const uint32_t lo_a = odd ? recv_a : keep_a, hi_a = odd ? keep_a : recv_a;
  const uint32_t lo_b = odd ? recv_b : keep_b, hi_b = odd ? keep_b : recv_b;
  b[0] = hi ? lo_b : lo_a;
  b[1] = hi ? hi_b : hi_a;
  b[2] = hi ? lo_a : lo_b;
  b[3] = hi ? hi_a : hi_b;
}

// ------------------------------------------------------------------------------ split-K
constexpr int kSplitWarps = 8;

template <typename T, int NT>
__global__ void __launch_bounds__(32 * kSplitWarps)
s24_splitk_kernel(int m, const T* __restrict__ x, int ldx, T* __restrict__ y,
                  const T* __restrict__ bias, int rows, int k_pairs, const uint4* __restrict__ values,
                  const uint32_t* __restrict__ meta) {
  __shared__ float partial[kSplitWarps][NT][4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rt = blockIdx.x;
  const int tok0 = blockIdx.y * NT * 8;
  const int p_begin = int(int64_t(k_pairs) * warp / kSplitWarps);
  const int p_end = int(int64_t(k_pairs) * (warp + 1) / kSplitWarps);
  const uint4* a_ptr = values + size_t(rt) * 2 * k_pairs * 32 + lane;
  const uint32_t* e_ptr = meta + size_t(rt) * k_pairs * 32 + lane;

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  uint4 a0, a1;
  uint32_t e = 0;
  if (p_begin < p_end) {
    a0 = load_stream(a_ptr + size_t(2 * p_begin) * 32);
    a1 = load_stream(a_ptr + size_t(2 * p_begin + 1) * 32);
    e = e_ptr[size_t(p_begin) * 32];
  }
  for (int p = p_begin; p < p_end; ++p) {
    uint4 xv[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = tok0 + nt * 8 + g;
#pragma unroll
      for (int kt = 0; kt < 2; ++kt) {
        const int k = p * kS24PairCols + kt * kS24TileCols + 8 * t;
        xv[nt][kt] = (n < m && k < ldx) ? *reinterpret_cast<const uint4*>(x + size_t(n) * ldx + k)
                                        : make_uint4(0, 0, 0, 0);
      }
    }
    const uint4 c0 = a0, c1 = a1;
    const uint32_t ce = e;
    if (p + 1 < p_end) {  // next pair's weights in flight while this one computes
      a0 = load_stream(a_ptr + size_t(2 * p + 2) * 32);
      a1 = load_stream(a_ptr + size_t(2 * p + 3) * 32);
      e = e_ptr[size_t(p + 1) * 32];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint32_t b0[4], b1[4];
      quad_transpose(xv[nt][0], b0, t);
      quad_transpose(xv[nt][1], b1, t);
      mma_sp<T, 0>(acc[nt], c0, b0, ce);
      mma_sp<T, 1>(acc[nt], c1, b1, ce);
    }
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][nt][i][lane] = acc[nt][i];
  __syncthreads();
  for (int o = threadIdx.x; o < NT * 4 * 32; o += 32 * kSplitWarps) {
    const int nt = o / 128, i = (o / 32) % 4, l = o % 32;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) sum += partial[w][nt][i][l];
    const int row = rt * kS24TileRows + (l >> 2) + 8 * (i >> 1);
    const int token = tok0 + nt * 8 + 2 * (l & 3) + (i & 1);
    if (row < rows && token < m)
      y[size_t(token) * rows + row] = from_f32<T>(sum + (bias ? to_f32(bias[row]) : 0.f));
  }
}

// ------------------------------------------------------------------------------ tiled
constexpr int kBlockTiles = 8;                 // row tiles per block (128 rows)
constexpr int kBlockTokens = 128;
constexpr int kStages = 3;
constexpr int kLdb = kS24PairCols + 8;         // x tile row: 64 values + 16 B pad (ldmatrix banks)

template <typename T>
struct TiledStage {
  uint4 a[kBlockTiles][2][32];
  uint32_t e[kBlockTiles][32];
  T b[kBlockTokens][kLdb];
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void load_stage(TiledStage<T>& st, int p, int rt0, int tok0, int m,
                                           const T* __restrict__ x, int ldx, int row_tiles,
                                           int k_pairs, const uint4* __restrict__ values,
                                           const uint32_t* __restrict__ meta) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < 2; ++i) {  // weights: 8 tiles x 2 k tiles x 32 lanes of 16 B
    const int idx = tid + i * 256, tile = idx / 64, rest = idx % 64;
    const bool ok = rt0 + tile < row_tiles;
    const uint4* src = values + (size_t(ok ? rt0 + tile : 0) * 2 * k_pairs + 2 * p) * 32 + rest;
    cp_async16(&st.a[tile][rest / 32][rest % 32], src, ok);
  }
  if (tid < 64) {  // metadata: 8 tiles x 32 lanes of 4 B
    const int tile = tid / 8, part = tid % 8;
    const bool ok = rt0 + tile < row_tiles;
    const uint32_t* src = meta + (size_t(ok ? rt0 + tile : 0) * k_pairs + p) * 32 + part * 4;
    cp_async16(&st.e[tile][part * 4], src, ok);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // x: 128 tokens x 64 columns, 16 B pieces
    const int idx = tid + i * 256, n = idx / 8, piece = idx % 8;
    const int k = p * kS24PairCols + piece * 8;
    const bool ok = tok0 + n < m && k < ldx;
    const T* src = ok ? x + size_t(tok0 + n) * ldx + k : x;
    cp_async16(&st.b[n][piece * 8], src, ok);
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
s24_tiled_kernel(int m, const T* __restrict__ x, int ldx, T* __restrict__ y,
                 const T* __restrict__ bias, int rows, int row_tiles, int k_pairs,
                 const uint4* __restrict__ values, const uint32_t* __restrict__ meta) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* stages = reinterpret_cast<TiledStage<T>*>(smem_raw);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: 4 row tiles x 32 tokens
  const int rt0 = blockIdx.x * kBlockTiles;
  const int tok0 = blockIdx.y * kBlockTokens;

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_pairs) load_stage(stages[s], s, rt0, tok0, m, x, ldx, row_tiles, k_pairs, values, meta);
    cp_async_commit();
  }
  for (int p = 0; p < k_pairs; ++p) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = p + kStages - 1;
    if (next < k_pairs)
      load_stage(stages[next % kStages], next, rt0, tok0, m, x, ldx, row_tiles, k_pairs, values, meta);
    cp_async_commit();

    const TiledStage<T>& st = stages[p % kStages];
    uint32_t e[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) e[i] = st.e[wm * 4 + i][lane];
#pragma unroll
    for (int kt = 0; kt < 2; ++kt) {
      uint4 a[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = st.a[wm * 4 + i][kt][lane];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, &st.b[wn * 32 + j * 8 + (lane & 7)][kt * kS24TileCols + (lane >> 3) * 8]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (kt == 0) mma_sp<T, 0>(acc[i][j], a[i], b, e[i]);
          else mma_sp<T, 1>(acc[i][j], a[i], b, e[i]);
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = (rt0 + wm * 4 + i) * kS24TileRows + g + 8 * h;
      if (row >= rows) continue;
      const float b = bias ? to_f32(bias[row]) : 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int token = tok0 + wn * 32 + j * 8 + 2 * t + q;
          if (token < m) y[size_t(token) * rows + row] = from_f32<T>(acc[i][j][2 * h + q] + b);
        }
    }
  }
}

// dense[rows, cols] = W: one warp per (row tile, k tile); lanes fetch each value's metadata
// nibble from the lane that holds it.
template <typename T>
__global__ void __launch_bounds__(256)
s24_expand_kernel(T* __restrict__ dense, int rows, int cols, int row_tiles, int k_pairs,
                  const T* __restrict__ values, const uint32_t* __restrict__ meta) {
  const int64_t tile = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if (tile >= int64_t(row_tiles) * 2 * k_pairs) return;
  const int rt = int(tile / (2 * k_pairs)), kt = int(tile % (2 * k_pairs)), sel = kt & 1;
  const int row0 = rt * kS24TileRows, col0 = kt * kS24TileCols;
  for (int i = lane; i < kS24TileRows * kS24TileCols; i += 32) {
    const int r = row0 + i / kS24TileCols, c = col0 + i % kS24TileCols;
    if (r < rows && c < cols) dense[size_t(r) * cols + c] = from_f32<T>(0.f);
  }
  __syncwarp();
  const uint32_t word = meta[(size_t(rt) * k_pairs + kt / 2) * 32 + lane];
  const T* v = values + (size_t(tile) * 32 + lane) * 8;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int half = (e >> 1) & 1, cc = 2 * t + (e & 1) + 8 * (e >> 2), q = cc / 2;
    const uint32_t holder = __shfl_sync(0xffffffffu, word, 4 * g + 2 * sel + (e >> 2));
    const uint32_t nib = (holder >> (4 * (half * 4 + q % 4))) & 0xFu;
    const int r = row0 + g + 8 * half, c = col0 + 4 * q + int((nib >> (2 * (cc % 2))) & 3u);
    if (r < rows && c < cols) dense[size_t(r) * cols + c] = v[e];
  }
}

template <typename T>
void launch(int64_t m, const void* x, int64_t ldx, void* y, const void* bias,
            const Sparse24CudaWeight& w, cudaStream_t stream, S24Path path) {
  const T* xt = static_cast<const T*>(x);
  const T* bt = static_cast<const T*>(bias);
  const auto* va = static_cast<const uint4*>(w.values);
  if (path == S24Path::split_k || (path == S24Path::automatic && m <= kS24SplitMaxM)) {
    const int nt = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
    const int64_t passes = (m + 63) / 64;
    if (passes > 65535) throw std::invalid_argument("sparse24_linear: m too large for the split-K kernel");
    dim3 grid(unsigned(w.row_tiles), unsigned(passes));
    const int args_m = int(m), args_ldx = int(ldx), rows = int(w.rows), kp = int(w.k_pairs);
    T* yt = static_cast<T*>(y);
    switch (nt) {
      case 1: s24_splitk_kernel<T, 1><<<grid, 32 * kSplitWarps, 0, stream>>>(args_m, xt, args_ldx, yt, bt, rows, kp, va, w.meta); break;
      case 2: s24_splitk_kernel<T, 2><<<grid, 32 * kSplitWarps, 0, stream>>>(args_m, xt, args_ldx, yt, bt, rows, kp, va, w.meta); break;
      case 4: s24_splitk_kernel<T, 4><<<grid, 32 * kSplitWarps, 0, stream>>>(args_m, xt, args_ldx, yt, bt, rows, kp, va, w.meta); break;
      default: s24_splitk_kernel<T, 8><<<grid, 32 * kSplitWarps, 0, stream>>>(args_m, xt, args_ldx, yt, bt, rows, kp, va, w.meta); break;
    }
    check_launch("sparse24_linear (split-K kernel)");
    return;
  }
  const size_t smem = sizeof(TiledStage<T>) * kStages;
  auto kernel = s24_tiled_kernel<T>;
  allow_shared(kernel, smem, "sparse24_linear (shared memory limit)");
  const int64_t token_blocks = (m + kBlockTokens - 1) / kBlockTokens;
  if (token_blocks > 65535) throw std::invalid_argument("sparse24_linear: m too large for one launch");
  dim3 grid(unsigned((w.row_tiles + kBlockTiles - 1) / kBlockTiles), unsigned(token_blocks));
  kernel<<<grid, 256, smem, stream>>>(int(m), xt, int(ldx), static_cast<T*>(y), bt, int(w.rows),
                                      int(w.row_tiles), int(w.k_pairs), va, w.meta);
  check_launch("sparse24_linear (tiled kernel)");
}

}  // namespace

void sparse24_linear(int64_t m, const void* x, int64_t ldx, void* y, const void* bias,
                     const Sparse24CudaWeight& w, void* stream, S24Path path) {
  if (m == 0 || w.rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (w.dtype) {
    case DType::f16: return launch<__half>(m, x, ldx, y, bias, w, s, path);
    case DType::bf16: return launch<__nv_bfloat16>(m, x, ldx, y, bias, w, s, path);
    default: throw std::invalid_argument("sparse24_linear: the CUDA kernels take fp16 or bf16");
  }
}

void sparse24_to_dense(void* dense, const Sparse24CudaWeight& w, void* stream) {
  const int64_t tiles = w.row_tiles * 2 * w.k_pairs;
  if (tiles == 0 || w.rows == 0 || w.cols == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  dim3 grid(unsigned((tiles + 7) / 8));
  const int rows = int(w.rows), cols = int(w.cols), rt = int(w.row_tiles), kp = int(w.k_pairs);
  switch (w.dtype) {
    case DType::f32:
      s24_expand_kernel<float><<<grid, 256, 0, s>>>(static_cast<float*>(dense), rows, cols, rt, kp,
          static_cast<const float*>(w.values), w.meta); break;
    case DType::f16:
      s24_expand_kernel<__half><<<grid, 256, 0, s>>>(static_cast<__half*>(dense), rows, cols, rt, kp,
          static_cast<const __half*>(w.values), w.meta); break;
    case DType::bf16:
      s24_expand_kernel<__nv_bfloat16><<<grid, 256, 0, s>>>(static_cast<__nv_bfloat16*>(dense), rows, cols,
          rt, kp, static_cast<const __nv_bfloat16*>(w.values), w.meta); break;
  }
  check_launch("sparse24_to_dense");
}

}  // namespace sparseinfer::cuda
