// CSR kernels written once over a SIMD trait `Simd` (see avx2.cpp, avx512.cpp), which supplies:
//   V, L (fp32 lanes), zero, load, fma(a, b, c) = a*b + c, add, reduce,
//   load_vals_tail<DT>(vals, off, n), gather_tail(base, u8 idx, n)  (lanes >= n are zero),
//   expand16<DT>(vals, off, word16, V out[16 / L])  (bit j of word -> lane j, next value each),
//   Panel, load_panel(x panel), gather_panel(panel, u8 idx, n)  (gather from one 128-col panel),
//   bcast_val<DT>(vals, off).
// Include inside `namespace sparseinfer { namespace { ... } }` after defining Simd.

using V = typename Simd::V;
constexpr int L = Simd::L;
constexpr int kMaxGroup = 4;  // tokens per pass in the row kernels

// Row kernels, m small: accumulate a vector per (row, token) across panels, reduce once.
template <DType DT, int TB>
void rows_gather_group(const PackedCsr& w, const float* x, int64_t xs, int64_t b0, int64_t b1,
                       int64_t t0, const LinearOutput& out) {
  alignas(64) V acc[kRowBlock][TB];
  alignas(64) float res[kRowBlock * TB];
  for (int64_t b = b0; b < b1; ++b) {
    RowBlock rb = row_block(w, b);
    for (int64_t r = 0; r < rb.nr; ++r)
      for (int t = 0; t < TB; ++t) acc[r][t] = Simd::zero();
    for (int64_t p = 0; p < w.panels; ++p) {
      int64_t off = panel_offset(w, p, b);
      const uint8_t* cnt = w.counts + p * w.rows + rb.r0;
      const float* xp = x + p * kPanelCols;
      const typename Simd::Panel panel = Simd::load_panel(xp);  // m=1: x panel kept in registers
      for (int64_t r = 0; r < rb.nr; ++r) {
        int c = cnt[r];
        V a[TB];
        for (int t = 0; t < TB; ++t) a[t] = acc[r][t];
        for (int i = 0; i < c; i += L) {
          int n = c - i < L ? c - i : L;
          V v = Simd::template load_vals_tail<DT>(w.values, off + i, n);
          if constexpr (TB == 1) {
            a[0] = Simd::fma(v, Simd::gather_panel(panel, w.local_idx + off + i, n), a[0]);
          } else {
            for (int t = 0; t < TB; ++t)
              a[t] = Simd::fma(v, Simd::gather_tail(xp + t * xs, w.local_idx + off + i, n), a[t]);
          }
        }
        for (int t = 0; t < TB; ++t) acc[r][t] = a[t];
        off += c;
      }
    }
    for (int64_t r = 0; r < rb.nr; ++r)
      for (int t = 0; t < TB; ++t) res[r * TB + t] = Simd::reduce(acc[r][t]);
    store_block(w, out, rb.r0, rb.nr, t0, TB, res, TB, 1);
  }
}

// A row's 128-bit panel mask (m0: columns 0-63, m1: 64-127) and the offset of each 16-column
// chunk's first value, computed independently (no serial popcount chain). False (and the error
// reported) when the mask's popcount is not the row's count: expanding would read outside the
// row's values.
inline bool row_chunks(const PackedCsr& w, const uint16_t* mask, int c, uint64_t& m0, uint64_t& m1,
                       int64_t start[8]) {
  std::memcpy(&m0, mask, 8);
  std::memcpy(&m1, mask + 4, 8);
  const int lo = __builtin_popcountll(m0);
  if (lo + __builtin_popcountll(m1) != c) {
    report_mask_error(w);
    return false;
  }
  start[0] = 0;
  start[1] = __builtin_popcountll(m0 & 0xffffull);
  start[2] = __builtin_popcountll(m0 & 0xffffffffull);
  start[3] = __builtin_popcountll(m0 & 0xffffffffffffull);
  start[4] = lo;
  start[5] = lo + __builtin_popcountll(m1 & 0xffffull);
  start[6] = lo + __builtin_popcountll(m1 & 0xffffffffull);
  start[7] = lo + __builtin_popcountll(m1 & 0xffffffffffffull);
  return true;
}

