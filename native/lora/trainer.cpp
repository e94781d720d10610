#include "lora/trainer.h"

#include "capture/model.h"

// llama_adapter_lora::ab_map holds the adapter's A/B tensors, the ones to train. The addon compiles
// against llama.cpp's source, so its internal header is available (and matches the library).
#include "../src/llama-adapter.h"
#include "../src/llama-cparams.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <thread>

static_assert(ppc::k_lora_max_sequences == LLAMA_MAX_SEQ, "k_lora_max_sequences must follow llama.cpp's LLAMA_MAX_SEQ");

namespace ppc {

namespace {

std::string with_llama_errors(const std::string & what) {
    const std::string why = last_llama_errors();
    return why.empty() ? what : what + ": " + why;
}

// SplitMix64: derives the dropout seed of each micro-batch from the step's seed.
uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

} // namespace

lora_trainer::lora_trainer(const lora_trainer_params & params) : p_(params) {
    if (p_.n_ctx < 2) throw std::invalid_argument("the training context must hold at least 2 tokens");
    if (p_.n_seq_max < 1 || p_.n_seq_max > k_lora_max_sequences) {
        throw std::invalid_argument("sequences per micro-batch must be in [1, " + std::to_string(k_lora_max_sequences) + "]");
    }
    if (p_.n_seq_max > p_.n_ctx) {
        throw std::invalid_argument("sequences per micro-batch (" + std::to_string(p_.n_seq_max) + ") exceed its tokens (" +
                                    std::to_string(p_.n_ctx) + ")");
    }
    last_llama_errors();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p_.n_gpu_layers;
    // repacked CPU weight layouts (CPU_REPACK) only support mul_mat: the backward pass needs out_prod
    mp.use_extra_bufts = false;
    model_ = llama_model_load_from_file(p_.model_path.c_str(), mp);
    if (!model_) throw std::runtime_error(with_llama_errors(p_.model_path + ": llama.cpp cannot load this model"));

    try {
        adapter_ = llama_adapter_lora_init(model_, p_.adapter_path.c_str());
        if (!adapter_) throw std::runtime_error(with_llama_errors(p_.adapter_path + ": llama.cpp cannot load this LoRA adapter"));

        llama_context_params cp = llama_context_default_params();
        cp.n_ctx      = p_.n_ctx;
        // llama_train_step takes a whole micro-batch as one ubatch whatever n_ubatch is: keep the
        // context's own (inference) graph reservation small (it must still hold one output per sequence)
        cp.n_batch    = std::min<uint32_t>(p_.n_ctx, std::max<uint32_t>(32, p_.n_seq_max));
        cp.n_ubatch   = cp.n_batch;
        cp.n_seq_max  = p_.n_seq_max;
        cp.kv_unified = true;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED; // no backward pass
        const int32_t threads = resolve_threads(p_.n_threads);
        cp.n_threads       = threads;
        cp.n_threads_batch = threads;
        cp.no_perf = true;
        ctx_ = llama_init_from_model(model_, cp);
        if (!ctx_) throw std::runtime_error(with_llama_errors("llama.cpp cannot create a training context"));
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx_, &adapter_, 1, &scale) != 0) {
            throw std::runtime_error(with_llama_errors("llama.cpp cannot apply the LoRA adapter"));
        }

        // the trainable tensors, in name order (ab_map is unordered)
        std::map<std::string, llama_adapter_lora_weight> weights(adapter_->ab_map.begin(), adapter_->ab_map.end());
        if (weights.empty()) throw std::runtime_error(p_.adapter_path + ": the adapter has no LoRA tensors");
        for (const auto & [base, w] : weights) {
            for (ggml_tensor * t : {w.a, w.b}) {
                if (t->type != GGML_TYPE_F32) {
                    throw std::runtime_error(p_.adapter_path + ": tensor " + t->name + " is " + ggml_type_name(t->type) +
                                             "; training needs F32 LoRA matrices");
                }
                ggml_set_param(t);
                lora_param lp;
                lp.name   = t->name;
                lp.ne0    = t->ne[0];
                lp.ne1    = t->ne[1];
                lp.tensor = t;
                const size_t n = (size_t) ggml_nelements(t);
                lp.value.resize(n);
                lp.m.assign(n, 0.0f);
                lp.v.assign(n, 0.0f);
                ggml_backend_tensor_get(t, lp.value.data(), 0, n * sizeof(float));
                params_.push_back(std::move(lp));
            }
        }

