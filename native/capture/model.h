// A llama.cpp model and context owned by the addon: loading with clear errors, tokenization, and
// full-sequence evaluation that returns the logits of every position.
#pragma once

#include "llama.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ppc {

struct model_params {
    int32_t n_gpu_layers = 0;    // layers offloaded to a GPU backend (CUDA build)
    int32_t n_threads    = 0;    // 0: all cores
    uint32_t n_ctx       = 0;    // 0: grows to the longest evaluated sequence
    uint32_t n_batch     = 512;
    bool vocab_only      = false; // tokenizer only: no weights are loaded
    int32_t flash_attn   = -1;    // eval_logits context: -1 llama.cpp's default (auto), 0 off, 1 on
    bool kv_f32          = false; // eval_logits context: f32 KV cache instead of f16
};

class llama_session {
public:
    llama_session(const std::string & path, const model_params & params);
    ~llama_session();
    llama_session(const llama_session &) = delete;
    llama_session & operator=(const llama_session &) = delete;

    const llama_model * model() const { return model_; }
    const llama_vocab * vocab() const { return vocab_; }
    int32_t n_vocab() const { return llama_vocab_n_tokens(vocab_); }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    // special: control tokens render as their text (e.g. "<|im_end|>"); otherwise as nothing.
    std::string token_to_piece(llama_token token, bool special = true) const;
    std::string detokenize(const std::vector<llama_token> & tokens, bool remove_special, bool unparse_special) const;
    const model_params & params() const { return params_; }

    // What every context of this session starts from: threads (`n_threads` > 0, else the session's
    // setting, else all cores), flash attention (-1 llama.cpp's auto, 0 off, 1 on), an f32 KV
    // cache if `kv_f32` (else llama.cpp's f16), no performance counters.
    llama_context_params context_params(int32_t n_threads, int32_t flash_attn, bool kv_f32) const;

    // Logits of every position of `tokens` (n_tokens x n_vocab, row-major), one sequence from
    // position 0. Serialized per session.
    std::vector<float> eval_logits(const std::vector<llama_token> & tokens);

    std::mutex & mutex() { return mutex_; }

private:
    void ensure_context(uint32_t n_tokens);

    llama_model * model_ = nullptr;
    const llama_vocab * vocab_ = nullptr;
    llama_context * ctx_ = nullptr;
    uint32_t ctx_size_ = 0;
    model_params params_;
    std::mutex mutex_;
};

// `requested` if > 0, else every core.
int32_t resolve_threads(int32_t requested);

// Routes llama.cpp / ggml logging: silent unless PPC_GPT_LOG=1, but the latest error lines are kept
// so that failures can say why.
void install_llama_logger();
std::string last_llama_errors();

} // namespace ppc