// "Load as sparse, compute as dense": expand each 16-column chunk of a row into dense lanes.
template <DType DT, int TB>
void rows_expand_group(const PackedCsr& w, const float* x, int64_t xs, int64_t b0, int64_t b1,
                       int64_t t0, const LinearOutput& out) {
  constexpr int kVPC = 16 / L;                 // vectors per 16-column chunk
  constexpr int kVPP = int(kPanelCols) / L;    // vectors per panel
  alignas(64) V acc[kRowBlock][TB];
  alignas(64) float res[kRowBlock * TB];
  for (int64_t b = b0; b < b1; ++b) {
    RowBlock rb = row_block(w, b);
    for (int64_t r = 0; r < rb.nr; ++r)
      for (int t = 0; t < TB; ++t) acc[r][t] = Simd::zero();
    for (int64_t p = 0; p < w.panels; ++p) {
      int64_t off = panel_offset(w, p, b);
      const uint8_t* cnt = w.counts + p * w.rows + rb.r0;
      const uint16_t* masks = w.bitmask + (p * w.rows + rb.r0) * kMaskWordsPerPanel;
      const float* xp = x + p * kPanelCols;
      V xr[TB == 1 ? kVPP : 1];
      if constexpr (TB == 1)
        for (int q = 0; q < kVPP; ++q) xr[q] = Simd::load(xp + q * L);
      for (int64_t r = 0; r < rb.nr; ++r) {
        int c = cnt[r];
        if (c == 0) continue;
        uint64_t m0, m1;
        int64_t start[8];
        if (!row_chunks(w, masks + r * kMaskWordsPerPanel, c, m0, m1, start)) {
          off += c;
          continue;
        }
        V a[2][TB];
        for (int t = 0; t < TB; ++t) {
          a[0][t] = acc[r][t];
          a[1][t] = Simd::zero();
        }
        for (int j = 0; j < 8; ++j) {
          uint16_t word = static_cast<uint16_t>((j < 4 ? m0 : m1) >> (16 * (j & 3)));
          V e[kVPC];
          Simd::template expand16<DT>(w.values, off + start[j], word, e);
          for (int q = 0; q < kVPC; ++q) {
            for (int t = 0; t < TB; ++t) {
              V xv;
              if constexpr (TB == 1) xv = xr[j * kVPC + q];
              else xv = Simd::load(xp + t * xs + j * 16 + q * L);
              a[j & 1][t] = Simd::fma(e[q], xv, a[j & 1][t]);
            }
          }
        }
        for (int t = 0; t < TB; ++t) acc[r][t] = Simd::add(a[0][t], a[1][t]);
        off += c;
      }
    }
    for (int64_t r = 0; r < rb.nr; ++r)
      for (int t = 0; t < TB; ++t) res[r * TB + t] = Simd::reduce(acc[r][t]);
    store_block(w, out, rb.r0, rb.nr, t0, TB, res, TB, 1);
  }
}

// m = 1, streaming order: panel by panel over the task's whole row range, so each panel's
// non-zeros (stored panel-major, then by row) are one contiguous read instead of a few KB per
// (row block, panel) that the hardware prefetchers start over on. One vector partial sum per row
// waits in scratch between panels. panel_rows(p) gives the row step of panel p:
// a = step(r, off, c, a) adds row r's c non-zeros starting at off (r counts from b0's first row).
template <class PanelRows>
void rows_streaming_m1(const PackedCsr& w, int64_t b0, int64_t b1, const LinearOutput& out,
                       PanelRows&& panel_rows) {
  const int64_t r0 = b0 * kRowBlock;
  const int64_t nr = std::min(w.rows, b1 * kRowBlock) - r0;
  float* acc = scratch_floats(kKernelScratch, nr * (L + 1));
  float* res = acc + nr * L;
  for (int64_t r = 0; r < nr; ++r) Simd::store(acc + r * L, Simd::zero());
  for (int64_t p = 0; p < w.panels; ++p) {
    const uint8_t* cnt = w.counts + p * w.rows + r0;
    const auto step = panel_rows(p);
    for (int64_t b = b0; b < b1; ++b) {
      int64_t off = panel_offset(w, p, b);
      const int64_t rb_end = std::min(nr, (b - b0 + 1) * kRowBlock);
      for (int64_t r = (b - b0) * kRowBlock; r < rb_end; ++r) {
        const int c = cnt[r];
        Simd::store(acc + r * L, step(r, off, c, Simd::load(acc + r * L)));
        off += c;
      }
    }
  }
  for (int64_t r = 0; r < nr; ++r) res[r] = Simd::reduce(Simd::load(acc + r * L));
  store_block(w, out, r0, nr, 0, 1, res, 1, 1);
}