        // gradient accumulators, in the buffer type of their tensor (CPU or GPU)
        std::map<ggml_backend_buffer_type_t, std::vector<size_t>> by_buft;
        for (size_t i = 0; i < params_.size(); ++i) {
            by_buft[ggml_backend_buffer_get_type(params_[i].tensor->buffer)].push_back(i);
        }
        ggml_init_params ip = {
            /*.mem_size   =*/ params_.size() * ggml_tensor_overhead(),
            /*.mem_buffer =*/ nullptr,
            /*.no_alloc   =*/ true,
        };
        for (const auto & [buft, idx] : by_buft) {
            ggml_context * gctx = ggml_init(ip);
            if (!gctx) throw std::runtime_error("cannot create a ggml context for the gradients");
            grad_ctxs_.push_back(gctx);
            for (size_t i : idx) {
                lora_param & lp = params_[i];
                lp.grad = ggml_new_tensor(gctx, GGML_TYPE_F32, GGML_MAX_DIMS, lp.tensor->ne);
                ggml_format_name(lp.grad, "grad_acc %s", lp.name.c_str());
            }
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(gctx, buft);
            if (!buf) throw std::runtime_error("cannot allocate the gradient accumulators (out of memory?)");
            grad_bufs_.push_back(buf);
        }
        for (lora_param & lp : params_) {
            param_tensors_.push_back(lp.tensor);
            grad_tensors_.push_back(lp.grad);
        }
    } catch (...) {
        release();
        throw;
    }
}

lora_trainer::~lora_trainer() { release(); }

void lora_trainer::release() {
    if (ctx_) llama_free(ctx_);
    ctx_ = nullptr;
    for (ggml_backend_buffer_t b : grad_bufs_) ggml_backend_buffer_free(b);
    grad_bufs_.clear();
    for (ggml_context * c : grad_ctxs_) ggml_free(c);
    grad_ctxs_.clear();
    if (adapter_) llama_adapter_lora_free(adapter_);
    adapter_ = nullptr;
    if (model_) llama_model_free(model_);
    model_ = nullptr;
}

float lora_trainer::alpha() const { return adapter_->alpha; }

int32_t lora_trainer::n_vocab() const { return llama_vocab_n_tokens(llama_model_get_vocab(model_)); }

void lora_trainer::check_batch(const lora_micro_batch & b, size_t index) const {
    const std::string at = "micro-batch " + std::to_string(index) + ": ";
    const size_t n = b.token.size();
    if (n == 0) throw std::invalid_argument(at + "no tokens");
    if (b.pos.size() != n || b.seq_id.size() != n || b.target.size() != n || b.weight.size() != n) {
        throw std::invalid_argument(at + "tokens, positions, sequence ids, targets and weights differ in length");
    }
    if (n > p_.n_ctx) {
        throw std::invalid_argument(at + std::to_string(n) + " tokens exceed the training context (" + std::to_string(p_.n_ctx) + ")");
    }
    const int32_t vocab = n_vocab();
    std::set<llama_seq_id> seqs;
    bool any_target = false;
    for (size_t i = 0; i < n; ++i) {
        if (b.token[i] < 0 || b.token[i] >= vocab) {
            throw std::invalid_argument(at + "token " + std::to_string(b.token[i]) + " is outside the vocabulary (" + std::to_string(vocab) + ")");
        }
        if (b.target[i] < -1 || b.target[i] >= vocab) {
            throw std::invalid_argument(at + "target " + std::to_string(b.target[i]) + " is outside the vocabulary");
        }
        if (b.seq_id[i] < 0 || (uint32_t) b.seq_id[i] >= p_.n_seq_max) {
            throw std::invalid_argument(at + "sequence id " + std::to_string(b.seq_id[i]) + " is outside [0, " +
                                        std::to_string(p_.n_seq_max) + ")");
        }
        if (b.target[i] >= 0 && !std::isfinite(b.weight[i])) throw std::invalid_argument(at + "a loss weight is not finite");
        any_target = any_target || b.target[i] >= 0;
        // each sequence: contiguous tokens at positions 0, 1, 2...
        const bool starts = i == 0 || b.seq_id[i] != b.seq_id[i - 1];
        if (starts && !seqs.insert(b.seq_id[i]).second) {
            throw std::invalid_argument(at + "the tokens of sequence " + std::to_string(b.seq_id[i]) + " are not contiguous");
        }
        if (b.pos[i] != (starts ? 0 : b.pos[i - 1] + 1)) {
            throw std::invalid_argument(at + "position " + std::to_string(b.pos[i]) + " at index " + std::to_string(i) +
                                        "; each sequence's positions must run 0, 1, 2...");
        }
    }
    if (!any_target) throw std::invalid_argument(at + "no position has a target");
}

