#include "capture/layer_scores.h"

#include "ggml-backend.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#ifdef PPC_CUDA
#include "cuda/layer_stats.h"
#endif

namespace ppc {

namespace {

// What the graph callback needs while one batch is computed.
struct capture_state {
    int32_t  n_layer = 0;
    int64_t  n_embd  = 0;
    int64_t  n_tokens = 0;               // tokens of the current batch
    const uint8_t * mask = nullptr;      // n_tokens flags for the current batch
    int32_t  next_layer = 0;
    bool     have_input = false;
    std::vector<float> prev;             // X_i of the current batch, host copy
    std::vector<float> cur;
    layer_score_sums * sums = nullptr;   // accumulate mode
    std::vector<float> * dump = nullptr; // dump mode
    imatrix_collector * imatrix = nullptr; // also collect an importance matrix
    std::string error;
#ifdef PPC_CUDA
    cuda_layer_stats * gpu = nullptr;
    bool gpu_active = false;             // this batch's X_i lives in CUDA memory
#endif
};

bool is_block_input(const char * name) { return strcmp(name, "embd") == 0 || strcmp(name, "inp_scaled") == 0; }

// "l_out-<il>" -> il; -1 otherwise.
int block_output_index(const char * name) {
    if (strncmp(name, "l_out-", 6) != 0) return -1;
    char * end = nullptr;
    const long il = strtol(name + 6, &end, 10);
    return (end && *end == '\0' && il >= 0) ? (int) il : -1;
}

void accumulate_host(capture_state & st, int layer) {
    const int64_t n_embd = st.n_embd;
    double cos_sum = 0, ang_sum = 0, contrib_sum = 0;
    uint64_t counted = 0;
    for (int64_t t = 0; t < st.n_tokens; ++t) {
        if (st.mask && !st.mask[t]) continue;
        const float * x = st.prev.data() + t * n_embd;
        const float * y = st.cur.data() + t * n_embd;
        double xy = 0, xx = 0, yy = 0, dd = 0;
        for (int64_t k = 0; k < n_embd; ++k) {
            const double a = x[k], b = y[k];
            xy += a * b;
            xx += a * a;
            yy += b * b;
            dd += (b - a) * (b - a);
        }
        double c = (xx > 0 && yy > 0) ? xy / std::sqrt(xx * yy) : 1.0;
        c = std::fmax(-1.0, std::fmin(1.0, c));
        cos_sum     += c;
        ang_sum     += std::acos(c) / M_PI;
        contrib_sum += xx > 0 ? std::sqrt(dd / xx) : 0.0;
        ++counted;
    }
    st.sums->cos_sum[(size_t) layer]          += cos_sum;
    st.sums->angular_sum[(size_t) layer]      += ang_sum;
    st.sums->contribution_sum[(size_t) layer] += contrib_sum;
    if (layer == 0) st.sums->n_tokens += counted;
}

// Copies a [n_embd, n_tokens] F32 tensor, from whichever backend holds it, into `dst`.
bool read_hidden(capture_state & st, ggml_tensor * t, std::vector<float> & dst) {
    if (t->type != GGML_TYPE_F32 || t->ne[0] != st.n_embd || t->ne[1] != st.n_tokens || t->ne[2] != 1 || t->ne[3] != 1) {
        st.error = std::string("hidden state '") + ggml_get_name(t) + "' has an unexpected shape or type (" +
                   std::to_string(t->ne[0]) + "x" + std::to_string(t->ne[1]) + ", " + ggml_type_name(t->type) +
                   "); expected " + std::to_string(st.n_embd) + "x" + std::to_string(st.n_tokens) + " f32";
        return false;
    }
    dst.resize((size_t) (st.n_embd * st.n_tokens));
    if (ggml_is_contiguous(t)) {
        ggml_backend_tensor_get(t, dst.data(), 0, dst.size() * sizeof(float));
    } else {
        for (int64_t r = 0; r < st.n_tokens; ++r) {
            ggml_backend_tensor_get(t, dst.data() + r * st.n_embd, (size_t) r * t->nb[1], (size_t) st.n_embd * sizeof(float));
        }
    }
    return true;
}

bool capture_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto & st = *(capture_state *) user_data;
    if (st.imatrix && imatrix_collector::wants(t)) {
        if (ask) return true;
        if (!st.error.empty()) return false;
        if (!st.imatrix->collect(t)) st.error = st.imatrix->error();
        return st.error.empty();
    }
    const char * name = ggml_get_name(t);
    const bool input = is_block_input(name);
    const int  layer = input ? -1 : block_output_index(name);
    if (ask) return input || layer >= 0;
    if (!st.error.empty()) return false;

