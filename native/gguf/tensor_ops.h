// Tensor-level helpers on ggml types: quantize/dequantize buffers, and streaming statistics over
// a GGUF file's tensors (used by the magnitude pruning strategy).
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

// Quantizes n_rows x n_per_row floats into `type` (ggml_quantize_chunk); F32/F16/BF16 included.
std::vector<uint8_t> quantize_rows(uint32_t type, const float * src, int64_t n_rows, int64_t n_per_row);
// Dequantizes n elements of `type` from src.
std::vector<float> dequantize(uint32_t type, const uint8_t * src, size_t src_size, int64_t n);

struct tensor_abs_stats {
    std::string name;
    double sum_abs = 0;   // sum of |w| in double precision
    uint64_t n = 0;
};

// Sum of |w| for each named tensor of a GGUF file, dequantizing row chunks on the fly.
std::vector<tensor_abs_stats> tensor_abs_sums(const std::string & path, const std::vector<std::string> & names,
                                              const progress_fn & progress);

} // namespace ppc
