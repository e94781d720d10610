// Node-API bindings of LoRA training (lora/trainer.h), merging (lora/merge.h) and adapter inference
// (lora/infer.h): the LoraTrainer class, loraMerge and loraLogits; every slow call returns a Promise.
#include "addon.h"
#include "common/async.h"
#include "common/napi_args.h"
#include "lora/infer.h"
#include "lora/merge.h"
#include "lora/trainer.h"

#include <cmath>
#include <memory>

namespace ppc {

namespace {

template <typename T, napi_typedarray_type type>
std::vector<T> typed_vector(const Napi::Object & o, const char * key, const std::string & at, const char * type_name) {
    Napi::Value v = o.Get(key);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
        throw Napi::TypeError::New(o.Env(), at + "." + key + " must be a " + type_name);
    }
    Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
    return std::vector<T>(a.Data(), a.Data() + a.ElementLength());
}

std::shared_ptr<std::vector<lora_micro_batch>> micro_batches(Napi::Value v) {
    Napi::Env env = v.Env();
    if (!v.IsArray()) throw Napi::TypeError::New(env, "batches must be an array of micro-batches");
    Napi::Array arr = v.As<Napi::Array>();
    auto out = std::make_shared<std::vector<lora_micro_batch>>(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        const std::string at = "batches[" + std::to_string(i) + "]";
        if (!arr.Get(i).IsObject()) throw Napi::TypeError::New(env, at + " must be {tokens, positions, seqIds, targets, weights}");
        Napi::Object o = arr.Get(i).As<Napi::Object>();
        lora_micro_batch & b = (*out)[i];
        b.token  = typed_vector<int32_t, napi_int32_array>(o, "tokens", at, "Int32Array");
        b.pos    = typed_vector<int32_t, napi_int32_array>(o, "positions", at, "Int32Array");
        b.seq_id = typed_vector<int32_t, napi_int32_array>(o, "seqIds", at, "Int32Array");
        b.target = typed_vector<int32_t, napi_int32_array>(o, "targets", at, "Int32Array");
        b.weight = typed_vector<float, napi_float32_array>(o, "weights", at, "Float32Array");
    }
    return out;
}

Napi::Float32Array float32_array(Napi::Env env, const std::vector<float> & v) {
    Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    return a;
}

Napi::Object step_result(Napi::Env env, const lora_step_result & r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", r.loss);
    o.Set("gradNorm", r.grad_norm);
    o.Set("targets", (double) r.n_targets);
    return o;
}

// The options of LoraTrainer.open({modelPath, adapterPath, contextSize, sequences, threads, gpuLayers})
lora_trainer_params trainer_params(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = arg_object(info, 0, "options");
    lora_trainer_params p;
    if (!o.Get("modelPath").IsString() || !o.Get("adapterPath").IsString()) {
        throw Napi::TypeError::New(env, "options.modelPath and options.adapterPath must be strings");
    }
    p.model_path   = o.Get("modelPath").As<Napi::String>().Utf8Value();
    p.adapter_path = o.Get("adapterPath").As<Napi::String>().Utf8Value();
    p.n_ctx        = (uint32_t) opt_number(o, "contextSize", p.n_ctx, 2, 1 << 20, true);
    p.n_seq_max    = (uint32_t) opt_number(o, "sequences", p.n_seq_max, 1, k_lora_max_sequences, true);
    p.n_threads    = (int32_t) opt_number(o, "threads", 0, 0, 1024, true);
    p.n_gpu_layers = (int32_t) opt_number(o, "gpuLayers", 0, -1, 100000, true);
    return p;
}

// The AdamW options of step({lr, beta1, beta2, eps, weightDecay, maxGradNorm, ...})
adamw_params adamw_options(const Napi::Object & o) {
    adamw_params opt;
    opt.lr            = (float) opt_number(o, "lr", opt.lr, 0, 1e3);
    opt.beta1         = (float) opt_number(o, "beta1", opt.beta1, 0, 0.999999);
    opt.beta2         = (float) opt_number(o, "beta2", opt.beta2, 0, 0.999999999);
    opt.eps           = (float) opt_number(o, "eps", opt.eps, 1e-30, 1);
    opt.weight_decay  = (float) opt_number(o, "weightDecay", opt.weight_decay, 0, 1e3);
    opt.max_grad_norm = (float) opt_number(o, "maxGradNorm", opt.max_grad_norm, 0, 1e30);
    return opt;
}

struct dropout_options {
    float p = 0;
    uint64_t seed = 0;
};

// {dropout, dropoutSeed}: a seed of up to 53 bits travels as a number
dropout_options dropout_of(const Napi::Object & o) {
    return {(float) opt_number(o, "dropout", 0, 0, 0.99), (uint64_t) opt_number(o, "dropoutSeed", 0, 0, 9007199254740991.0, true)};
}

// [{name, shape}] of the trainable tensors, with their values and AdamW moments if `with_state`
Napi::Array tensor_list(Napi::Env env, const std::vector<lora_param> & params, bool with_state) {
    Napi::Array tensors = Napi::Array::New(env, params.size());
    for (size_t i = 0; i < params.size(); ++i) {
        const lora_param & lp = params[i];
        Napi::Object e = Napi::Object::New(env);
        e.Set("name", lp.name);
        Napi::Array shape = Napi::Array::New(env, 2);
        shape.Set(0u, (double) lp.ne0);
        shape.Set(1u, (double) lp.ne1);
        e.Set("shape", shape);
        if (with_state) {
            e.Set("value", float32_array(env, lp.value));
            e.Set("m", float32_array(env, lp.m));
            e.Set("v", float32_array(env, lp.v));
        }
        tensors.Set((uint32_t) i, e);
    }
    return tensors;
}

// The tensors of setState({step, tensors: [{name, shape, value, m, v}]})
std::vector<lora_param> state_tensors(const Napi::Object & o) {
    Napi::Env env = o.Env();
    if (!o.Get("tensors").IsArray()) throw Napi::TypeError::New(env, "state.tensors must be an array");
    Napi::Array arr = o.Get("tensors").As<Napi::Array>();
    std::vector<lora_param> state(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        const std::string at = "state.tensors[" + std::to_string(i) + "]";
        if (!arr.Get(i).IsObject()) throw Napi::TypeError::New(env, at + " must be an object");
        Napi::Object e = arr.Get(i).As<Napi::Object>();
        if (!e.Get("name").IsString() || !e.Get("shape").IsArray() || e.Get("shape").As<Napi::Array>().Length() != 2) {
            throw Napi::TypeError::New(env, at + " needs a name and a shape of two dimensions");
        }
        state[i].name  = e.Get("name").As<Napi::String>().Utf8Value();
        state[i].ne0   = (int64_t) e.Get("shape").As<Napi::Array>().Get(0u).ToNumber().DoubleValue();
        state[i].ne1   = (int64_t) e.Get("shape").As<Napi::Array>().Get(1u).ToNumber().DoubleValue();
        state[i].value = typed_vector<float, napi_float32_array>(e, "value", at, "Float32Array");
        state[i].m     = typed_vector<float, napi_float32_array>(e, "m", at, "Float32Array");
        state[i].v     = typed_vector<float, napi_float32_array>(e, "v", at, "Float32Array");
    }
    return state;
}

struct gradient_output {
    lora_step_result r;
    std::vector<std::vector<float>> grads;
};

struct eval_output {
    lora_step_result r;
    std::vector<float> logits;
    bool with_logits = false;
};

// JS's LoraTrainer: a model with its adapter's A/B trainable, gradients and AdamW state (lora/trainer.h).
//   LoraTrainer.open({modelPath, adapterPath, ...}) -> Promise<LoraTrainer>
//   info(), step(), gradients(), evaluate(), state(), setState(), cancel(), close()
class LoraTrainerObject : public Napi::ObjectWrap<LoraTrainerObject> {
public:
    static constexpr const char * k_name = "LoraTrainer";
    static constexpr napi_type_tag k_tag = {0x7070632d6c6f7261ull, 0x2d747261696e6572ull};