// Gather x by index, L lanes a step. (Tried: every row of a row block running its longest row's
// step count, masked, to avoid the trip-count mispredictions: slower at 70% and 90% on Zen 4.)
template <DType DT>
void rows_gather_streaming(const PackedCsr& w, const float* x, int64_t b0, int64_t b1,
                           const LinearOutput& out) {
  rows_streaming_m1(w, b0, b1, out, [&](int64_t p) {
    const typename Simd::Panel panel = Simd::load_panel(x + p * kPanelCols);
    return [&w, panel](int64_t, int64_t off, int c, V a) {
      for (int i = 0; i < c; i += L) {
        const int n = c - i < L ? c - i : L;
        a = Simd::fma(Simd::template load_vals_tail<DT>(w.values, off + i, n),
                      Simd::gather_panel(panel, w.local_idx + off + i, n), a);
      }
      return a;
    };
  });
}

// With a bitmask: each row's 16-column chunks expanded into dense lanes meet x straight from L1
// (a panel of x does not fit AVX2's registers), four independent partial sums per row.
template <DType DT>
void rows_expand_streaming(const PackedCsr& w, const float* x, int64_t b0, int64_t b1,
                           const LinearOutput& out) {
  constexpr int kVPC = 16 / L;  // vectors per 16-column chunk
  const uint16_t* first_mask = w.bitmask + b0 * kRowBlock * kMaskWordsPerPanel;
  rows_streaming_m1(w, b0, b1, out, [&](int64_t p) {
    const uint16_t* masks = first_mask + p * w.rows * kMaskWordsPerPanel;
    const float* xp = x + p * kPanelCols;
    return [&w, masks, xp](int64_t r, int64_t off, int c, V acc) {
      uint64_t m0, m1;
      int64_t start[8];
      if (!row_chunks(w, masks + r * kMaskWordsPerPanel, c, m0, m1, start)) return acc;
      V a[4] = {acc, Simd::zero(), Simd::zero(), Simd::zero()};
      for (int j = 0; j < 8; ++j) {
        const uint16_t word = static_cast<uint16_t>((j < 4 ? m0 : m1) >> (16 * (j & 3)));
        V e[kVPC];
        Simd::template expand16<DT>(w.values, off + start[j], word, e);
        for (int q = 0; q < kVPC; ++q)
          a[(j * kVPC + q) & 3] = Simd::fma(e[q], Simd::load(xp + j * 16 + q * L), a[(j * kVPC + q) & 3]);
      }
      return Simd::add(Simd::add(a[0], a[1]), Simd::add(a[2], a[3]));
    };
  });
}

template <template <DType, int> class Group, DType DT>
struct RowsByGroup {
  static void run(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                  int64_t b1, const LinearOutput& out) {
    for (int64_t t0 = 0; t0 < m; t0 += kMaxGroup) {
      const float* xg = x + t0 * xs;
      switch (m - t0 < kMaxGroup ? m - t0 : kMaxGroup) {
        case 1: Group<DT, 1>::run(w, xg, xs, b0, b1, t0, out); break;
        case 2: Group<DT, 2>::run(w, xg, xs, b0, b1, t0, out); break;
        case 3: Group<DT, 3>::run(w, xg, xs, b0, b1, t0, out); break;
        default: Group<DT, 4>::run(w, xg, xs, b0, b1, t0, out); break;
      }
    }
  }
};

template <DType DT, int TB>
struct GatherGroup {
  static void run(const PackedCsr& w, const float* x, int64_t xs, int64_t b0, int64_t b1,
                  int64_t t0, const LinearOutput& out) {
    rows_gather_group<DT, TB>(w, x, xs, b0, b1, t0, out);
  }
};
template <DType DT, int TB>
struct ExpandGroup {
  static void run(const PackedCsr& w, const float* x, int64_t xs, int64_t b0, int64_t b1,
                  int64_t t0, const LinearOutput& out) {
    rows_expand_group<DT, TB>(w, x, xs, b0, b1, t0, out);
  }
};

