#include "quantize/quantize_model.h"

#include "capture/model.h"
#include "common/atomic_file.h"
#include "gguf/gguf_file.h"

#include "llama.h"

#include <sys/stat.h>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace ppc {

const std::vector<quantize_type> & quantize_types() {
    // llama-quantize's QUANT_OPTIONS (tools/quantize/quantize.cpp), lower-cased, aliases kept.
    static const std::vector<quantize_type> types = {
        {"q1_0", LLAMA_FTYPE_MOSTLY_Q1_0, "1.125 bpw"},
        {"q2_0", LLAMA_FTYPE_MOSTLY_Q2_0, "2.25 bpw (group 64)"},
        {"q4_0", LLAMA_FTYPE_MOSTLY_Q4_0, "4.34G, +0.4685 ppl @ Llama-3-8B"},
        {"q4_1", LLAMA_FTYPE_MOSTLY_Q4_1, "4.78G, +0.4511 ppl @ Llama-3-8B"},
        {"mxfp4_moe", LLAMA_FTYPE_MOSTLY_MXFP4_MOE, "MXFP4 MoE"},
        {"q5_0", LLAMA_FTYPE_MOSTLY_Q5_0, "5.21G, +0.1316 ppl @ Llama-3-8B"},
        {"q5_1", LLAMA_FTYPE_MOSTLY_Q5_1, "5.65G, +0.1062 ppl @ Llama-3-8B"},
        {"iq2_xxs", LLAMA_FTYPE_MOSTLY_IQ2_XXS, "2.06 bpw (needs an importance matrix)"},
        {"iq2_xs", LLAMA_FTYPE_MOSTLY_IQ2_XS, "2.31 bpw (needs an importance matrix)"},
        {"iq2_s", LLAMA_FTYPE_MOSTLY_IQ2_S, "2.5 bpw"},
        {"iq2_m", LLAMA_FTYPE_MOSTLY_IQ2_M, "2.7 bpw"},
        {"iq1_s", LLAMA_FTYPE_MOSTLY_IQ1_S, "1.56 bpw (needs an importance matrix)"},
        {"iq1_m", LLAMA_FTYPE_MOSTLY_IQ1_M, "1.75 bpw (needs an importance matrix)"},
        {"tq1_0", LLAMA_FTYPE_MOSTLY_TQ1_0, "1.69 bpw ternarization"},
        {"tq2_0", LLAMA_FTYPE_MOSTLY_TQ2_0, "2.06 bpw ternarization"},
        {"q2_k", LLAMA_FTYPE_MOSTLY_Q2_K, "2.96G, +3.5199 ppl @ Llama-3-8B"},
        {"q2_k_s", LLAMA_FTYPE_MOSTLY_Q2_K_S, "2.96G, +3.1836 ppl @ Llama-3-8B"},
        {"iq3_xxs", LLAMA_FTYPE_MOSTLY_IQ3_XXS, "3.06 bpw"},
        {"iq3_s", LLAMA_FTYPE_MOSTLY_IQ3_S, "3.44 bpw"},
        {"iq3_m", LLAMA_FTYPE_MOSTLY_IQ3_M, "3.66 bpw mix"},
        {"q3_k", LLAMA_FTYPE_MOSTLY_Q3_K_M, "alias for q3_k_m"},
        {"iq3_xs", LLAMA_FTYPE_MOSTLY_IQ3_XS, "3.3 bpw"},
        {"q3_k_s", LLAMA_FTYPE_MOSTLY_Q3_K_S, "3.41G, +1.6321 ppl @ Llama-3-8B"},
        {"q3_k_m", LLAMA_FTYPE_MOSTLY_Q3_K_M, "3.74G, +0.6569 ppl @ Llama-3-8B"},
        {"q3_k_l", LLAMA_FTYPE_MOSTLY_Q3_K_L, "4.03G, +0.5562 ppl @ Llama-3-8B"},
        {"iq4_nl", LLAMA_FTYPE_MOSTLY_IQ4_NL, "4.50 bpw non-linear"},
        {"iq4_xs", LLAMA_FTYPE_MOSTLY_IQ4_XS, "4.25 bpw non-linear"},
        {"q4_k", LLAMA_FTYPE_MOSTLY_Q4_K_M, "alias for q4_k_m"},
        {"q4_k_s", LLAMA_FTYPE_MOSTLY_Q4_K_S, "4.37G, +0.2689 ppl @ Llama-3-8B"},
        {"q4_k_m", LLAMA_FTYPE_MOSTLY_Q4_K_M, "4.58G, +0.1754 ppl @ Llama-3-8B"},
        {"q5_k", LLAMA_FTYPE_MOSTLY_Q5_K_M, "alias for q5_k_m"},
        {"q5_k_s", LLAMA_FTYPE_MOSTLY_Q5_K_S, "5.21G, +0.1049 ppl @ Llama-3-8B"},
        {"q5_k_m", LLAMA_FTYPE_MOSTLY_Q5_K_M, "5.33G, +0.0569 ppl @ Llama-3-8B"},
        {"q6_k", LLAMA_FTYPE_MOSTLY_Q6_K, "6.14G, +0.0217 ppl @ Llama-3-8B"},
        {"q8_0", LLAMA_FTYPE_MOSTLY_Q8_0, "7.96G, +0.0026 ppl @ Llama-3-8B"},
        {"f16", LLAMA_FTYPE_MOSTLY_F16, "14.00G, +0.0020 ppl @ Mistral-7B"},
        {"bf16", LLAMA_FTYPE_MOSTLY_BF16, "14.00G, -0.0050 ppl @ Mistral-7B"},
        {"f32", LLAMA_FTYPE_ALL_F32, "26.00G @ 7B"},
    };
    return types;
}

