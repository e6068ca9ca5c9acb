// 2:4 kernels written once over a SIMD trait `Simd` (see avx2.cpp, avx512.cpp), which supplies:
//   V, L (fp32 lanes), zero, load, store, fma(a, b, c) = a*b + c, add, reduce,
//   load_vals<DT>(vals, off) (L values), bcast_val<DT>(vals, off),
//   Chunk, load_chunk(x32) (32 columns of x), Index, index(meta, part),
//   pick(chunk, index, part) = the x value under each of kept values [part*L, part*L + L).
// Include inside `namespace sparseinfer { namespace { ... } }` after defining Simd.

using V = typename Simd::V;
constexpr int L = Simd::L;
constexpr int kParts = int(kS24ChunkKept) / L;  // vectors per chunk of kept values
constexpr int kMaxTokenGroup = 4;               // tokens per pass in the row kernel

// Row kernel, small m: x kept as dense chunks in registers; each 16 kept values select their
// x lanes with a permute driven by the 2-bit metadata ("load sparse, pick, FMA").
// Rows r..r+RB-1 lie in one quad, so the weight is read as one sequential stream.
template <DType DT, int RB, int TB>
void rows_tile(const PackedSparse24& w, const float* x, int64_t xs, int64_t r, float* res) {
  V acc[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) acc[i][t] = Simd::zero();
  for (int64_t c = 0; c < w.chunks; ++c) {
    typename Simd::Chunk xc[TB];
    for (int t = 0; t < TB; ++t) xc[t] = Simd::load_chunk(x + t * xs + c * kS24ChunkCols);
    const int64_t cell = s24_cell(w.chunks, r, c);
    for (int i = 0; i < RB; ++i) {
      const uint32_t meta = w.meta[cell + i];
      for (int q = 0; q < kParts; ++q) {
        const typename Simd::Index id = Simd::index(meta, q);
        const V v = Simd::template load_vals<DT>(w.values, (cell + i) * kS24ChunkKept + q * L);
        for (int t = 0; t < TB; ++t) acc[i][t] = Simd::fma(v, Simd::pick(xc[t], id, q), acc[i][t]);
      }
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) res[i * kMaxTokenGroup + t] = Simd::reduce(acc[i][t]);
}

template <DType DT, int TB>
void rows_group(const PackedSparse24& w, const float* x, int64_t xs, int64_t r0, int64_t r1,
                int64_t t0, const LinearOutput& out) {
  // Accumulators + x chunks must fit the register file (32 zmm, 16 ymm).
  constexpr int RB = (L == 16 || TB <= 2) ? 4 : 2;
  float res[RB * kMaxTokenGroup];
  for (int64_t r = r0; r < r1; r += RB) {  // padding rows of the last quad are computed, not stored
    rows_tile<DT, RB, TB>(w, x, xs, r, res);
    store_block(w.rows, out, r, std::min<int64_t>(RB, r1 - r), t0, TB, res, kMaxTokenGroup, 1);
  }
}

// Token groups run inside each row quad, so a quad's weights come from memory once per call.
template <DType DT>
void rows_dt(const PackedSparse24& w, const float* x, int64_t xs, int64_t m, int64_t r0,
             int64_t r1, const LinearOutput& out) {
  for (int64_t rq = r0; rq < r1; rq += kS24RowQuad) {
    const int64_t rq1 = std::min<int64_t>(r1, rq + kS24RowQuad);
    for (int64_t t0 = 0; t0 < m; t0 += kMaxTokenGroup) {
      const float* xg = x + t0 * xs;
      switch (m - t0 < kMaxTokenGroup ? m - t0 : kMaxTokenGroup) {
        case 1: rows_group<DT, 1>(w, xg, xs, rq, rq1, t0, out); break;
        case 2: rows_group<DT, 2>(w, xg, xs, rq, rq1, t0, out); break;
        case 3: rows_group<DT, 3>(w, xg, xs, rq, rq1, t0, out); break;
        default: rows_group<DT, 4>(w, xg, xs, rq, rq1, t0, out); break;
      }
    }
  }
}

void rows(const PackedSparse24& w, const float* x, int64_t xs, int64_t m, int64_t r0, int64_t r1,
          const LinearOutput& out) {
  switch (w.dtype) {
    case DType::f32: return rows_dt<DType::f32>(w, x, xs, m, r0, r1, out);
    case DType::bf16: return rows_dt<DType::bf16>(w, x, xs, m, r0, r1, out);
    case DType::f16: return rows_dt<DType::f16>(w, x, xs, m, r0, r1, out);
  }
}

// Token path (XNNPACK-style): broadcast one kept weight, FMA a row of VEC*L tokens of x^T.
// Blocking: columns are cut into slabs whose x^T (256 KB) stays in L2 while every row of the
// range passes over it (partial sums wait in a per-thread buffer), and each slab into panels
// whose x^T (16 KB) stays in L1 across a block of rows.
template <int VEC>
constexpr int64_t panel_chunks() { return VEC >= 8 ? 2 : 8 / VEC; }
template <int VEC>
constexpr int64_t slab_chunks() { return (int64_t(256) << 10) / (kS24ChunkCols * VEC * L * 4); }
template <int VEC>
constexpr int log2_column_bytes() {  // x^T column = VEC vectors of L floats
  return __builtin_ctz(unsigned(VEC * L * sizeof(float)));
}

template <DType DT, int VEC>
void tokens_tile(const PackedSparse24& w, const float* xt, int64_t t0, int64_t mt, int64_t r0,
                 int64_t r1, const LinearOutput& out) {
  constexpr int T = VEC * L;
  constexpr int S = VEC >= 8 ? 1 : 8 / VEC;  // 8 independent accumulators cover FMA latency x 2 ports
  constexpr int kShift = log2_column_bytes<VEC>();
  constexpr int64_t kPanel = panel_chunks<VEC>();
  constexpr int64_t kSlab = slab_chunks<VEC>();
  const int64_t rows_padded = (r1 - r0 + kS24RowQuad - 1) / kS24RowQuad * kS24RowQuad;
  float* partial = scratch_floats(kKernelScratch, rows_padded * T);  // [rows_padded][T]
  for (int64_t k0 = 0; k0 < w.chunks; k0 += kSlab) {
    const int64_t k1 = std::min<int64_t>(w.chunks, k0 + kSlab);
    for (int64_t rb = r0; rb < r1; rb += kS24RowBlock) {
      const int64_t nr = std::min<int64_t>(kS24RowBlock, r1 - rb);
      const int64_t nr_padded = (nr + kS24RowQuad - 1) / kS24RowQuad * kS24RowQuad;
      float* acc = partial + (rb - r0) * T;
      if (k0 == 0)
        for (int64_t i = 0; i < nr_padded * T; ++i) acc[i] = 0.f;
      for (int64_t c0 = k0; c0 < k1; c0 += kPanel) {
        const int64_t c1 = std::min<int64_t>(k1, c0 + kPanel);
        for (int64_t r = 0; r < nr_padded; ++r) {
          V a[S][VEC];
          for (int v = 0; v < VEC; ++v) {
            a[0][v] = Simd::load(acc + r * T + v * L);
            for (int s = 1; s < S; ++s) a[s][v] = Simd::zero();
          }
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t cell = s24_cell(w.chunks, rb + r, c);
            const uint32_t meta = w.meta[cell];
            const char* xc = reinterpret_cast<const char*>(xt + c * kS24ChunkCols * T);
#pragma GCC unroll 16
            for (int j = 0; j < int(kS24ChunkKept); ++j) {
              // Byte offset of slot j's column: its 2-bit field rotated straight into place.
              const uint32_t pos = std::rotr(meta, (2 * j - kShift) & 31) & (3u << kShift);
              const float* xr = reinterpret_cast<const float*>(xc + ((4 * (j / 2)) << kShift) + pos);
              const V wv = Simd::template bcast_val<DT>(w.values, cell * kS24ChunkKept + j);
              for (int v = 0; v < VEC; ++v) a[j % S][v] = Simd::fma(wv, Simd::load(xr + v * L), a[j % S][v]);
            }
          }
          for (int v = 0; v < VEC; ++v) {
            V sum = a[0][v];
            for (int s = 1; s < S; ++s) sum = Simd::add(sum, a[s][v]);
            Simd::store(acc + r * T + v * L, sum);
          }
        }
      }
      if (k1 == w.chunks) store_block(w.rows, out, rb, nr, t0, mt, acc, T, 1);
    }
  }
}

template <DType DT>
void tokens_dt(const PackedSparse24& w, const float* xt, int vecs, int64_t t0, int64_t mt,
               int64_t r0, int64_t r1, const LinearOutput& out) {
  switch (vecs) {
    case 1: return tokens_tile<DT, 1>(w, xt, t0, mt, r0, r1, out);
    case 2: return tokens_tile<DT, 2>(w, xt, t0, mt, r0, r1, out);
    case 4: return tokens_tile<DT, 4>(w, xt, t0, mt, r0, r1, out);
    default: return tokens_tile<DT, 8>(w, xt, t0, mt, r0, r1, out);
  }
}

void tokens(const PackedSparse24& w, const float* xt, int vecs, int64_t t0, int64_t mt, int64_t r0,
            int64_t r1, const LinearOutput& out) {
  switch (w.dtype) {
    case DType::f32: return tokens_dt<DType::f32>(w, xt, vecs, t0, mt, r0, r1, out);
    case DType::bf16: return tokens_dt<DType::bf16>(w, xt, vecs, t0, mt, r0, r1, out);
    case DType::f16: return tokens_dt<DType::f16>(w, xt, vecs, t0, mt, r0, r1, out);
  }
}
