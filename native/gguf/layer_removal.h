// Structured pruning by GGUF surgery: removes whole blocks (blk.N.*) from a model file, renumbers
// the rest, and rewrites every metadata value that depends on the layer count or on layer indices.
// Kept tensors and untouched metadata are copied byte for byte; memory use does not depend on the
// model's size (tensor data moves file to file, in the kernel where the filesystem allows).
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

struct layer_removal_result {
    uint32_t n_layer_before = 0;
    uint32_t n_layer_after  = 0;
    std::vector<uint32_t> removed;        // indices in the input's numbering, ascending
    std::vector<uint32_t> kept;           // indices in the input's numbering, ascending
    std::vector<uint32_t> original_kept;  // indices in the first unpruned ancestor's numbering
    uint64_t bytes_written  = 0;
    std::vector<std::string> metadata_changed;  // keys rewritten or added
};

// Removes `layers` from `in_path`, writing `out_path` atomically. Throws with a message naming the
// file and the problem on bad input; then no output file exists.
layer_removal_result remove_layers(const std::string & in_path, const std::string & out_path,
                                   const std::vector<int64_t> & layers, const progress_fn & progress,
                                   const cancel_token * cancel);

} // namespace ppc
