#include "capture/loglik.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <thread>

namespace ppc {

namespace {

// One scoring unit: a context and the continuations that share its KV cells. In shared mode a unit
// is a whole request; in naive mode every continuation is a unit of its own.
struct score_unit {
    uint32_t req = 0;
    uint32_t cont_begin = 0;  // continuations [cont_begin, cont_end) of the request
    uint32_t cont_end = 0;
    uint32_t n_cells = 0;     // KV cells: context + every continuation but its last token
    uint32_t n_seqs() const { return cont_end - cont_begin; }
};

// A logits row of the current batch and what it scores. cont < 0: the context's last token, whose
// row scores the first token of every continuation of the unit.
struct pending_row {
    int32_t     i_batch;
    uint32_t    unit;
    int32_t     cont;
    llama_token target;
};

// log(sum(exp(row))) in double precision, and the first index of the largest logit.
void row_stats(const float * row, int32_t n_vocab, double & lse, int32_t & argmax) {
    float mx = row[0];
    int32_t am = 0;
    for (int32_t v = 1; v < n_vocab; ++v) {
        if (row[v] > mx) {
            mx = row[v];
            am = v;
        }
    }
    double sum = 0.0;
    for (int32_t v = 0; v < n_vocab; ++v) sum += std::exp((double) row[v] - (double) mx);
    lse = (double) mx + std::log(sum);
    argmax = am;
}

std::string llama_error(const std::string & what) {
    const std::string why = last_llama_errors();
    return what + (why.empty() ? "" : ": " + why);
}

} // namespace

loglik_scorer::loglik_scorer(std::shared_ptr<llama_session> session, const loglik_params & params)
    : session_(std::move(session)), params_(params) {
    if (session_->params().vocab_only) throw std::logic_error("this model was loaded with vocabOnly: it has no weights to evaluate");
    if (params_.n_batch == 0) throw std::invalid_argument("batch size must be at least 1");
    if (params_.n_seq_max == 0 || params_.n_seq_max > 256) throw std::invalid_argument("sequences must be in [1, 256]");
    // llama_adapter_lora_init registers the adapter with the model: do it under the session's lock.
    std::lock_guard<std::mutex> lock(session_->mutex());
    last_llama_errors();
    try {
        for (const lora_spec & a : params_.adapters) {
            llama_adapter_lora * adapter = llama_adapter_lora_init(const_cast<llama_model *>(session_->model()), a.path.c_str());
            if (!adapter) throw std::runtime_error(llama_error(a.path + ": llama.cpp cannot load this LoRA adapter"));
            adapters_.push_back(adapter);
            adapter_scales_.push_back(a.scale);
        }
    } catch (...) {
        for (llama_adapter_lora * a : adapters_) llama_adapter_lora_free(a);
        adapters_.clear();
        throw;
    }
}

loglik_scorer::~loglik_scorer() {
    std::lock_guard<std::mutex> lock(session_->mutex());
    free_context();
    for (llama_adapter_lora * a : adapters_) llama_adapter_lora_free(a);
}

void loglik_scorer::free_context() {
    if (ctx_) llama_free(ctx_);
    ctx_ = nullptr;
    ctx_size_ = 0;
    ctx_seqs_ = 0;
}

void loglik_scorer::ensure_context(uint32_t n_cells, uint32_t n_seqs) {
    const uint32_t n_ctx_default = session_->params().n_gpu_layers > 0 ? 2048 : 256;
    const uint32_t want_cells = std::max(params_.n_ctx ? params_.n_ctx : n_ctx_default, n_cells);
    const uint32_t want_seqs = std::max(params_.n_seq_max, n_seqs);
    if (ctx_ && ctx_size_ >= want_cells && ctx_seqs_ >= want_seqs) return;
    free_context();

    llama_context_params cp = session_->context_params(params_.n_threads, params_.flash_attn ? 1 : 0, params_.kv_f32);
    cp.n_ctx = want_cells;
    cp.n_batch = std::max<uint32_t>(params_.n_batch, 2);  // room for a padding token (see score())
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = want_seqs;
    // llama.cpp reserves at least one logits row per sequence: allow that even with tiny batches.
    cp.n_outputs_max = std::max(cp.n_batch, want_seqs);
    // One KV stream for all sequences: llama_memory_seq_cp then shares the context's cells instead
    // of copying buffers, which is the point of scoring choices from one evaluated context.
    cp.kv_unified = true;
    ctx_ = llama_init_from_model(const_cast<llama_model *>(session_->model()), cp);
    if (!ctx_) throw std::runtime_error(llama_error("llama.cpp cannot create a scoring context"));
    ctx_size_ = llama_n_ctx(ctx_);
    ctx_seqs_ = llama_n_seq_max(ctx_);
    if (!adapters_.empty() &&
        llama_set_adapters_lora(ctx_, adapters_.data(), adapters_.size(), adapter_scales_.data()) != 0) {
        free_context();
        throw std::runtime_error(llama_error("llama.cpp cannot apply the LoRA adapters"));
    }
}

std::vector<std::vector<loglik_score>> loglik_scorer::score(const std::vector<loglik_request> & requests,
                                                            const progress_fn & progress,
                                                            const cancel_token * cancel) {
    std::lock_guard<std::mutex> lock(session_->mutex());
    const int32_t n_vocab = session_->n_vocab();

    // Validate and cut the work into units.
    std::vector<std::vector<loglik_score>> result(requests.size());
    std::vector<score_unit> units;
    uint32_t max_cells = 0, max_seqs = 0;
    auto check_tokens = [&](const std::vector<llama_token> & t, size_t r, const char * what) {
        for (llama_token x : t) {
            if (x < 0 || x >= n_vocab) {
                throw std::invalid_argument("request " + std::to_string(r) + ": " + what + " token id " + std::to_string(x) +
                                            " is outside the vocabulary (" + std::to_string(n_vocab) + ")");
            }
        }
    };
    for (size_t r = 0; r < requests.size(); ++r) {
        const loglik_request & q = requests[r];
        if (q.context.empty()) throw std::invalid_argument("request " + std::to_string(r) + ": the context has no tokens (give at least BOS)");
        if (q.continuations.empty()) throw std::invalid_argument("request " + std::to_string(r) + ": no continuations to score");
        check_tokens(q.context, r, "context");
        result[r].resize(q.continuations.size());
        for (size_t j = 0; j < q.continuations.size(); ++j) {
            if (q.continuations[j].empty()) {
                throw std::invalid_argument("request " + std::to_string(r) + ": continuation " + std::to_string(j) + " has no tokens");
            }
            check_tokens(q.continuations[j], r, "continuation");
            result[r][j].n_tokens = (int32_t) q.continuations[j].size();
        }
        const uint32_t n_cont = (uint32_t) q.continuations.size();
        const uint32_t step = params_.share_context ? n_cont : 1;
        for (uint32_t j = 0; j < n_cont; j += step) {
            score_unit u;
            u.req = (uint32_t) r;
            u.cont_begin = j;
            u.cont_end = j + step;
            u.n_cells = (uint32_t) q.context.size();
            for (uint32_t k = u.cont_begin; k < u.cont_end; ++k) u.n_cells += (uint32_t) q.continuations[k].size() - 1;
            max_cells = std::max(max_cells, u.n_cells);
            max_seqs = std::max(max_seqs, u.n_seqs());
            units.push_back(u);
        }
    }
    if (units.empty()) return result;
    if (max_seqs > 255) throw std::invalid_argument("an item has " + std::to_string(max_seqs) + " continuations; at most 255 are supported");
    // One KV cell and one sequence more than any unit needs: a scratch sequence for padding.
    ensure_context(max_cells + 1, max_seqs + 1);
    const llama_seq_id scratch_seq = (llama_seq_id) ctx_seqs_ - 1;

    llama_memory_t mem = llama_get_memory(ctx_);
    const uint32_t n_batch = std::min<uint32_t>(params_.n_batch, llama_n_batch(ctx_));
    // Logits rows per decode: llama.cpp keeps n_outputs x n_vocab floats; keep that near 64 MiB.
    const uint32_t max_outputs = std::max<uint32_t>(1, std::min<uint32_t>(n_batch, (uint32_t) ((16u << 20) / (uint32_t) n_vocab)));

    llama_batch batch = llama_batch_init((int32_t) n_batch + 1, 0, 1);
    std::vector<pending_row> rows;
    rows.reserve(n_batch);
    std::vector<llama_seq_id> seq_base;

    // Decodes the tokens gathered so far and scores their logits rows.
    //
    // ggml's CPU matrix products take a different kernel for a single row than for two or more
    // (llamafile sgemm needs n >= 2), and with f16 weights the two disagree by ~1e-3 in the logits.
    // A plain decode of a whole sequence computes every row in a batch of several, so no decode
    // here may hold a single token (a padding token in a scratch sequence is added) or compute the
    // last layer for a single output row (a second row is requested and ignored).
    auto flush = [&](const std::vector<score_unit> & pack) {
        if (batch.n_tokens == 0) return;
        if (cancel && cancel->cancelled.load()) throw std::runtime_error("cancelled");
        bool padded = false;
        if (batch.n_tokens == 1) {
            batch.token[1] = batch.token[0];
            batch.pos[1] = 0;
            batch.n_seq_id[1] = 1;
            batch.seq_id[1][0] = scratch_seq;
            batch.logits[1] = batch.logits[0];
            batch.n_tokens = 2;
            padded = true;
        } else if (rows.size() == 1) {
            batch.logits[rows[0].i_batch == 0 ? 1 : 0] = 1;
        }
        const int32_t rc = llama_decode(ctx_, batch);
        if (padded) llama_memory_seq_rm(mem, scratch_seq, -1, -1);
        if (rc != 0) throw std::runtime_error(llama_error("llama_decode failed (" + std::to_string(rc) + ")"));
        for (const pending_row & p : rows) {
            const float * row = llama_get_logits_ith(ctx_, p.i_batch);
            if (!row) throw std::runtime_error("llama.cpp returned no logits");
            double lse;
            int32_t argmax;
            row_stats(row, n_vocab, lse, argmax);
            const score_unit & u = pack[p.unit];
            if (p.cont < 0) {
                for (uint32_t k = u.cont_begin; k < u.cont_end; ++k) {
                    const llama_token t = requests[u.req].continuations[k][0];
                    loglik_score & s = result[u.req][k];
                    s.logprob += (double) row[t] - lse;
                    s.is_greedy = s.is_greedy && argmax == t;
                }
            } else {
                loglik_score & s = result[u.req][(size_t) p.cont];
                s.logprob += (double) row[p.target] - lse;
                s.is_greedy = s.is_greedy && argmax == p.target;
            }
        }
        batch.n_tokens = 0;
        rows.clear();
    };
    auto add = [&](const std::vector<score_unit> & pack, llama_token token, llama_pos pos, llama_seq_id seq,
                   bool output, uint32_t unit, int32_t cont, llama_token target) {
        const int32_t i = batch.n_tokens;
        batch.token[i] = token;
        batch.pos[i] = pos;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = seq;
        batch.logits[i] = output ? 1 : 0;
        batch.n_tokens++;
        if (output) rows.push_back({i, unit, cont, target});
        if ((uint32_t) batch.n_tokens == n_batch || rows.size() == max_outputs) flush(pack);
    };

    try {
        size_t next = 0;
        size_t reqs_done = 0;
        std::vector<score_unit> pack;
        while (next < units.size()) {
            // Pack units while their KV cells and sequences fit.
            pack.clear();
            seq_base.clear();
            uint32_t cells = 0, seqs = 0;
            while (next < units.size()) {
                const score_unit & u = units[next];
                if (!pack.empty() && (cells + u.n_cells > ctx_size_ - 1 || seqs + u.n_seqs() > ctx_seqs_ - 1)) break;
                pack.push_back(u);
                seq_base.push_back((llama_seq_id) seqs);
                cells += u.n_cells;
                seqs += u.n_seqs();
                ++next;
            }
            llama_memory_clear(mem, false);

            // 1. every context once, into the first sequence of its unit; logits of its last token only
            for (uint32_t p = 0; p < pack.size(); ++p) {
                const std::vector<llama_token> & ctx = requests[pack[p].req].context;
                for (size_t t = 0; t < ctx.size(); ++t) {
                    add(pack, ctx[t], (llama_pos) t, seq_base[p], t + 1 == ctx.size(), p, -1, 0);
                }
            }
            flush(pack);
            // 2. share the context's cells with the other choices' sequences (metadata only: one KV stream)
            for (uint32_t p = 0; p < pack.size(); ++p) {
                for (uint32_t k = 1; k < pack[p].n_seqs(); ++k) {
                    llama_memory_seq_cp(mem, seq_base[p], seq_base[p] + (llama_seq_id) k, -1, -1);
                }
            }
            // 3. every continuation but its last token, each in its own sequence, all rows scored
            for (uint32_t p = 0; p < pack.size(); ++p) {
                const score_unit & u = pack[p];
                const llama_pos n_ctx_tokens = (llama_pos) requests[u.req].context.size();
                for (uint32_t k = u.cont_begin; k < u.cont_end; ++k) {
                    const std::vector<llama_token> & cont = requests[u.req].continuations[k];
                    const llama_seq_id seq = seq_base[p] + (llama_seq_id) (k - u.cont_begin);
                    for (size_t t = 0; t + 1 < cont.size(); ++t) {
                        add(pack, cont[t], n_ctx_tokens + (llama_pos) t, seq, true, p, (int32_t) k, cont[t + 1]);
                    }
                }
            }
            flush(pack);
            for (const score_unit & u : pack) {
                if (u.cont_end == requests[u.req].continuations.size()) ++reqs_done;
            }
            progress({(double) reqs_done, (double) requests.size()});
        }
    } catch (...) {
        llama_batch_free(batch);
        llama_memory_clear(mem, false);
        throw;
    }
    llama_batch_free(batch);
    llama_memory_clear(mem, false);
    return result;
}

} // namespace ppc