double lora_trainer::run(const lora_micro_batch & b, bool backward, float dropout, uint64_t seed, float * logits) {
    llama_train_batch tb = {
        /*.n_tokens =*/ (int32_t) b.token.size(),
        /*.token    =*/ b.token.data(),
        /*.pos      =*/ b.pos.data(),
        /*.seq_id   =*/ b.seq_id.data(),
        /*.target   =*/ b.target.data(),
        /*.weight   =*/ b.weight.data(),
    };
    llama_train_params tp = {
        /*.backward     =*/ backward,
        /*.n_params     =*/ (int32_t) param_tensors_.size(),
        /*.params       =*/ param_tensors_.data(),
        /*.grad_accs    =*/ grad_tensors_.data(),
        /*.lora_dropout =*/ dropout,
        /*.dropout_seed =*/ seed,
        /*.logits       =*/ logits,
    };
    double loss = 0;
    last_llama_errors();
    if (llama_train_step(ctx_, &tb, &tp, &loss) != 0) {
        throw std::runtime_error(with_llama_errors("llama_train_step failed"));
    }
    return loss;
}

static int64_t count_targets(const lora_micro_batch & b) {
    return std::count_if(b.target.begin(), b.target.end(), [](int32_t t) { return t >= 0; });
}

lora_step_result lora_trainer::accumulate(const std::vector<lora_micro_batch> & batches, float dropout, uint64_t dropout_seed,
                                          const std::atomic<bool> * cancel, std::vector<std::vector<float>> & grads) {
    if (batches.empty()) throw std::invalid_argument("a training step needs at least one micro-batch");
    for (size_t i = 0; i < batches.size(); ++i) check_batch(batches[i], i);

    for (ggml_backend_buffer_t b : grad_bufs_) ggml_backend_buffer_clear(b, 0);

    lora_step_result r;
    for (size_t i = 0; i < batches.size(); ++i) {
        if (cancel && cancel->load()) throw std::runtime_error("cancelled");
        r.loss += run(batches[i], true, dropout, mix64(dropout_seed ^ mix64(i)), nullptr);
        r.n_targets += count_targets(batches[i]);
    }

    grads.assign(params_.size(), {});
    double sq = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
        grads[i].resize(params_[i].value.size());
        ggml_backend_tensor_get(params_[i].grad, grads[i].data(), 0, grads[i].size() * sizeof(float));
        for (float g : grads[i]) sq += (double) g * g;
    }
    r.grad_norm = std::sqrt(sq);
    return r;
}

lora_step_result lora_trainer::gradients(const std::vector<lora_micro_batch> & batches, float dropout, uint64_t dropout_seed,
                                         const std::atomic<bool> * cancel, std::vector<std::vector<float>> & grads) {
    return accumulate(batches, dropout, dropout_seed, cancel, grads);
}

