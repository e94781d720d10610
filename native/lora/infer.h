// Logits through llama.cpp's ordinary inference path (llama_decode) with LoRA adapters loaded from
// their files: what any llama.cpp program computes with the adapter, to check trained adapters against.
#pragma once

#include "llama.h"

#include <string>
#include <vector>

namespace ppc {

struct lora_file {
    std::string path;
    float scale = 1.0f;
};

// Logits of every position of one sequence from position 0: tokens.size() x n_vocab, row-major.
std::vector<float> lora_inference_logits(const std::string & model_path, const std::vector<lora_file> & adapters,
                                         const std::vector<llama_token> & tokens, int32_t n_threads, int32_t n_gpu_layers);

} // namespace ppc
