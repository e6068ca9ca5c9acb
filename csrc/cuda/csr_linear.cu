// CSR sparse x dense for small m (decode): one warp per row group, x staged in shared memory.
//
// A block of kWarps warps owns kWarps * RPW rows and MP tokens. For each 2048-column segment it
// stages x[tokens, segment] into shared memory as columns of MP contiguous values (plus one zero
// column that padding entries read), then every lane streams kCsrVec (value, index) entries per
// vector load and gathers MP token values per entry from shared memory. Shared-memory gathers
// (bank conflicts only) replace global gathers (one L1 wavefront per distinct line), which is
// what makes the decode case memory-bound on the weight stream.
#include "common.cuh"
#include "sparseinfer/cuda_linear.h"

namespace sparseinfer::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

template <typename T, int MP, int RPW>
__global__ void __launch_bounds__(kThreads)
csr_rows_kernel(int m, const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ bias,
                int rows, int cols, int segs, const T* __restrict__ values,
                const uint16_t* __restrict__ index, const int32_t* __restrict__ seg_ptr) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);  // [(kCsrSegCols + 1) * MP]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t0 = blockIdx.y * MP;
  const int row0 = (blockIdx.x * kWarps + warp) * RPW;
  float acc[RPW][MP];
#pragma unroll
  for (int r = 0; r < RPW; ++r)
