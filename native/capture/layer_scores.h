// Per-layer similarity of the hidden states entering and leaving each transformer block, captured
// through llama.cpp's graph evaluation callback while the model runs (ShortGPT's Block Influence).
//
// X_0 is the token embedding that enters block 0 (llama.cpp's "embd", or "inp_scaled" where an
// architecture scales it afterwards); X_{i+1} is block i's output ("l_out-i"). For every counted
// token t the capture accumulates, per block i and in double precision:
//   cos_i,t          = <X_i,t, X_{i+1},t> / (|X_i,t| |X_{i+1},t|)
//   angular_i,t      = arccos(cos_i,t) / pi
//   contribution_i,t = |X_{i+1},t - X_i,t| / |X_i,t|
// Only one block's input is held at a time; nothing grows with the number of sequences.
#pragma once

#include "capture/model.h"
#include "common/async.h"
#include "quantize/imatrix_collector.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ppc {

struct scored_sequence {
    std::vector<llama_token> tokens;
    std::vector<uint8_t>     mask;   // 1: this position counts; empty: every position counts
};

struct layer_score_sums {
    uint32_t n_layer  = 0;
    uint64_t n_tokens = 0;                  // counted positions
    std::vector<double> cos_sum;            // per layer
    std::vector<double> angular_sum;
    std::vector<double> contribution_sum;
    uint64_t device_steps = 0;              // block scorings done by the CUDA kernel (CUDA builds)
    std::map<std::string, imatrix_entry> imatrix;  // with params.imatrix: the importance matrix of the same pass
};

struct layer_score_params {
    uint32_t max_batch_tokens = 512;        // tokens per decode (several sequences share one)
    uint32_t max_sequences    = 16;         // sequences per decode
    bool     capture          = true;       // false: the same decodes without the callback (timing baseline)
    bool     imatrix          = false;      // also collect an importance matrix (every position counts, masks aside)
};

// Runs every sequence through the model (batched) and accumulates the per-layer sums.
layer_score_sums compute_layer_scores(llama_session & session, const std::vector<scored_sequence> & seqs,
                                      const layer_score_params & params, const progress_fn & progress);

// Every block boundary's hidden states for one sequence, (n_layer + 1) x n_tokens x n_embd floats,
// for independent checks of the scores.
std::vector<float> dump_hidden_states(llama_session & session, const std::vector<llama_token> & tokens);

} // namespace ppc
