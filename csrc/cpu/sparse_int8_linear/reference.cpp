// Scalar sparse int8 kernels: the portable tier and the plainest statement of the layout and the
// math (sparse_int8_linear.h).
#include "common.h"

namespace sparseinfer {
namespace {

// f(slot value, column, row B?) for every slot of the pair's steps in group g.
template <class F>
void for_each_slot(const PackedSparseInt8& w, int64_t p, int64_t g, F&& f) {
  const int64_t wps = w.kp / kSpI8WindowPair;
  int64_t s = w.pair_steps[p];
  for (int64_t wp = 0; wp < spi8_group_end(w, g); ++wp) {
    const int n = w.counts[p * wps + wp];
    if (wp < spi8_group_begin(w, g)) {
      s += n;
      continue;
    }
    for (int i = 0; i < n; ++i, ++s)
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 16; ++j) {
          const int col = static_cast<int>((w.idx[s * 16 + j] >> (4 * h)) & 15);
          f(w.values[s * 32 + 16 * h + j], wp * kSpI8WindowPair + 16 * h + col, j >= 8);
        }
  }
}

void dynamic_ref(const PackedSparseInt8& w, const SpI8QuantActs& x, int64_t m, int64_t p0, int64_t p1,
                 const LinearOutput& out) {
  for (int64_t t = 0; t < m; ++t) {
    const int8_t* q = x.q + t * w.kp;
    for (int64_t p = p0; p < p1; ++p) {
      float sum[2] = {0.f, 0.f};
      for (int64_t g = 0; g < w.groups; ++g) {
        int32_t dot[2] = {0, 0};
        for_each_slot(w, p, g, [&](int8_t v, int64_t col, bool b) { dot[b] += int32_t(v) * q[col]; });
        for (int r = 0; r < 2; ++r) sum[r] = sum[r] + static_cast<float>(dot[r]) * spi8_scale(w, 2 * p + r, g);
      }
      spi8_store_pair(w, p, t, sum[0] * x.scale[t], sum[1] * x.scale[t], out);
    }
  }
}

void weight_only_ref(const PackedSparseInt8& w, const float* x, int64_t m, int64_t p0, int64_t p1,
                     const LinearOutput& out) {
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * w.kp;
    for (int64_t p = p0; p < p1; ++p) {
      double sum[2] = {0.0, 0.0};  // one long sequential sum: double keeps it as accurate as the vector tiers
      for (int64_t g = 0; g < w.groups; ++g) {
        double part[2] = {0.0, 0.0};
        // Only stored weights meet x: a padding slot (value 0) must not turn an inf into NaN.
        for_each_slot(w, p, g, [&](int8_t v, int64_t col, bool b) {
          if (v != 0) part[b] += double(v) * xt[col];
        });
        for (int r = 0; r < 2; ++r) sum[r] += part[r] * spi8_scale(w, 2 * p + r, g);
      }
      spi8_store_pair(w, p, t, static_cast<float>(sum[0]), static_cast<float>(sum[1]), out);
    }
  }
}

}  // namespace

const SpI8Kernels spi8_kernels_reference = {
    .isa = "reference",
    .dynamic = dynamic_ref,
    .weight_only = weight_only_ref,
};

}  // namespace sparseinfer