    if (input) {
        if (st.next_layer != 0) return true;  // a later "embd" of another stack: not ours
#ifdef PPC_CUDA
        st.gpu_active = st.gpu && !st.dump && cuda_layer_stats_set_input(st.gpu, t, st.n_embd, st.n_tokens);
        if (st.gpu_active) {
            st.have_input = true;
            return true;
        }
#endif
        if (!read_hidden(st, t, st.prev)) return false;
        if (st.dump) st.dump->assign(st.prev.begin(), st.prev.end());
        st.have_input = true;
        return true;
    }
    if (layer != st.next_layer || !st.have_input) {
        st.error = "block outputs are not in order (saw '" + std::string(name) + "', expected l_out-" +
                   std::to_string(st.next_layer) + (st.have_input ? "" : " after the token embeddings") + ")";
        return false;
    }
#ifdef PPC_CUDA
    // X_i is on the host (llama.cpp keeps the token embeddings there, or the block before ran on the
    // CPU) and this block ran on the GPU: move X_i to the device once and score from there on.
    if (st.gpu && !st.dump && !st.gpu_active)
        st.gpu_active = cuda_layer_stats_upload_input(st.gpu, t, st.prev, st.n_embd, st.n_tokens);
    if (st.gpu_active) {
        double c = 0, a = 0, r = 0;
        uint64_t n = 0;
        if (cuda_layer_stats_step(st.gpu, t, st.mask, &c, &a, &r, &n)) {
            st.sums->cos_sum[(size_t) layer] += c;
            st.sums->angular_sum[(size_t) layer] += a;
            st.sums->contribution_sum[(size_t) layer] += r;
            if (layer == 0) st.sums->n_tokens += n;
            ++st.sums->device_steps;
            ++st.next_layer;
            return true;
        }
        // This block ran on the CPU (partial offload): continue on the host from the device's X_i.
        cuda_layer_stats_get_input(st.gpu, st.prev);
        st.gpu_active = false;
    }
#endif
    if (!read_hidden(st, t, st.cur)) return false;
    if (st.dump) {
        st.dump->insert(st.dump->end(), st.cur.begin(), st.cur.end());
    } else {
        accumulate_host(st, layer);
    }
    std::swap(st.prev, st.cur);
    ++st.next_layer;
    return true;
}

// A context dedicated to capture: the callback is fixed at creation, outputs are requested for
// every token (so the last block is not cut to the output rows), sequences share one KV pool.
llama_context * make_capture_context(llama_session & session, capture_state & st, uint32_t n_tokens, uint32_t n_seq, bool capture = true) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = std::max<uint32_t>(n_tokens, 64);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;   // one ubatch per decode: positions arrive in batch order
    cp.n_seq_max = std::max<uint32_t>(1, n_seq);
    cp.kv_unified = true;
    cp.no_perf = true;
    // F32 KV cache and no flash attention: ggml's CPU flash-attention kernel accumulates in fp16 for
    // small decodes, which would make the scores depend on how sequences are packed (~1e-4);
    // the plain attention path rounds the same values the same way whatever the packing.
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = resolve_threads(session.params().n_threads);
    cp.n_threads_batch = cp.n_threads;
    cp.cb_eval = capture ? capture_callback : nullptr;
    cp.cb_eval_user_data = capture ? &st : nullptr;
    llama_context * ctx = llama_init_from_model(const_cast<llama_model *>(session.model()), cp);
    if (!ctx) {
        const std::string why = last_llama_errors();
        throw std::runtime_error("llama.cpp cannot create a capture context" + (why.empty() ? "" : ": " + why));
    }
    return ctx;
}

struct batch_range { size_t begin, end; uint32_t n_tokens; };

// Owns a capture context and its batch for the length of one scoring call.
struct capture_run {
    llama_context * ctx;
    llama_batch batch;
    capture_run(llama_session & session, capture_state & st, uint32_t n_tokens, uint32_t n_seq, bool capture)
        : ctx(make_capture_context(session, st, n_tokens, n_seq, capture)),
          batch(llama_batch_init((int32_t) std::max<uint32_t>(n_tokens, 64), 0, 1)) {}
    ~capture_run() {
        llama_batch_free(batch);
        llama_free(ctx);
    }
    capture_run(const capture_run &) = delete;
    capture_run & operator=(const capture_run &) = delete;
};

