// Merging a LoRA adapter into its base model: W' = W + scale * (alpha / r) * B A for every adapted
// tensor, in the base tensor's own type (dequantized, added in double precision, requantized);
// every other tensor and all metadata are copied byte for byte.
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

struct lora_merge_result {
    std::vector<std::string> merged;  // base tensors that changed
    float    alpha = 0;
    uint32_t rank  = 0;
    uint64_t bytes_written = 0;
};

lora_merge_result merge_lora(const std::string & base_path, const std::string & adapter_path, const std::string & out_path,
                             float scale, const progress_fn & progress, const cancel_token * cancel);

} // namespace ppc
