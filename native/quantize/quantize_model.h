// Model quantization by llama.cpp's own quantizer (llama_model_quantize from the bundled libllama):
// the same tensor-type choices, block formats and metadata as the llama-quantize tool of the same
// source, so that a run with the same options gives a byte-identical file. This file adds only
// what a library call needs around it: input checks with prune's messages, an atomic output,
// progress from the quantizer's per-tensor log lines, and errors that say what went wrong.
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

struct quantize_type {
    const char * name;        // lower case, as --type takes it ("q4_k_m")
    int32_t      ftype;       // llama_ftype
    const char * description;
};

// Every type llama-quantize offers (except COPY), in its order.
const std::vector<quantize_type> & quantize_types();

// One metadata value written into the output, as `llama-quantize --override-kv KEY=TYPE:VALUE`.
struct quantize_kv {
    enum kind { INT, FLOAT, BOOL, STR } tag = STR;
    std::string key;
    int64_t     i = 0;
    double      f = 0;
    bool        b = false;
    std::string s;
};

// A tensor's importance values (mean squared activation per input column, per expert).
struct imatrix_values {
    std::string        name;
    std::vector<float> values;
};

struct quantize_options {
    std::string type;                       // a quantize_types() name, any case
    int32_t     threads = 0;                // <= 0: hardware concurrency (as llama-quantize)
    bool        allow_requantize = false;
    bool        pure = false;
    std::vector<imatrix_values> imatrix;    // empty: no importance matrix
    std::vector<quantize_kv>    overrides;  // in order; llama-quantize appends its imatrix keys after --override-kv
};

struct quantize_result {
    std::string type;
    int32_t     ftype = 0;
    uint32_t    tensors = 0;
    uint64_t    bytes_in = 0;
    uint64_t    bytes_out = 0;
};

// Quantizes `in_path` into `out_path` (atomically). Throws with a message naming the file and the
// problem; then no output file exists. Progress counts tensors.
quantize_result quantize_model(const std::string & in_path, const std::string & out_path,
                               const quantize_options & options, const progress_fn & progress);

} // namespace ppc
