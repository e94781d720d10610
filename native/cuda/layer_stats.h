// Block Influence statistics on the GPU: when llama.cpp keeps a block's hidden states in CUDA
// memory, the per-token cosine / angular / contribution terms and their masked per-layer sums are
// computed on the device, so only four numbers per layer cross to the host.
#pragma once

#include "ggml.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ppc {

struct cuda_layer_stats {
    int      device = -1;
    float *  prev = nullptr;      // X_i, device copy
    size_t   prev_cap = 0;        // floats
    double * per_token = nullptr; // 3 x n_tokens
    size_t   per_token_cap = 0;   // tokens
    uint8_t * mask = nullptr;
    size_t   mask_cap = 0;
    double * sums = nullptr;      // 4 doubles: cos, angular, contribution, count
    int64_t  n_embd = 0;
    int64_t  n_tokens = 0;
    ~cuda_layer_stats();
};

// Takes X_0 from a tensor in CUDA memory. Returns false (nothing done) when the tensor is not in
// CUDA memory or not contiguous: the caller then uses the host path.
bool cuda_layer_stats_set_input(cuda_layer_stats * s, const ggml_tensor * t, int64_t n_embd, int64_t n_tokens);

// Takes X_i from the host (`host`, n_embd x n_tokens) onto the device that holds `t`, the next
// block's output. Returns false (nothing done) when t is not in CUDA memory.
bool cuda_layer_stats_upload_input(cuda_layer_stats * s, const ggml_tensor * t, const std::vector<float> & host,
                                   int64_t n_embd, int64_t n_tokens);

// Scores X_{i+1} = t against the held X_i, adds the masked sums to the outputs, and keeps t as the
// next X_i. Returns false when t is not in CUDA memory (caller falls back to the host path).
bool cuda_layer_stats_step(cuda_layer_stats * s, const ggml_tensor * t, const uint8_t * mask,
                           double * cos_sum, double * angular_sum, double * contribution_sum, uint64_t * counted);

// Copies the held X_i to the host (when the next block runs on the CPU).
void cuda_layer_stats_get_input(const cuda_layer_stats * s, std::vector<float> & dst);

} // namespace ppc
