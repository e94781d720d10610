#include "capture/model.h"

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <stdexcept>
#include <thread>

namespace ppc {

namespace {

std::mutex g_log_mutex;
std::deque<std::string> g_log_errors;
bool g_log_verbose = false;

void log_callback(ggml_log_level level, const char * text, void *) {
    if (g_log_verbose) fputs(text, stderr);
    if (level != GGML_LOG_LEVEL_ERROR && level != GGML_LOG_LEVEL_WARN) return;
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (line.empty()) return;
    g_log_errors.push_back(line);
    while (g_log_errors.size() > 4) g_log_errors.pop_front();
}

} // namespace

void install_llama_logger() {
    const char * v = getenv("PPC_GPT_LOG");
    g_log_verbose = v && v[0] == '1';
    llama_log_set(log_callback, nullptr);
}

std::string last_llama_errors() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string s;
    for (const auto & l : g_log_errors) s += (s.empty() ? "" : "; ") + l;
    g_log_errors.clear();
    return s;
}

llama_session::llama_session(const std::string & path, const model_params & params) : params_(params) {
    last_llama_errors();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params.n_gpu_layers;
    mp.vocab_only = params.vocab_only;
    model_ = llama_model_load_from_file(path.c_str(), mp);
    if (!model_) {
        const std::string why = last_llama_errors();
        throw std::runtime_error(path + ": llama.cpp cannot load this model" + (why.empty() ? "" : ": " + why));
    }
    vocab_ = llama_model_get_vocab(model_);
}

llama_session::~llama_session() {
    if (ctx_) llama_free(ctx_);
    if (model_) llama_model_free(model_);
}

std::vector<llama_token> llama_session::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    std::vector<llama_token> out(text.size() + 16);
    int32_t n = llama_tokenize(vocab_, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(), add_special, parse_special);
    if (n < 0) {
        out.resize((size_t) -n);
        n = llama_tokenize(vocab_, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(), add_special, parse_special);
    }
    if (n < 0) throw std::runtime_error("tokenization failed");
    out.resize((size_t) n);
    return out;
}

std::string llama_session::token_to_piece(llama_token token, bool special) const {
    char buf[256];
    const int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, special);
    if (n < 0) {
        std::string s((size_t) -n, '\0');
        llama_token_to_piece(vocab_, token, s.data(), (int32_t) s.size(), 0, special);
        return s;
    }
    return std::string(buf, (size_t) n);
}

std::string llama_session::detokenize(const std::vector<llama_token> & tokens, bool remove_special, bool unparse_special) const {
    std::string out(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(vocab_, tokens.data(), (int32_t) tokens.size(), out.data(), (int32_t) out.size(), remove_special, unparse_special);
    if (n < 0) {
        out.resize((size_t) -n);
        n = llama_detokenize(vocab_, tokens.data(), (int32_t) tokens.size(), out.data(), (int32_t) out.size(), remove_special, unparse_special);
    }
    if (n < 0) throw std::runtime_error("detokenization failed");
    out.resize((size_t) n);
    return out;
}

int32_t resolve_threads(int32_t requested) {
    return requested > 0 ? requested : (int32_t) std::max(1u, std::thread::hardware_concurrency());
}

llama_context_params llama_session::context_params(int32_t n_threads, int32_t flash_attn, bool kv_f32) const {
    llama_context_params cp = llama_context_default_params();
    const int32_t threads = resolve_threads(n_threads > 0 ? n_threads : params_.n_threads);
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    if (flash_attn >= 0) cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (kv_f32) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    cp.no_perf = true;
    return cp;
}

void llama_session::ensure_context(uint32_t n_tokens) {
    const uint32_t want = params_.n_ctx ? params_.n_ctx : std::max<uint32_t>(256, n_tokens);
    if (n_tokens > want) {
        throw std::invalid_argument("sequence of " + std::to_string(n_tokens) + " tokens exceeds the context size " + std::to_string(want));
    }
    if (ctx_ && ctx_size_ >= want) return;
    if (ctx_) llama_free(ctx_);
    llama_context_params cp = context_params(0, params_.flash_attn, params_.kv_f32);
    cp.n_ctx = want;
    cp.n_batch = std::min(params_.n_batch, want);
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = 1;
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) {
        const std::string why = last_llama_errors();
        throw std::runtime_error("llama.cpp cannot create a context" + (why.empty() ? "" : ": " + why));
    }
    ctx_size_ = llama_n_ctx(ctx_);
}

std::vector<float> llama_session::eval_logits(const std::vector<llama_token> & tokens) {
    if (params_.vocab_only) throw std::logic_error("this model was loaded with vocabOnly: it has no weights to evaluate");
    if (tokens.empty()) throw std::invalid_argument("no tokens to evaluate");
    const int32_t n_vocab = this->n_vocab();
    for (llama_token t : tokens) {
        if (t < 0 || t >= n_vocab) throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(n_vocab) + ")");
    }
    ensure_context((uint32_t) tokens.size());
    llama_memory_clear(llama_get_memory(ctx_), true);

    const uint32_t n_batch = llama_n_batch(ctx_);
    std::vector<float> logits(tokens.size() * (size_t) n_vocab);
    llama_batch batch = llama_batch_init((int32_t) n_batch, 0, 1);
    try {
        for (size_t start = 0; start < tokens.size(); start += n_batch) {
            const size_t n = std::min<size_t>(n_batch, tokens.size() - start);
            batch.n_tokens = (int32_t) n;
            for (size_t i = 0; i < n; ++i) {
                batch.token[i]     = tokens[start + i];
                batch.pos[i]       = (llama_pos) (start + i);
                batch.n_seq_id[i]  = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i]    = 1;
            }
            const int32_t rc = llama_decode(ctx_, batch);
            if (rc != 0) {
                const std::string why = last_llama_errors();
                throw std::runtime_error("llama_decode failed (" + std::to_string(rc) + ")" + (why.empty() ? "" : ": " + why));
            }
            for (size_t i = 0; i < n; ++i) {
                const float * row = llama_get_logits_ith(ctx_, (int32_t) i);
                if (!row) throw std::runtime_error("llama.cpp returned no logits");
                std::copy(row, row + n_vocab, logits.begin() + (std::ptrdiff_t) ((start + i) * (size_t) n_vocab));
            }
        }
    } catch (...) {
        llama_batch_free(batch);
        throw;
    }
    llama_batch_free(batch);
    return logits;
}

} // namespace ppc