#pragma unroll
    for (int t = 0; t < MP; ++t) acc[r][t] = 0.f;

  for (int s = 0; s < segs; ++s) {
    const int c0 = s * kCsrSegCols;
    const int width = min(kCsrSegCols, cols - c0);
    __syncthreads();  // the previous segment's gathers are done
    // Stage x in batches whose loads are all in flight before the first store (latency-bound).
    constexpr int kPerThread = (kCsrSegCols + 1 + kThreads - 1) / kThreads;
    constexpr int kBatch = MP >= 8 ? 1 : (MP >= 4 ? 3 : kPerThread);
#pragma unroll
    for (int b0 = 0; b0 < kPerThread; b0 += kBatch) {
      T col[kBatch][MP];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = threadIdx.x + (b0 + b) * kThreads;
#pragma unroll
        for (int t = 0; t < MP; ++t)
          col[b][t] = (b0 + b < kPerThread && c < width && t0 + t < m)
                          ? x[size_t(t0 + t) * cols + c0 + c] : from_f32<T>(0.f);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = threadIdx.x + (b0 + b) * kThreads;
        if (b0 + b < kPerThread && c <= kCsrSegCols)
#pragma unroll
          for (int t = 0; t < MP; ++t) xs[c * MP + t] = col[b][t];
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      const int row = row0 + r;
      if (row < rows) {
        const int begin = seg_ptr[size_t(row) * segs + s], end = seg_ptr[size_t(row) * segs + s + 1];
        // Two vectors per lane per step: both loads in flight before the first gather.
        for (int i = begin + lane * kCsrVec; i < end; i += 64 * kCsrVec) {
          float w[2][kCsrVec];
          uint4 packed[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int at = i + h * 32 * kCsrVec;
            if (h == 0 || at < end) {
              load_floats<T, kCsrVec>(values + at, w[h]);
              packed[h] = *reinterpret_cast<const uint4*>(index + at);
            } else {
              packed[h] = make_uint4(0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu);
#pragma unroll
              for (int j = 0; j < kCsrVec; ++j) w[h][j] = 0.f;
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint16_t* idx = reinterpret_cast<const uint16_t*>(&packed[h]);
#pragma unroll
            for (int j = 0; j < kCsrVec; ++j) {
              const int c = min(int(idx[j]), kCsrSegCols);  // padding and bad indices read zeros
              float xv[MP];
              load_floats<T, MP>(xs + c * MP, xv);
#pragma unroll
              for (int t = 0; t < MP; ++t) acc[r][t] = fmaf(w[h][j], xv[t], acc[r][t]);
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    const int row = row0 + r;
#pragma unroll
    for (int t = 0; t < MP; ++t) {
      float v = acc[r][t];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == t && row < rows && t0 + t < m)
        y[size_t(t0 + t) * rows + row] = from_f32<T>(v + (bias ? to_f32(bias[row]) : 0.f));
    }
  }
}

template <typename T, int MP, int RPW>
void launch_rows(int64_t m, const void* x, void* y, const void* bias, const CsrCudaWeight& w,
                 cudaStream_t stream) {
  const size_t smem = size_t(kCsrSegCols + 1) * MP * sizeof(T);
  auto kernel = csr_rows_kernel<T, MP, RPW>;
  allow_shared(kernel, smem, "csr_linear (shared memory limit)");
  const int64_t passes = (m + MP - 1) / MP;
  if (passes > 65535) throw std::invalid_argument("csr_linear: m too large for the CUDA row kernel");
  dim3 grid(unsigned((w.rows + kWarps * RPW - 1) / (kWarps * RPW)), unsigned(passes));
  kernel<<<grid, kThreads, smem, stream>>>(
      int(m), static_cast<const T*>(x), static_cast<T*>(y), static_cast<const T*>(bias), int(w.rows),
      int(w.cols), int(w.segs), static_cast<const T*>(w.values), w.index, w.seg_ptr);
  check_launch("csr_linear");
}

template <typename T>
void dispatch(int64_t m, const void* x, void* y, const void* bias, const CsrCudaWeight& w,
              cudaStream_t stream) {
  switch (csr_tokens_per_pass(m, w.dtype)) {
    case 1: return launch_rows<T, 1, 1>(m, x, y, bias, w, stream);
    case 2: return launch_rows<T, 2, 1>(m, x, y, bias, w, stream);
    case 4: return launch_rows<T, 4, 2>(m, x, y, bias, w, stream);
    case 8: return launch_rows<T, 8, 4>(m, x, y, bias, w, stream);
    default:
      if constexpr (sizeof(T) == 2) return launch_rows<T, 16, 4>(m, x, y, bias, w, stream);
      else throw std::logic_error("csr_linear: fp32 passes hold at most 8 tokens");
  }
}

// dense[rows, cols] = W: each warp zeroes its row, then scatters the row's entries.
template <typename T>
__global__ void __launch_bounds__(kThreads)
csr_expand_kernel(T* __restrict__ dense, int rows, int cols, int segs, const T* __restrict__ values,
                  const uint16_t* __restrict__ index, const int32_t* __restrict__ seg_ptr) {
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  T* out = dense + size_t(row) * cols;
  for (int c = lane; c < cols; c += 32) out[c] = from_f32<T>(0.f);
  __syncwarp();
  for (int s = 0; s < segs; ++s) {
    const int end = seg_ptr[size_t(row) * segs + s + 1];
    for (int i = seg_ptr[size_t(row) * segs + s] + lane; i < end; i += 32) {
      const int c = s * kCsrSegCols + int(index[i]);
      if (index[i] < kCsrSegCols && c < cols) out[c] = values[i];
    }
  }
}

}  // namespace

void csr_to_dense(void* dense, const CsrCudaWeight& w, void* stream) {
  if (w.rows == 0 || w.cols == 0) return;
  dim3 grid(unsigned((w.rows + kWarps - 1) / kWarps));
  auto s = static_cast<cudaStream_t>(stream);
  const int rows = int(w.rows), cols = int(w.cols), segs = int(w.segs);
  switch (w.dtype) {
    case DType::f32:
      csr_expand_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<float*>(dense), rows, cols, segs,
          static_cast<const float*>(w.values), w.index, w.seg_ptr); break;
    case DType::f16:
      csr_expand_kernel<__half><<<grid, kThreads, 0, s>>>(static_cast<__half*>(dense), rows, cols, segs,
          static_cast<const __half*>(w.values), w.index, w.seg_ptr); break;
    case DType::bf16:
      csr_expand_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(dense), rows,
          cols, segs, static_cast<const __nv_bfloat16*>(w.values), w.index, w.seg_ptr); break;
  }
  check_launch("csr_to_dense");
}

int csr_tokens_per_pass(int64_t m, DType dtype) {
  const int cap = dtype == DType::f32 ? 8 : 16;  // shared memory: (2048 + 1) * MP * element size
  int mp = 1;
  while (mp < m && mp < cap) mp *= 2;
  return mp;
}

void csr_linear(int64_t m, const void* x, void* y, const void* bias, const CsrCudaWeight& w,
                void* stream) {
  if (m == 0 || w.rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (w.dtype) {
    case DType::f32: return dispatch<float>(m, x, y, bias, w, s);
    case DType::f16: return dispatch<__half>(m, x, y, bias, w, s);
    case DType::bf16: return dispatch<__nv_bfloat16>(m, x, y, bias, w, s);
  }
}

}  // namespace sparseinfer::cuda