namespace {

const quantize_type & find_type(const std::string & name) {
    std::string lower;
    for (char c : name) lower += (char) std::tolower((unsigned char) c);
    for (const auto & t : quantize_types()) {
        if (lower == t.name) return t;
    }
    std::string known;
    for (const auto & t : quantize_types()) known += (known.empty() ? "" : ", ") + std::string(t.name);
    throw std::invalid_argument("unknown quantization type \"" + name + "\"; known: " + known);
}

// ---------------------------------------------------------------- progress from the log

// The quantizer logs "[   i/   n] tensor-name ..." once per tensor, on the calling thread: a
// forwarding logger turns those lines into progress for whichever quantization runs on that thread.
thread_local const progress_fn * t_progress = nullptr;
ggml_log_callback g_prev_log = nullptr;
void * g_prev_log_data = nullptr;

void progress_logger(ggml_log_level level, const char * text, void * user_data) {
    int done = 0, total = 0;
    if (t_progress && text[0] == '[' && sscanf(text, "[%d/%d]", &done, &total) == 2 && total > 0) {
        (*t_progress)(progress{(double) done - 1, (double) total});
    }
    if (g_prev_log) g_prev_log(level, text, g_prev_log_data);
    (void) user_data;
}

void install_progress_logger() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_get(&g_prev_log, &g_prev_log_data);
        llama_log_set(progress_logger, nullptr);
    });
}

struct progress_scope {
    explicit progress_scope(const progress_fn * p) { t_progress = p; }
    ~progress_scope() { t_progress = nullptr; }
};

// ---------------------------------------------------------------- parameters

llama_model_kv_override to_override(const quantize_kv & kv) {
    if (kv.key.empty() || kv.key.size() >= 128) throw std::invalid_argument("metadata key \"" + kv.key + "\" must be 1..127 bytes");
    llama_model_kv_override o{};
    std::strcpy(o.key, kv.key.c_str());
    switch (kv.tag) {
        case quantize_kv::INT:   o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;   o.val_i64 = kv.i; break;
        case quantize_kv::FLOAT: o.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT; o.val_f64 = kv.f; break;
        case quantize_kv::BOOL:  o.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL;  o.val_bool = kv.b; break;
        case quantize_kv::STR:
            // llama-quantize keeps 127 bytes of a string override; longer would differ silently
            if (kv.s.size() > 127) throw std::invalid_argument("metadata value of " + kv.key + " is longer than 127 bytes");
            o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
            std::strcpy(o.val_str, kv.s.c_str());
            break;
    }
    return o;
}

uint64_t file_size_of(const std::string & path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 ? (uint64_t) st.st_size : 0;
}

} // namespace

quantize_result quantize_model(const std::string & in_path, const std::string & out_path,
                               const quantize_options & options, const progress_fn & progress) {
    const quantize_type & type = find_type(options.type);
    check_output_path(in_path, out_path);
    uint32_t n_tensors = 0;
    uint64_t bytes_in = 0;
    {
        gguf_file in(in_path);  // the same checks and messages as prune: not GGUF, truncated, bad tensors
        n_tensors = (uint32_t) in.tensors().size();
        bytes_in = in.file_size();
    }

    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = (llama_ftype) type.ftype;
    params.nthread = options.threads;
    params.allow_requantize = options.allow_requantize;
    params.pure = options.pure;

    std::vector<llama_model_imatrix_data> imatrix;
    for (const auto & e : options.imatrix) {
        if (e.values.empty()) throw std::invalid_argument("importance matrix entry " + e.name + " has no values");
        imatrix.push_back({e.name.c_str(), e.values.data(), e.values.size()});
    }
    if (!imatrix.empty()) {
        imatrix.push_back({nullptr, nullptr, 0});
        params.imatrix = imatrix.data();
    }
    std::vector<llama_model_kv_override> overrides;
    for (const auto & kv : options.overrides) overrides.push_back(to_override(kv));
    if (!overrides.empty()) {
        overrides.emplace_back();
        overrides.back().key[0] = 0;
        params.kv_overrides = overrides.data();
    }

    install_progress_logger();
    atomic_output out(out_path);
    last_llama_errors();
    uint32_t rc;
    {
        progress_scope scope(progress ? &progress : nullptr);
        rc = llama_model_quantize(in_path.c_str(), out.temp_path().c_str(), &params);
    }
    if (rc != 0) {
        const std::string why = last_llama_errors();
        throw std::runtime_error(in_path + ": llama.cpp cannot quantize this model to " + type.name +
                                 (why.empty() ? "" : ": " + why));
    }
    out.commit();
    if (progress) progress({(double) n_tensors, (double) n_tensors});
    quantize_result r;
    r.type = type.name;
    r.ftype = type.ftype;
    r.tensors = n_tensors;
    r.bytes_in = bytes_in;
    r.bytes_out = file_size_of(out_path);
    return r;
}

} // namespace ppc