template <template <DType, int> class Group>
void rows_by_dtype(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                   int64_t b1, const LinearOutput& out) {
  switch (w.dtype) {
    case DType::f32: return RowsByGroup<Group, DType::f32>::run(w, x, xs, m, b0, b1, out);
    case DType::bf16: return RowsByGroup<Group, DType::bf16>::run(w, x, xs, m, b0, b1, out);
    case DType::f16: return RowsByGroup<Group, DType::f16>::run(w, x, xs, m, b0, b1, out);
  }
}

void rows_gather(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                 int64_t b1, const LinearOutput& out) {
  rows_by_dtype<GatherGroup>(w, x, xs, m, b0, b1, out);
}
void rows_expand(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                 int64_t b1, const LinearOutput& out) {
  rows_by_dtype<ExpandGroup>(w, x, xs, m, b0, b1, out);
}

// Token path (XNNPACK-style): broadcast one weight, FMA a row of VEC*L tokens of x^T.
template <DType DT, int VEC>
void tokens_tile(const PackedCsr& w, const float* xt, int64_t t0, int64_t mt, int64_t b0,
                 int64_t b1, const LinearOutput& out) {
  constexpr int T = VEC * L;
  constexpr int S = VEC >= 2 ? 2 : 4;  // independent accumulator sets hide FMA latency
  alignas(64) float acc[kRowBlock * T];
  for (int64_t b = b0; b < b1; ++b) {
    RowBlock rb = row_block(w, b);
    for (int64_t i = 0; i < rb.nr * T; ++i) acc[i] = 0.f;
    for (int64_t p = 0; p < w.panels; ++p) {
      int64_t off = panel_offset(w, p, b);
      const uint8_t* cnt = w.counts + p * w.rows + rb.r0;
      const float* xp = xt + p * kPanelCols * T;
      for (int64_t r = 0; r < rb.nr; ++r) {
        int c = cnt[r];
        if (c == 0) continue;
        const uint8_t* idx = w.local_idx + off;
        V a[S][VEC];
        for (int v = 0; v < VEC; ++v) {
          a[0][v] = Simd::load(acc + r * T + v * L);
          for (int s = 1; s < S; ++s) a[s][v] = Simd::zero();
        }
        int i = 0;
        for (; i + S <= c; i += S) {
          for (int s = 0; s < S; ++s) {
            V wv = Simd::template bcast_val<DT>(w.values, off + i + s);
            const float* xr = xp + static_cast<int64_t>(idx[i + s]) * T;
            for (int v = 0; v < VEC; ++v) a[s][v] = Simd::fma(wv, Simd::load(xr + v * L), a[s][v]);
          }
        }
        for (; i < c; ++i) {
          V wv = Simd::template bcast_val<DT>(w.values, off + i);
          const float* xr = xp + static_cast<int64_t>(idx[i]) * T;
          for (int v = 0; v < VEC; ++v) a[0][v] = Simd::fma(wv, Simd::load(xr + v * L), a[0][v]);
        }
        for (int v = 0; v < VEC; ++v) {
          V sum = a[0][v];
          for (int s = 1; s < S; ++s) sum = Simd::add(sum, a[s][v]);
          Simd::store(acc + r * T + v * L, sum);
        }
        off += c;
      }
    }
    store_block(w, out, rb.r0, rb.nr, t0, mt, acc, T, 1);
  }
}

template <DType DT>
void tokens_dt(const PackedCsr& w, const float* xt, int vecs, int64_t t0, int64_t mt, int64_t b0,
               int64_t b1, const LinearOutput& out) {
  switch (vecs) {
    case 1: return tokens_tile<DT, 1>(w, xt, t0, mt, b0, b1, out);
    case 2: return tokens_tile<DT, 2>(w, xt, t0, mt, b0, b1, out);
    case 3: return tokens_tile<DT, 3>(w, xt, t0, mt, b0, b1, out);
    default: return tokens_tile<DT, 4>(w, xt, t0, mt, b0, b1, out);
  }
}

void tokens(const PackedCsr& w, const float* xt, int vecs, int64_t t0, int64_t mt, int64_t b0,
            int64_t b1, const LinearOutput& out) {
  switch (w.dtype) {
    case DType::f32: return tokens_dt<DType::f32>(w, xt, vecs, t0, mt, b0, b1, out);
    case DType::bf16: return tokens_dt<DType::bf16>(w, xt, vecs, t0, mt, b0, b1, out);
    case DType::f16: return tokens_dt<DType::f16>(w, xt, vecs, t0, mt, b0, b1, out);
  }
}