    static Napi::Function define(Napi::Env env) {
        return DefineClass(env, k_name, {
            StaticMethod<&LoraTrainerObject::open>("open"),
            InstanceMethod<&LoraTrainerObject::info>("info"),
            InstanceMethod<&LoraTrainerObject::step>("step"),
            InstanceMethod<&LoraTrainerObject::gradients>("gradients"),
            InstanceMethod<&LoraTrainerObject::evaluate>("evaluate"),
            InstanceMethod<&LoraTrainerObject::state>("state"),
            InstanceMethod<&LoraTrainerObject::set_state>("setState"),
            InstanceMethod<&LoraTrainerObject::cancel>("cancel"),
            InstanceMethod<&LoraTrainerObject::close>("close"),
        });
    }

    explicit LoraTrainerObject(const Napi::CallbackInfo & info)
        : Napi::ObjectWrap<LoraTrainerObject>(info), trainer_(wrapped_arg<lora_trainer>(info, k_name, k_tag)) {}

private:
    static Napi::Value open(const Napi::CallbackInfo & info) {
        const lora_trainer_params p = trainer_params(info);
        return run_async<std::shared_ptr<lora_trainer>>(info.Env(),
            [p](const progress_fn &) { return std::make_shared<lora_trainer>(p); },
            [](Napi::Env env, std::shared_ptr<lora_trainer> & t) -> Napi::Value { return new_wrapped(env, k_name, k_tag, t); });
    }

