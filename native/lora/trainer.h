// LoRA training on llama.cpp's own forward graph: the A/B tensors of an adapter loaded by
// llama_adapter_lora_init are made trainable (ggml_set_param), llama_train_step (native/patches)
// runs forward + backward with a masked, weighted cross-entropy loss into gradient accumulators
// beside them, and AdamW runs on the host over F32 copies of the LoRA matrices (they are small), so
// the optimizer state is ours to checkpoint exactly. Base weights are frozen: they get no gradient
// and no optimizer state, whatever their type (F32, F16, Q8_0, Q4_K... on the CPU).
#pragma once

#include "llama.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace ppc {

// Sequences one micro-batch can hold: llama.cpp's LLAMA_MAX_SEQ (checked in trainer.cpp).
constexpr uint32_t k_lora_max_sequences = 256;

struct lora_trainer_params {
    std::string model_path;
    std::string adapter_path;  // initial adapter: llama.cpp's LoRA GGUF layout, F32 A/B
    int32_t  n_gpu_layers = 0;
    int32_t  n_threads    = 0;  // 0: all cores
    uint32_t n_ctx        = 512; // tokens of one micro-batch, at most
    uint32_t n_seq_max    = 64;  // sequences of one micro-batch, at most
};

// Several sequences packed into one llama_train_step call: the tokens of each sequence contiguous,
// positions from 0, target = next token where the loss counts (-1 elsewhere), weight per position.
struct lora_micro_batch {
    std::vector<llama_token>  token;
    std::vector<llama_pos>    pos;
    std::vector<llama_seq_id> seq_id;
    std::vector<int32_t>      target;
    std::vector<float>        weight;
};

// torch.optim.AdamW semantics: decoupled weight decay, bias-corrected moments.
struct adamw_params {
    float lr            = 5e-5f;
    float beta1         = 0.9f;
    float beta2         = 0.999f;
    float eps           = 1e-8f;
    float weight_decay  = 0.0f;
    float max_grad_norm = 0.0f; // clip the global L2 norm of the gradient; 0: no clipping
};

struct lora_step_result {
    double  loss      = 0;  // sum over the micro-batches of sum_t weight_t * CE_t
    double  grad_norm = 0;  // global L2 norm of the gradient before clipping
    int64_t n_targets = 0;  // positions with a target
};

// One trainable matrix: the adapter's tensor, its gradient accumulator, the host copy and AdamW moments.
struct lora_param {
    std::string   name;  // "<base tensor>.lora_a" / ".lora_b"
    int64_t       ne0 = 0, ne1 = 0;
    ggml_tensor * tensor = nullptr;
    ggml_tensor * grad   = nullptr;
    std::vector<float> value, m, v;
};

class lora_trainer {
public:
    explicit lora_trainer(const lora_trainer_params & params);
    ~lora_trainer();
    lora_trainer(const lora_trainer &) = delete;
    lora_trainer & operator=(const lora_trainer &) = delete;

    // Forward + backward over every micro-batch (gradients accumulate), then one AdamW update.
    // `dropout_seed` makes the LoRA dropout masks reproducible (each micro-batch derives its own).
    lora_step_result train_step(const std::vector<lora_micro_batch> & batches, const adamw_params & opt,
                                float dropout, uint64_t dropout_seed, const std::atomic<bool> * cancel);

    // The gradient of the summed loss over the micro-batches (one vector per parameter, in params()
    // order), without updating anything.
    lora_step_result gradients(const std::vector<lora_micro_batch> & batches, float dropout, uint64_t dropout_seed,
                               const std::atomic<bool> * cancel, std::vector<std::vector<float>> & grads);

    // Loss without gradients or dropout; with `logits`, also the logits of every position with a
    // target (rows of n_vocab, batch by batch).
    lora_step_result evaluate(const std::vector<lora_micro_batch> & batches, std::vector<float> * logits,
                              const std::atomic<bool> * cancel);

    const std::vector<lora_param> & params() const { return params_; }
    int64_t step() const { return step_; }
    float   alpha() const;
    int32_t n_vocab() const;

    // Restores A/B, the moments and the step counter of a checkpoint (names and sizes must match).
    void set_state(const std::vector<lora_param> & state, int64_t step);

    std::mutex & mutex() { return mutex_; }

private:
    double run(const lora_micro_batch & b, bool backward, float dropout, uint64_t seed, float * logits);
    lora_step_result accumulate(const std::vector<lora_micro_batch> & batches, float dropout, uint64_t dropout_seed,
                                const std::atomic<bool> * cancel, std::vector<std::vector<float>> & grads);
    void   check_batch(const lora_micro_batch & b, size_t index) const;
    void   release();

    lora_trainer_params    p_;
    llama_model          * model_   = nullptr;
    llama_context        * ctx_     = nullptr;
    llama_adapter_lora   * adapter_ = nullptr;
    std::vector<ggml_context *>        grad_ctxs_;
    std::vector<ggml_backend_buffer_t> grad_bufs_;
    std::vector<lora_param> params_;
    std::vector<ggml_tensor *> param_tensors_, grad_tensors_;
    int64_t step_ = 0;
    std::mutex mutex_;
};

} // namespace ppc
