#include "lora/infer.h"

#include "capture/model.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <thread>

namespace ppc {

namespace {

std::string with_llama_errors(const std::string & what) {
    const std::string why = last_llama_errors();
    return why.empty() ? what : what + ": " + why;
}

struct model_deleter   { void operator()(llama_model * m) const { llama_model_free(m); } };
struct context_deleter { void operator()(llama_context * c) const { llama_free(c); } };
struct adapter_deleter { void operator()(llama_adapter_lora * a) const { llama_adapter_lora_free(a); } };

} // namespace

std::vector<float> lora_inference_logits(const std::string & model_path, const std::vector<lora_file> & adapters,
                                         const std::vector<llama_token> & tokens, int32_t n_threads, int32_t n_gpu_layers) {
    if (tokens.empty()) throw std::invalid_argument("no tokens to evaluate");
    last_llama_errors();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu_layers;
    std::unique_ptr<llama_model, model_deleter> model(llama_model_load_from_file(model_path.c_str(), mp));
    if (!model) throw std::runtime_error(with_llama_errors(model_path + ": llama.cpp cannot load this model"));
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    for (llama_token t : tokens) {
        if (t < 0 || t >= n_vocab) throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary");
    }

    // adapters are freed before the model (declared after it)
    std::vector<std::unique_ptr<llama_adapter_lora, adapter_deleter>> loaded;
    std::vector<llama_adapter_lora *> ptrs;
    std::vector<float> scales;
    for (const lora_file & f : adapters) {
        llama_adapter_lora * a = llama_adapter_lora_init(model.get(), f.path.c_str());
        if (!a) throw std::runtime_error(with_llama_errors(f.path + ": llama.cpp cannot load this LoRA adapter"));
        loaded.emplace_back(a);
        ptrs.push_back(a);
        scales.push_back(f.scale);
    }

    const uint32_t n = (uint32_t) tokens.size();
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx     = std::max<uint32_t>(n, 16);
    cp.n_batch   = cp.n_ctx;
    cp.n_ubatch  = cp.n_ctx;
    cp.n_seq_max = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    const int32_t threads = resolve_threads(n_threads);
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    std::unique_ptr<llama_context, context_deleter> ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) throw std::runtime_error(with_llama_errors("llama.cpp cannot create a context"));
    if (!ptrs.empty() && llama_set_adapters_lora(ctx.get(), ptrs.data(), ptrs.size(), scales.data()) != 0) {
        throw std::runtime_error(with_llama_errors("llama.cpp cannot apply the LoRA adapters"));
    }

    llama_batch batch = llama_batch_init((int32_t) n, 0, 1);
    for (uint32_t i = 0; i < n; ++i) {
        batch.token[i]     = tokens[i];
        batch.pos[i]       = (llama_pos) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    batch.n_tokens = (int32_t) n;
    const int32_t rc = llama_decode(ctx.get(), batch);
    llama_batch_free(batch);
    if (rc != 0) throw std::runtime_error(with_llama_errors("llama_decode failed (" + std::to_string(rc) + ")"));

    std::vector<float> logits((size_t) n * (size_t) n_vocab);
    for (uint32_t i = 0; i < n; ++i) {
        const float * row = llama_get_logits_ith(ctx.get(), (int32_t) i);
        if (!row) throw std::runtime_error("llama.cpp returned no logits");
        std::copy(row, row + n_vocab, logits.begin() + (std::ptrdiff_t) ((size_t) i * (size_t) n_vocab));
    }
    return logits;
}

} // namespace ppc