    std::shared_ptr<lora_trainer> live(Napi::Env env) const {
        if (!trainer_) throw Napi::Error::New(env, "the trainer was closed");
        return trainer_;
    }

    // The cancel flag of the call about to start (cleared), shared with it.
    std::shared_ptr<std::atomic<bool>> start_call() {
        cancel_->store(false);
        return cancel_;
    }

    // info() -> {alpha, nVocab, step, tensors: [{name, shape}]}
    Napi::Value info(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        std::shared_ptr<lora_trainer> t = live(env);
        std::lock_guard<std::mutex> lock(t->mutex());
        Napi::Object o = Napi::Object::New(env);
        o.Set("alpha", t->alpha());
        o.Set("nVocab", t->n_vocab());
        o.Set("step", (double) t->step());
        o.Set("tensors", tensor_list(env, t->params(), false));
        return o;
    }

    // step(batches, {lr, beta1, beta2, eps, weightDecay, maxGradNorm, dropout, dropoutSeed}) -> Promise<{loss, gradNorm, targets}>
    Napi::Value step(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        if (info.Length() < 2) throw Napi::TypeError::New(env, "step(batches, options)");
        std::shared_ptr<lora_trainer> t = live(env);
        auto batches = micro_batches(info[0]);
        Napi::Object o = arg_object(info, 1, "options");
        const adamw_params opt = adamw_options(o);
        const dropout_options d = dropout_of(o);
        auto cancel = start_call();
        return run_async<lora_step_result>(env,
            [t, batches, opt, d, cancel](const progress_fn &) {
                std::lock_guard<std::mutex> lock(t->mutex());
                return t->train_step(*batches, opt, d.p, d.seed, cancel.get());
            },
            [](Napi::Env env, lora_step_result & r) -> Napi::Value { return step_result(env, r); });
    }

    // gradients(batches, {dropout, dropoutSeed}?) -> Promise<{loss, gradNorm, targets, gradients}>
    Napi::Value gradients(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1) throw Napi::TypeError::New(env, "gradients(batches, options?)");
        std::shared_ptr<lora_trainer> t = live(env);
        auto batches = micro_batches(info[0]);
        const dropout_options d = info.Length() > 1 && info[1].IsObject() ? dropout_of(info[1].As<Napi::Object>()) : dropout_options{};
        auto cancel = start_call();
        return run_async<gradient_output>(env,
            [t, batches, d, cancel](const progress_fn &) {
                std::lock_guard<std::mutex> lock(t->mutex());
                gradient_output out;
                out.r = t->gradients(*batches, d.p, d.seed, cancel.get(), out.grads);
                return out;
            },
            [](Napi::Env env, gradient_output & out) -> Napi::Value {
                Napi::Object o = step_result(env, out.r);
                Napi::Array grads = Napi::Array::New(env, out.grads.size());
                for (size_t i = 0; i < out.grads.size(); ++i) grads.Set((uint32_t) i, float32_array(env, out.grads[i]));
                o.Set("gradients", grads);
                return o;
            });
    }

    // evaluate(batches, {logits?}) -> Promise<{loss, targets, logits?: Float32Array}>
    Napi::Value evaluate(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1) throw Napi::TypeError::New(env, "evaluate(batches, options?)");
        std::shared_ptr<lora_trainer> t = live(env);
        auto batches = micro_batches(info[0]);
        const bool with_logits = info.Length() > 1 && info[1].IsObject() && info[1].As<Napi::Object>().Get("logits").ToBoolean();
        auto cancel = start_call();
        return run_async<eval_output>(env,
            [t, batches, with_logits, cancel](const progress_fn &) {
                std::lock_guard<std::mutex> lock(t->mutex());
                eval_output out;
                out.with_logits = with_logits;
                out.r = t->evaluate(*batches, with_logits ? &out.logits : nullptr, cancel.get());
                return out;
            },
            [](Napi::Env env, eval_output & out) -> Napi::Value {
                Napi::Object o = step_result(env, out.r);
                o.Delete("gradNorm");
                if (out.with_logits) o.Set("logits", float32_array(env, out.logits));
                return o;
            });
    }

    // state() -> {step, tensors: [{name, shape, value, m, v}]}
    Napi::Value state(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        std::shared_ptr<lora_trainer> t = live(env);
        std::lock_guard<std::mutex> lock(t->mutex());
        Napi::Object o = Napi::Object::New(env);
        o.Set("step", (double) t->step());
        o.Set("tensors", tensor_list(env, t->params(), true));
        return o;
    }

    // setState({step, tensors: [{name, shape, value, m, v}]})
    Napi::Value set_state(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        std::shared_ptr<lora_trainer> t = live(env);
        Napi::Object o = arg_object(info, 0, "state");
        const int64_t step = (int64_t) opt_number(o, "step", 0, 0, 9007199254740991.0, true);
        std::vector<lora_param> state = state_tensors(o);
        std::lock_guard<std::mutex> lock(t->mutex());
        try {
            t->set_state(state, step);
        } catch (const std::exception & e) {
            throw Napi::Error::New(env, e.what());
        }
        return env.Undefined();
    }

    // Stops the call in flight between micro-batches (it rejects with "cancelled"); nothing after close().
    Napi::Value cancel(const Napi::CallbackInfo & info) {
        cancel_->store(true);
        return info.Env().Undefined();
    }

    // Releases the trainer once the call in flight (if any) has finished with it.
    Napi::Value close(const Napi::CallbackInfo & info) {
        cancel_->store(true);
        trainer_.reset();
        return info.Env().Undefined();
    }

    std::shared_ptr<lora_trainer> trainer_;
    std::shared_ptr<std::atomic<bool>> cancel_ = std::make_shared<std::atomic<bool>>(false);
};

