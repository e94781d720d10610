// Batched log-likelihood scoring of continuations given a context, the way lm-evaluation-harness
// scores multiple-choice items: for each continuation, the sum of log p(token | everything before)
// over its tokens, whether every token is the greedy (argmax) choice, and its token count.
//
// The context of an item is decoded once, into one KV-cache sequence; that sequence is then copied
// (llama_memory_seq_cp) to one sequence per further choice, and all choices' tokens are decoded
// together. Several items are packed into one llama_decode. The scorer owns its own llama_context
// (unified KV cache, so a sequence copy is metadata only) and leaves the session's context alone.
#pragma once

#include "capture/model.h"
#include "common/async.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ppc {

struct loglik_request {
    std::vector<llama_token> context;                    // at least one token (e.g. BOS)
    std::vector<std::vector<llama_token>> continuations; // each at least one token
};

struct loglik_score {
    double  logprob   = 0.0;  // sum over the continuation's tokens of log p(token | prefix)
    bool    is_greedy = true; // every token is the argmax of its row (first index on ties)
    int32_t n_tokens  = 0;
};

struct lora_spec {
    std::string path;
    float scale = 1.0f;
};

struct loglik_params {
    // KV cells of the scorer's context: the tokens of all items in flight. 0: 256 on the CPU, where
    // every query attends to the whole pool and small packs are fastest; 2048 with GPU offload.
    uint32_t n_ctx     = 0;
    uint32_t n_batch   = 512;   // tokens per llama_decode
    uint32_t n_seq_max = 32;    // sequences in flight (>= the largest number of choices)
    int32_t  n_threads = 0;     // 0: the session's setting, else all cores
    bool share_context = true;  // false: re-evaluate the context for every continuation (naive anchor)
    // Flash attention off by default: ggml's CPU kernel accumulates V in fp16 for small batches, so
    // its results would depend on how tokens are batched (about 1e-3 relative); the plain path
    // rounds the same values the same way whatever the batch.
    bool flash_attn = false;
    // KV cache in f32 (default) rather than llama.cpp's f16: keys and values are not rounded, so
    // scores are fp32 computations throughout.
    bool kv_f32 = true;
    std::vector<lora_spec> adapters;  // applied to the context without merging
};

// A scoring context over one model. Not thread-safe by itself: score() takes the session's mutex,
// so one model scores one batch at a time.
class loglik_scorer {
public:
    loglik_scorer(std::shared_ptr<llama_session> session, const loglik_params & params);
    ~loglik_scorer();
    loglik_scorer(const loglik_scorer &) = delete;
    loglik_scorer & operator=(const loglik_scorer &) = delete;

    // Scores every continuation of every request; result[i][j] belongs to requests[i].continuations[j].
    // `progress` counts requests; `cancel` is polled between decodes.
    std::vector<std::vector<loglik_score>> score(const std::vector<loglik_request> & requests,
                                                 const progress_fn & progress,
                                                 const cancel_token * cancel);

    const loglik_params & params() const { return params_; }
    uint32_t n_ctx() const { return ctx_size_; }

private:
    void ensure_context(uint32_t n_cells, uint32_t n_seqs);
    void free_context();

    std::shared_ptr<llama_session> session_;
    loglik_params params_;
    llama_context * ctx_ = nullptr;
    uint32_t ctx_size_ = 0;
    uint32_t ctx_seqs_ = 0;
    std::vector<llama_adapter_lora *> adapters_;
    std::vector<float> adapter_scales_;
};

} // namespace ppc