lora_step_result lora_trainer::train_step(const std::vector<lora_micro_batch> & batches, const adamw_params & opt,
                                          float dropout, uint64_t dropout_seed, const std::atomic<bool> * cancel) {
    std::vector<std::vector<float>> grads;
    lora_step_result r = accumulate(batches, dropout, dropout_seed, cancel, grads);
    if (!std::isfinite(r.loss)) {
        throw std::runtime_error("the loss is not finite (" + std::to_string(r.loss) + "); the adapter was not updated");
    }
    if (!std::isfinite(r.grad_norm)) throw std::runtime_error("the gradient is not finite; the adapter was not updated");
    const double clip = opt.max_grad_norm > 0 && r.grad_norm > opt.max_grad_norm ? opt.max_grad_norm / (r.grad_norm + 1e-6) : 1.0;

    // torch.optim.AdamW: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    ++step_;
    const double bc1 = 1.0 - std::pow((double) opt.beta1, (double) step_);
    const double bc2 = 1.0 - std::pow((double) opt.beta2, (double) step_);
    const float  step_size = (float) (opt.lr / bc1);
    const float  sqrt_bc2  = (float) std::sqrt(bc2);
    const float  decay     = 1.0f - opt.lr * opt.weight_decay;
    for (size_t i = 0; i < params_.size(); ++i) {
        lora_param & lp = params_[i];
        const std::vector<float> & g = grads[i];
        for (size_t k = 0; k < lp.value.size(); ++k) {
            const float gk = (float) (g[k] * clip);
            lp.m[k] = opt.beta1 * lp.m[k] + (1.0f - opt.beta1) * gk;
            lp.v[k] = opt.beta2 * lp.v[k] + (1.0f - opt.beta2) * gk * gk;
            lp.value[k] *= decay;
            lp.value[k] -= step_size * lp.m[k] / (std::sqrt(lp.v[k]) / sqrt_bc2 + opt.eps);
        }
        ggml_backend_tensor_set(lp.tensor, lp.value.data(), 0, lp.value.size() * sizeof(float));
    }
    return r;
}

lora_step_result lora_trainer::evaluate(const std::vector<lora_micro_batch> & batches, std::vector<float> * logits,
                                        const std::atomic<bool> * cancel) {
    for (size_t i = 0; i < batches.size(); ++i) check_batch(batches[i], i);
    lora_step_result r;
    if (logits) {
        int64_t n = 0;
        for (const auto & b : batches) n += count_targets(b);
        logits->assign((size_t) n * (size_t) n_vocab(), 0.0f);
    }
    size_t row = 0;
    for (const auto & b : batches) {
        if (cancel && cancel->load()) throw std::runtime_error("cancelled");
        float * out = logits ? logits->data() + row * (size_t) n_vocab() : nullptr;
        r.loss += run(b, false, 0.0f, 0, out);
        const int64_t nt = count_targets(b);
        r.n_targets += nt;
        row += (size_t) nt;
    }
    return r;
}

void lora_trainer::set_state(const std::vector<lora_param> & state, int64_t step) {
    if (step < 0) throw std::invalid_argument("the step counter cannot be negative");
    if (state.size() != params_.size()) {
        throw std::invalid_argument("the state has " + std::to_string(state.size()) + " tensors, the adapter " +
                                    std::to_string(params_.size()));
    }
    // validate everything before changing anything
    std::vector<const lora_param *> match(params_.size(), nullptr);
    for (size_t i = 0; i < params_.size(); ++i) {
        for (const lora_param & s : state) {
            if (s.name == params_[i].name) match[i] = &s;
        }
        const lora_param * s = match[i];
        if (!s) throw std::invalid_argument("the state lacks tensor " + params_[i].name);
        const size_t n = params_[i].value.size();
        if (s->value.size() != n || s->m.size() != n || s->v.size() != n || s->ne0 != params_[i].ne0 || s->ne1 != params_[i].ne1) {
            throw std::invalid_argument("tensor " + params_[i].name + " has another shape in the state");
        }
    }
    for (size_t i = 0; i < params_.size(); ++i) {
        lora_param & lp = params_[i];
        lp.value = match[i]->value;
        lp.m = match[i]->m;
        lp.v = match[i]->v;
        ggml_backend_tensor_set(lp.tensor, lp.value.data(), 0, lp.value.size() * sizeof(float));
    }
    step_ = step;
}

} // namespace ppc
