// Continuous-batching text generation: up to n_slots requests decode together, one token each per
// llama_decode, on one context (one KV-cache sequence per slot). A request that finishes frees its
// slot and the next queued request starts in the same step, so the batch stays full.
//
// Why not node-llama-cpp's per-sequence generation: it samples and dispatches every sequence
// separately, and on a CPU that costs more than batching saves (measured in BENCHMARKS.md); here a
// step is one decode for all slots and the sampling of every slot, on one worker thread.
//
// Threading: submit() and cancel() are called from the JS thread while run() works on a worker
// thread; both sides meet only at the queue (mutex). run() takes the session's mutex, like every
// other user of the model.
#pragma once

#include "capture/model.h"
#include "common/async.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ppc {

struct sampling_params {
    float    temperature = 0.0f;  // <= 0: greedy (argmax)
    int32_t  top_k       = 40;    // <= 0: off (node-llama-cpp's defaults: top-k 40, top-p 0.95, min-p 0)
    float    top_p       = 0.95f; // >= 1: off
    float    min_p       = 0.0f;  // <= 0: off
    uint32_t seed        = 0xFFFFFFFFu;  // LLAMA_DEFAULT_SEED: a random seed
};

struct generation_request {
    std::vector<llama_token> prompt;  // at least one token
    sampling_params sampling;
    int32_t max_tokens = 256;         // generated tokens at most (>= 1)
    std::string grammar;              // GBNF; empty: unconstrained
    std::string grammar_root = "root";
    std::vector<std::string> stop_strings;  // end the reply (not included in the text)
    std::vector<llama_token> stop_tokens;   // end the reply, besides the vocabulary's end-of-generation tokens
};

enum class finish_reason : int32_t { stop = 0, length = 1, cancelled = 2 };

struct generation_result {
    uint64_t id = 0;
    std::string text;
    std::vector<llama_token> tokens;  // the reply's tokens: an end-of-generation or stop token is not included
    finish_reason finish = finish_reason::stop;
    int32_t n_prompt = 0;     // prompt tokens decoded
    int32_t n_generated = 0;  // tokens sampled (the end-of-generation token included)
};

struct generator_params {
    uint32_t n_slots    = 4;     // sequences decoded together
    uint32_t n_ctx_slot = 2048;  // KV cells of each slot: prompt + reply
    uint32_t n_batch    = 512;   // tokens per llama_decode (>= n_slots)
    int32_t  n_threads  = 0;     // 0: the session's setting, else all cores
    int32_t  flash_attn = -1;    // -1 llama.cpp's default (auto), 0 off, 1 on
    bool     kv_f32     = false; // f32 KV cache instead of f16
};

class batch_generator {
public:
    batch_generator(std::shared_ptr<llama_session> session, const generator_params & params);
    ~batch_generator();
    batch_generator(const batch_generator &) = delete;
    batch_generator & operator=(const batch_generator &) = delete;

    // Queues a request and returns its id. Throws std::invalid_argument for a request that can
    // never run (empty or too long prompt, bad token, grammar that does not parse).
    uint64_t submit(generation_request request);
    // The request ends with finish_reason::cancelled at the next step (queued or running).
    void cancel(uint64_t id);

    // Decodes steps until at least one request has finished, and returns those that finished; an
    // empty result means nothing is left to do. `cancel` (all work) is polled between steps. If it
    // throws (cancelled, llama_decode failed), every queued and running request is dropped.
    std::vector<generation_result> run(const cancel_token * cancel);

    const generator_params & params() const { return params_; }

private:
    struct slot;
    struct queued;

    std::vector<generation_result> step_until_finished(const cancel_token * cancel);
    void admit_locked(std::vector<generation_result> & finished);
    void finish(slot & s, finish_reason why, std::vector<generation_result> & finished);
    llama_token sample(slot & s, int32_t i_batch);
    bool append_token(slot & s, llama_token token, std::vector<generation_result> & finished);

    std::shared_ptr<llama_session> session_;
    generator_params params_;
    llama_context * ctx_ = nullptr;
    llama_batch batch_{};
    std::vector<slot> slots_;
    std::vector<llama_token_data> candidates_;  // n_vocab entries, reused by every sampling

    std::mutex queue_mutex_;
    std::vector<queued> queue_;        // submitted, not yet in a slot
    std::vector<uint64_t> cancelled_;  // ids cancelled since the last step
    uint64_t next_id_ = 1;
};

} // namespace ppc
