#include "generate/batch_generator.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ppc {

namespace {

struct sampler_free {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using sampler_ptr = std::unique_ptr<llama_sampler, sampler_free>;

sampler_ptr make_chain(const sampling_params & p) {
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    sampler_ptr chain(llama_sampler_chain_init(cp));
    if (p.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    if (p.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(p.top_k));
    if (p.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(p.top_p, 1));
    if (p.min_p > 0.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(p.min_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(p.seed));
    return chain;
}

std::string llama_error(const std::string & what) {
    const std::string why = last_llama_errors();
    return what + (why.empty() ? "" : ": " + why);
}

} // namespace

struct batch_generator::queued {
    uint64_t id = 0;
    generation_request request;
    sampler_ptr chain;
    sampler_ptr grammar;
};

struct batch_generator::slot {
    bool active = false;
    uint64_t id = 0;
    generation_request request;
    sampler_ptr chain;
    sampler_ptr grammar;
    size_t n_fed = 0;          // prompt tokens decoded so far
    llama_pos n_past = 0;      // KV positions used
    llama_token last = -1;     // sampled, waiting to be decoded
    bool has_last = false;
    int32_t i_batch = -1;      // logits row of this slot in the current batch
    int32_t n_generated = 0;
    std::string text;
    std::vector<llama_token> tokens;
};

batch_generator::batch_generator(std::shared_ptr<llama_session> session, const generator_params & params)
    : session_(std::move(session)), params_(params) {
    if (session_->params().vocab_only) throw std::invalid_argument("this model was loaded with vocabOnly: it has no weights to generate with");
    if (params_.n_slots < 1 || params_.n_slots > 256) throw std::invalid_argument("sequences must be in [1, 256]");
    if (params_.n_ctx_slot < 8) throw std::invalid_argument("the context of each sequence must hold at least 8 tokens");
    if (params_.n_batch < params_.n_slots) {
        throw std::invalid_argument("batch size (" + std::to_string(params_.n_batch) + ") must be at least the number of sequences (" +
                                    std::to_string(params_.n_slots) + ")");
    }

    std::lock_guard<std::mutex> lock(session_->mutex());
    last_llama_errors();
    llama_context_params cp = session_->context_params(params_.n_threads, params_.flash_attn, params_.kv_f32);
    // One KV stream per sequence: a sequence attends to its own cells only, and freeing a slot
    // frees its cells whatever the others hold.
    cp.kv_unified = false;
    cp.n_seq_max = params_.n_slots;
    cp.n_ctx = params_.n_slots * params_.n_ctx_slot;
    cp.n_batch = params_.n_batch;
    cp.n_ubatch = params_.n_batch;
    ctx_ = llama_init_from_model(const_cast<llama_model *>(session_->model()), cp);
    if (!ctx_) throw std::runtime_error(llama_error("llama.cpp cannot create a generation context"));
    if (llama_n_ctx_seq(ctx_) < params_.n_ctx_slot) {
        const uint32_t got = llama_n_ctx_seq(ctx_);
        llama_free(ctx_);
        throw std::invalid_argument("the model cannot give each sequence " + std::to_string(params_.n_ctx_slot) +
                                    " tokens of context (at most " + std::to_string(got) + ")");
    }
    batch_ = llama_batch_init((int32_t) params_.n_batch, 0, 1);
    slots_.resize(params_.n_slots);
    candidates_.resize((size_t) session_->n_vocab());
}

batch_generator::~batch_generator() {
    std::lock_guard<std::mutex> lock(session_->mutex());
    slots_.clear();
    queue_.clear();
    llama_batch_free(batch_);
    if (ctx_) llama_free(ctx_);
}

uint64_t batch_generator::submit(generation_request request) {
    const int32_t n_vocab = session_->n_vocab();
    if (request.prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
    if (request.prompt.size() >= params_.n_ctx_slot) {
        throw std::invalid_argument("the prompt has " + std::to_string(request.prompt.size()) + " tokens; the context of a sequence holds " +
                                    std::to_string(params_.n_ctx_slot) + " (prompt and reply together)");
    }
    for (llama_token t : request.prompt) {
        if (t < 0 || t >= n_vocab) throw std::invalid_argument("prompt token " + std::to_string(t) + " is outside the vocabulary");
    }
    for (llama_token t : request.stop_tokens) {
        if (t < 0 || t >= n_vocab) throw std::invalid_argument("stop token " + std::to_string(t) + " is outside the vocabulary");
    }
    if (request.max_tokens < 1) throw std::invalid_argument("maxTokens must be at least 1");
    if (!(request.sampling.temperature >= 0.0f) || !std::isfinite(request.sampling.temperature)) {
        throw std::invalid_argument("temperature must be a finite number >= 0");
    }
    for (const std::string & s : request.stop_strings) {
        if (s.empty()) throw std::invalid_argument("stop strings must not be empty");
    }

    queued q;
    q.chain = make_chain(request.sampling);
    if (!request.grammar.empty()) {
        last_llama_errors();
        q.grammar.reset(llama_sampler_init_grammar(session_->vocab(), request.grammar.c_str(), request.grammar_root.c_str()));
        if (!q.grammar) throw std::invalid_argument(llama_error("llama.cpp cannot parse the grammar"));
    }
    q.request = std::move(request);
    std::lock_guard<std::mutex> lock(queue_mutex_);
    q.id = next_id_++;
    const uint64_t id = q.id;
    queue_.push_back(std::move(q));
    return id;
}

void batch_generator::cancel(uint64_t id) {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    cancelled_.push_back(id);
}

void batch_generator::finish(slot & s, finish_reason why, std::vector<generation_result> & finished) {
    llama_memory_seq_rm(llama_get_memory(ctx_), (llama_seq_id) (&s - slots_.data()), -1, -1);
    generation_result r;
    r.id = s.id;
    r.text = std::move(s.text);
    r.tokens = std::move(s.tokens);
    r.finish = why;
    r.n_prompt = (int32_t) s.n_fed;
    r.n_generated = s.n_generated;
    finished.push_back(std::move(r));
    s = slot{};
}

// Applies cancellations and moves queued requests into free slots. Caller holds queue_mutex_.
void batch_generator::admit_locked(std::vector<generation_result> & finished) {
    for (uint64_t id : cancelled_) {
        for (slot & s : slots_) {
            if (s.active && s.id == id) finish(s, finish_reason::cancelled, finished);
        }
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
            if (it->id != id) continue;
            generation_result r;
            r.id = id;
            r.finish = finish_reason::cancelled;
            finished.push_back(std::move(r));
            queue_.erase(it);
            break;
        }
    }
    cancelled_.clear();
    size_t next = 0;
    for (slot & s : slots_) {
        if (s.active || next == queue_.size()) continue;
        queued & q = queue_[next++];
        s.active = true;
        s.id = q.id;
        s.request = std::move(q.request);
        s.chain = std::move(q.chain);
        s.grammar = std::move(q.grammar);
    }
    queue_.erase(queue_.begin(), queue_.begin() + (std::ptrdiff_t) next);
}

llama_token batch_generator::sample(slot & s, int32_t i_batch) {
    const float * logits = llama_get_logits_ith(ctx_, i_batch);
    if (!logits) throw std::runtime_error(llama_error("llama.cpp returned no logits for a sequence"));
    const size_t n_vocab = candidates_.size();
    auto fill = [&]() {
        for (size_t v = 0; v < n_vocab; ++v) candidates_[v] = llama_token_data{(llama_token) v, logits[v], 0.0f};
        return llama_token_data_array{candidates_.data(), n_vocab, -1, false};
    };
    llama_token_data_array cur = fill();
    llama_sampler_apply(s.chain.get(), &cur);
    llama_token token = cur.data[cur.selected].id;
    if (s.grammar) {
        // Grammar check on the chosen token only (the common case: it is allowed); constraining the
        // whole vocabulary is done only when it is not, as llama.cpp's own samplers do.
        llama_token_data one{token, 1.0f, 0.0f};
        llama_token_data_array single{&one, 1, -1, false};
        llama_sampler_apply(s.grammar.get(), &single);
        if (!std::isfinite(one.logit)) {
            cur = fill();
            llama_sampler_apply(s.grammar.get(), &cur);
            llama_sampler_apply(s.chain.get(), &cur);
            token = cur.data[cur.selected].id;
        }
        llama_sampler_accept(s.grammar.get(), token);
    }
    llama_sampler_accept(s.chain.get(), token);
    return token;
}

// Records a sampled token; returns true when the request finished.
bool batch_generator::append_token(slot & s, llama_token token, std::vector<generation_result> & finished) {
    ++s.n_generated;
    const generation_request & rq = s.request;
    if (llama_vocab_is_eog(session_->vocab(), token) ||
        std::find(rq.stop_tokens.begin(), rq.stop_tokens.end(), token) != rq.stop_tokens.end()) {
        finish(s, finish_reason::stop, finished);
        return true;
    }
    const size_t before = s.text.size();
    s.tokens.push_back(token);
    s.text += session_->token_to_piece(token, false);
    for (const std::string & stop : rq.stop_strings) {
        // Only the new bytes and the stop string's length before them can hold a new match.
        const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
        const size_t at = s.text.find(stop, from);
        if (at != std::string::npos) {
            s.text.resize(at);
            finish(s, finish_reason::stop, finished);
            return true;
        }
    }
    // Prompt and reply fit the sequence's context: the new token would take position n_past.
    if (s.n_generated >= rq.max_tokens || (uint32_t) s.n_past + 1 >= params_.n_ctx_slot) {
        finish(s, finish_reason::length, finished);
        return true;
    }
    s.last = token;
    s.has_last = true;
    return false;
}

std::vector<generation_result> batch_generator::run(const cancel_token * cancel) {
    std::lock_guard<std::mutex> lock(session_->mutex());
    try {
        return step_until_finished(cancel);
    } catch (...) {
        // The caller fails every request in flight; start the next ones from a clean state.
        llama_memory_clear(llama_get_memory(ctx_), true);
        for (slot & s : slots_) s = slot{};
        std::lock_guard<std::mutex> queue_lock(queue_mutex_);
        queue_.clear();
        cancelled_.clear();
        throw;
    }
}

std::vector<generation_result> batch_generator::step_until_finished(const cancel_token * cancel) {
    std::vector<generation_result> finished;
    for (;;) {
        if (cancel && cancel->cancelled.load()) throw std::runtime_error("generation cancelled");
        {
            std::lock_guard<std::mutex> queue_lock(queue_mutex_);
            admit_locked(finished);
        }
        if (!finished.empty()) return finished;

        // One token for every sequence that is generating, then prompt tokens in the room left.
        batch_.n_tokens = 0;
        auto add = [&](llama_token t, llama_pos pos, llama_seq_id seq, bool logits) {
            const int32_t i = batch_.n_tokens++;
            batch_.token[i] = t;
            batch_.pos[i] = pos;
            batch_.n_seq_id[i] = 1;
            batch_.seq_id[i][0] = seq;
            batch_.logits[i] = logits ? 1 : 0;
            return i;
        };
        for (size_t k = 0; k < slots_.size(); ++k) {
            slot & s = slots_[k];
            s.i_batch = -1;
            if (!s.active || !s.has_last) continue;
            s.i_batch = add(s.last, s.n_past++, (llama_seq_id) k, true);
            s.has_last = false;
        }
        for (size_t k = 0; k < slots_.size(); ++k) {
            slot & s = slots_[k];
            const std::vector<llama_token> & prompt = s.request.prompt;
            if (!s.active || s.n_fed == prompt.size()) continue;
            const size_t room = params_.n_batch - (size_t) batch_.n_tokens;
            const size_t take = std::min(room, prompt.size() - s.n_fed);
            for (size_t j = 0; j < take; ++j) {
                const bool last = s.n_fed + 1 == prompt.size();
                const int32_t i = add(prompt[s.n_fed++], s.n_past++, (llama_seq_id) k, last);
                if (last) s.i_batch = i;
            }
            if ((size_t) batch_.n_tokens == params_.n_batch) break;
        }
        if (batch_.n_tokens == 0) return finished;  // nothing queued, nothing running

        const int32_t rc = llama_decode(ctx_, batch_);
        if (rc != 0) {
            throw std::runtime_error(llama_error("llama_decode failed (code " + std::to_string(rc) + ") on a batch of " +
                                                 std::to_string(batch_.n_tokens) + " tokens"));
        }
        for (slot & s : slots_) {
            if (s.active && s.i_batch >= 0) append_token(s, sample(s, s.i_batch), finished);
        }
        if (!finished.empty()) return finished;
    }
}

} // namespace ppc