// Runs one decode over sequences [r.begin, r.end) and checks that every block was seen.
void decode_batch(llama_context * ctx, capture_state & st, const std::vector<scored_sequence> & seqs,
                  const batch_range & r, llama_batch & batch, std::vector<uint8_t> & mask, bool capturing = true) {
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.n_tokens = 0;
    mask.clear();
    bool any_masked = false;
    for (size_t s = r.begin; s < r.end; ++s) {
        const auto & seq = seqs[s];
        for (size_t i = 0; i < seq.tokens.size(); ++i) {
            const int32_t k = batch.n_tokens++;
            batch.token[k] = seq.tokens[i];
            batch.pos[k] = (llama_pos) i;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = (llama_seq_id) (s - r.begin);
            batch.logits[k] = 1;
            const uint8_t m = seq.mask.empty() ? 1 : seq.mask[i];
            any_masked |= m == 0;
            mask.push_back(m);
        }
    }
    st.n_tokens = batch.n_tokens;
    st.mask = any_masked ? mask.data() : nullptr;
    st.next_layer = 0;
    st.have_input = false;
    st.error.clear();
#ifdef PPC_CUDA
    st.gpu_active = false;
#endif
    const int32_t rc = llama_decode(ctx, batch);
    if (!st.error.empty()) throw std::runtime_error("capture failed: " + st.error);
    if (rc != 0) {
        const std::string why = last_llama_errors();
        throw std::runtime_error("llama_decode failed (" + std::to_string(rc) + ")" + (why.empty() ? "" : ": " + why));
    }
    if (!capturing) return;
    if (st.next_layer != st.n_layer || !st.have_input) {
        char desc[128];
        llama_model_desc(const_cast<llama_model *>(llama_get_model(ctx)), desc, sizeof(desc));
        throw std::runtime_error(std::string("cannot identify the block boundaries of this model (") + desc + "): saw " +
                                 std::to_string(st.next_layer) + " of " + std::to_string(st.n_layer) +
                                 " block outputs ('l_out-N')" + (st.have_input ? "" : " and no token embeddings ('embd')") +
                                 "; Block Influence needs an architecture whose graph names them");
    }
}

void check_tokens(const llama_session & s, const std::vector<llama_token> & tokens, size_t mask_size) {
    if (tokens.empty()) throw std::invalid_argument("a sequence has no tokens");
    if (mask_size != 0 && mask_size != tokens.size()) throw std::invalid_argument("a token mask's length differs from its sequence's");
    for (llama_token t : tokens) {
        if (t < 0 || t >= s.n_vocab()) throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary");
    }
}

} // namespace

layer_score_sums compute_layer_scores(llama_session & session, const std::vector<scored_sequence> & seqs,
                                      const layer_score_params & params, const progress_fn & progress) {
    if (session.params().vocab_only) throw std::logic_error("this model was loaded with vocabOnly: it has no weights to evaluate");
    if (seqs.empty()) throw std::invalid_argument("no sequences to score");

    uint64_t total_tokens = 0;
    for (const auto & s : seqs) {
        check_tokens(session, s.tokens, s.mask.size());

        total_tokens += s.tokens.size();
    }
    // Pack consecutive sequences into decodes of at most max_batch_tokens (a longer sequence gets its own).
    std::vector<batch_range> ranges;
    for (size_t i = 0; i < seqs.size();) {
        batch_range r{i, i, 0};
        while (r.end < seqs.size() && (r.end == r.begin || (r.n_tokens + seqs[r.end].tokens.size() <= params.max_batch_tokens &&
                                                            r.end - r.begin < params.max_sequences))) {
            r.n_tokens += (uint32_t) seqs[r.end].tokens.size();
            ++r.end;
        }
        ranges.push_back(r);
        i = r.end;
    }
    uint32_t ctx_tokens = 0, ctx_seqs = 0;
    for (const auto & r : ranges) {
        ctx_tokens = std::max(ctx_tokens, r.n_tokens);
        ctx_seqs = std::max<uint32_t>(ctx_seqs, (uint32_t) (r.end - r.begin));
    }

    capture_state st;
    st.n_layer = llama_model_n_layer(session.model());
    st.n_embd = llama_model_n_embd(session.model());
    layer_score_sums sums;
    sums.n_layer = (uint32_t) st.n_layer;
    sums.cos_sum.assign((size_t) st.n_layer, 0.0);
    sums.angular_sum.assign((size_t) st.n_layer, 0.0);
    sums.contribution_sum.assign((size_t) st.n_layer, 0.0);
    st.sums = &sums;
    imatrix_collector collector;
    if (params.imatrix) st.imatrix = &collector;
#ifdef PPC_CUDA
    cuda_layer_stats gpu_stats;
    st.gpu = &gpu_stats;
#endif

    capture_run run(session, st, ctx_tokens, ctx_seqs, params.capture);
    std::vector<uint8_t> mask;
    progress_fn report = progress ? progress : [](const struct progress &) {};
    struct progress p{0, (double) total_tokens};
    for (const auto & r : ranges) {
        decode_batch(run.ctx, st, seqs, r, run.batch, mask, params.capture);
        p.done += r.n_tokens;
        report(p);
    }
    sums.imatrix = collector.entries();
    return sums;
}

std::vector<float> dump_hidden_states(llama_session & session, const std::vector<llama_token> & tokens) {
    if (session.params().vocab_only) throw std::logic_error("this model was loaded with vocabOnly: it has no weights to evaluate");
    check_tokens(session, tokens, 0);
    capture_state st;
    st.n_layer = llama_model_n_layer(session.model());
    st.n_embd = llama_model_n_embd(session.model());
    std::vector<float> dump;
    st.dump = &dump;
    std::vector<scored_sequence> seqs{{tokens, {}}};
    capture_run run(session, st, (uint32_t) tokens.size(), 1, true);
    std::vector<uint8_t> mask;
    decode_batch(run.ctx, st, seqs, {0, 1, (uint32_t) tokens.size()}, run.batch, mask);
    return dump;
}

} // namespace ppc