// loraMerge(base, adapter, output, {scale}, onProgress?) -> Promise<{merged, alpha, rank, bytesWritten}>
Napi::Value merge_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const std::string base = arg_string(info, 0, "base");
    const std::string adapter = arg_string(info, 1, "adapter");
    const std::string output = arg_string(info, 2, "output");
    float scale = 1.0f;
    if (info.Length() > 3 && info[3].IsObject()) scale = (float) opt_number(info[3].As<Napi::Object>(), "scale", 1.0, -1e6, 1e6);
    Napi::Function on_progress = opt_arg_function(info, 4);
    return run_async<lora_merge_result>(env,
        [base, adapter, output, scale](const progress_fn & progress) {
            return merge_lora(base, adapter, output, scale, progress, nullptr);
        },
        [](Napi::Env env, lora_merge_result & r) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            Napi::Array merged = Napi::Array::New(env, r.merged.size());
            for (size_t i = 0; i < r.merged.size(); ++i) merged.Set((uint32_t) i, r.merged[i]);
            o.Set("merged", merged);
            o.Set("alpha", r.alpha);
            o.Set("rank", r.rank);
            o.Set("bytesWritten", (double) r.bytes_written);
            return o;
        },
        on_progress);
}

// loraLogits(modelPath, [{path, scale}], tokens, {threads, gpuLayers}) -> Promise<Float32Array>
Napi::Value logits_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const std::string model = arg_string(info, 0, "modelPath");
    if (info.Length() < 3 || !info[1].IsArray()) throw Napi::TypeError::New(env, "loraLogits(modelPath, adapters, tokens, options?)");
    std::vector<lora_file> adapters;
    Napi::Array arr = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Value e = arr.Get(i);
        if (!e.IsObject() || !e.As<Napi::Object>().Get("path").IsString()) {
            throw Napi::TypeError::New(env, "adapters[" + std::to_string(i) + "] must be {path: string, scale?: number}");
        }
        lora_file f;
        f.path = e.As<Napi::Object>().Get("path").As<Napi::String>().Utf8Value();
        f.scale = (float) opt_number(e.As<Napi::Object>(), "scale", 1.0, -1e6, 1e6);
        adapters.push_back(f);
    }
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
        throw Napi::TypeError::New(env, "tokens must be an Int32Array");
    }
    Napi::Int32Array ta = info[2].As<Napi::Int32Array>();
    std::vector<llama_token> tokens(ta.Data(), ta.Data() + ta.ElementLength());
    int32_t threads = 0, gpu_layers = 0;
    if (info.Length() > 3 && info[3].IsObject()) {
        threads = (int32_t) opt_number(info[3].As<Napi::Object>(), "threads", 0, 0, 1024, true);
        gpu_layers = (int32_t) opt_number(info[3].As<Napi::Object>(), "gpuLayers", 0, -1, 100000, true);
    }
    return run_async<std::vector<float>>(env,
        [model, adapters, tokens, threads, gpu_layers](const progress_fn &) {
            return lora_inference_logits(model, adapters, tokens, threads, gpu_layers);
        },
        [](Napi::Env env, std::vector<float> & v) -> Napi::Value { return float32_array(env, v); });
}

} // namespace

void register_lora(Napi::Env env, Napi::Object exports) {
    register_class(env, exports, LoraTrainerObject::k_name, LoraTrainerObject::define(env));
    exports.Set("loraMerge", Napi::Function::New(env, merge_js, "loraMerge"));
    exports.Set("loraLogits", Napi::Function::New(env, logits_js, "loraLogits"));
}

} // namespace ppc
