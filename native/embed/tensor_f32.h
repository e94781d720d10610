// One GGUF tensor read as F32: any ggml type (F32, F16, BF16, every quantized type) is
// dequantized with ggml's own type traits, in row chunks spread over threads.
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

struct f32_matrix {
    std::string name;
    uint32_t type = 0;          // ggml type of the stored tensor
    int64_t n_rows = 0;         // product of ne[1..3]
    int64_t n_cols = 0;         // ne[0]: the contiguous row length
    uint64_t offset = 0;        // absolute file offset of the tensor's bytes
    uint64_t n_bytes = 0;       // stored size
    std::vector<float> data;    // n_rows x n_cols, row-major
};

// Reads tensor `name` of GGUF file `path` as F32. Throws with the file and tensor named when the
// tensor is missing or its type cannot be dequantized.
f32_matrix read_tensor_f32(const std::string & path, const std::string & name, int n_threads,
                           const progress_fn & progress);

// Number of worker threads to use: `requested` if > 0, else the hardware concurrency.
int embed_threads(int requested);

} // namespace ppc
