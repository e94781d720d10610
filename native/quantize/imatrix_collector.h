// An importance matrix collected from a graph evaluation callback, as llama-imatrix collects it
// (tools/imatrix/imatrix.cpp, IMatrixCollector::collect_imatrix): for every matrix multiplication
// by a block weight ("blk.*"), the sum over tokens of each input column's squared activation, and
// the number of tokens; for MUL_MAT_ID (mixture of experts) one sum and count per expert.
// Sums are kept in double precision (llama-imatrix: float); the callback shares the pass that
// captures Block Influence, so one forward pass gives both.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ppc {

struct imatrix_entry {
    std::vector<double>  sums;    // n_mat x row length (row length: the weight's ne[0])
    std::vector<int64_t> counts;  // n_mat
};

class imatrix_collector {
public:
    // The eval callback's ask phase: does this node's data go into the matrix?
    static bool wants(const ggml_tensor * t);
    // The eval callback's data phase, for a node wants() accepted. Returns false with error() set
    // when the data cannot be used (non-finite activations, a shape that changed between batches).
    bool collect(const ggml_tensor * t);

    const std::map<std::string, imatrix_entry> & entries() const { return entries_; }
    const std::string & error() const { return error_; }

private:
    bool collect_dense(const std::string & name, const ggml_tensor * t, const char * data);
    bool collect_experts(const std::string & name, const ggml_tensor * t, const char * data);

    std::map<std::string, imatrix_entry> entries_;
    std::vector<char> host_copy_;
    std::vector<char> ids_;
    std::string error_;
};

// "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight" (llama-imatrix's filter_tensor_name).
std::string weight_name(const char * name);

} // namespace ppc
