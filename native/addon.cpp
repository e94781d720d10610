// The ppc-gpt native addon's entry point: the Model class (loadModel), systemInfo, the class
// registry (addon.h), and every capability's bindings (bindings.cpp). Bindings are thin: argument
// checking and conversion only; the work lives in gguf/, capture/, embed/, generate/ and lora/.
// Everything slower than a few milliseconds returns a promise and runs off the JS thread.
#include <napi.h>

#include "addon.h"
#include "capture/model.h"
#include "common/async.h"
#include "common/napi_args.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "llama.h"

#include <memory>

namespace ppc {
namespace {

Napi::Value system_info_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("llama", llama_print_system_info());
#ifdef PPC_CUDA
    o.Set("cuda", true);
#else
    o.Set("cuda", false);
#endif
    Napi::Array devices = Napi::Array::New(env);
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        Napi::Object d = Napi::Object::New(env);
        d.Set("name", ggml_backend_dev_name(dev));
        d.Set("description", ggml_backend_dev_description(dev));
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        d.Set("memoryTotal", (double) total);
        devices.Set((uint32_t) i, d);
    }
    o.Set("devices", devices);
    return o;
}

// ---------------------------------------------------------------- models

class Model : public Napi::ObjectWrap<Model> {
public:
    static Napi::Function define(Napi::Env env) {
        return DefineClass(env, "Model", {
            InstanceMethod<&Model::info>("info"),
            InstanceMethod<&Model::tokenize>("tokenize"),
            InstanceMethod<&Model::token_to_piece>("tokenToPiece"),
            InstanceMethod<&Model::detokenize>("detokenize"),
            InstanceMethod<&Model::eval_logits>("evalLogits"),
            InstanceMethod<&Model::close>("close"),
        });
    }

    explicit Model(const Napi::CallbackInfo & info) : Napi::ObjectWrap<Model>(info) {
        if (info.Length() < 1 || !info[0].IsExternal()) {
            throw Napi::TypeError::New(info.Env(), "Model objects come from loadModel()");
        }
        session_ = *info[0].As<Napi::External<std::shared_ptr<llama_session>>>().Data();
    }

private:
    std::shared_ptr<llama_session> live(Napi::Env env) const {
        if (!session_) throw Napi::Error::New(env, "the model was closed");
        return session_;
    }

    Napi::Value info(const Napi::CallbackInfo & info) {
        auto s = live(info.Env());
        Napi::Object o = Napi::Object::New(info.Env());
        char desc[256];
        llama_model_desc(s->model(), desc, sizeof(desc));
        o.Set("description", desc);
        o.Set("nLayer", llama_model_n_layer(s->model()));
        o.Set("nEmbd", llama_model_n_embd(s->model()));
        o.Set("nVocab", s->n_vocab());
        o.Set("nCtxTrain", llama_model_n_ctx_train(s->model()));
        o.Set("nParams", (double) llama_model_n_params(s->model()));
        o.Set("sizeBytes", (double) llama_model_size(s->model()));
        o.Set("bos", llama_vocab_bos(s->vocab()));
        o.Set("eos", llama_vocab_eos(s->vocab()));
        return o;
    }

    Napi::Value tokenize(const Napi::CallbackInfo & info) {
        auto s = live(info.Env());
        const std::string text = arg_string(info, 0, "text");
        const bool add_special   = opt_arg_bool(info, 1);
        const bool parse_special = opt_arg_bool(info, 2);
        const std::vector<llama_token> t = s->tokenize(text, add_special, parse_special);
        Napi::Int32Array out = Napi::Int32Array::New(info.Env(), t.size());
        std::copy(t.begin(), t.end(), out.Data());
        return out;
    }

    Napi::Value token_to_piece(const Napi::CallbackInfo & info) {
        auto s = live(info.Env());
        if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "token must be a number");
        return Napi::String::New(info.Env(), s->token_to_piece(info[0].As<Napi::Number>().Int32Value()));
    }

    Napi::Value detokenize(const Napi::CallbackInfo & info) {
        auto s = live(info.Env());
        if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
            throw Napi::TypeError::New(info.Env(), "tokens must be an Int32Array");
        }
        Napi::Int32Array ta = info[0].As<Napi::Int32Array>();
        const bool remove_special  = opt_arg_bool(info, 1);
        const bool unparse_special = opt_arg_bool(info, 2);
        return Napi::String::New(info.Env(), s->detokenize(std::vector<llama_token>(ta.Data(), ta.Data() + ta.ElementLength()),
                                                           remove_special, unparse_special));
    }

    Napi::Value eval_logits(const Napi::CallbackInfo & info) {
        auto s = live(info.Env());
        if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
            throw Napi::TypeError::New(info.Env(), "tokens must be an Int32Array");
        }
        Napi::Int32Array ta = info[0].As<Napi::Int32Array>();
        std::vector<llama_token> tokens(ta.Data(), ta.Data() + ta.ElementLength());
        return run_async<std::vector<float>>(info.Env(),
            [s, tokens](const progress_fn &) {
                std::lock_guard<std::mutex> lock(s->mutex());
                return s->eval_logits(tokens);
            },
            [](Napi::Env env, std::vector<float> & logits) -> Napi::Value {
                Napi::Float32Array out = Napi::Float32Array::New(env, logits.size());
                std::copy(logits.begin(), logits.end(), out.Data());
                return out;
            });
    }

    Napi::Value close(const Napi::CallbackInfo & info) {
        session_.reset();  // in-flight work holds its own reference
        return info.Env().Undefined();
    }

    std::shared_ptr<llama_session> session_;

public:
    static std::shared_ptr<llama_session> unwrap(Napi::Value v) {
        if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), "expected a Model from loadModel()");
        Napi::Object o = v.As<Napi::Object>();
        if (!is_instance(o, "Model")) throw Napi::TypeError::New(v.Env(), "expected a Model from loadModel()");
        Model * m = Napi::ObjectWrap<Model>::Unwrap(o);
        if (!m->session_) throw Napi::Error::New(v.Env(), "the model was closed");
        return m->session_;
    }
};


Napi::Value load_model_js(const Napi::CallbackInfo & info) {
    const std::string path = arg_string(info, 0, "path");
    model_params p;
    if (info.Length() > 1 && info[1].IsObject()) {
        Napi::Object o = info[1].As<Napi::Object>();
        auto num = [&](const char * key, auto & dst) {
            if (o.Has(key) && o.Get(key).IsNumber()) dst = (std::remove_reference_t<decltype(dst)>) o.Get(key).As<Napi::Number>().Int64Value();
        };
        num("gpuLayers", p.n_gpu_layers);
        num("threads", p.n_threads);
        num("contextSize", p.n_ctx);
        num("batchSize", p.n_batch);
        if (o.Has("vocabOnly")) p.vocab_only = o.Get("vocabOnly").ToBoolean();
        if (o.Has("flashAttention") && o.Get("flashAttention").IsBoolean()) p.flash_attn = o.Get("flashAttention").ToBoolean() ? 1 : 0;
        if (o.Has("kvCacheType") && o.Get("kvCacheType").IsString()) {
            const std::string t = o.Get("kvCacheType").As<Napi::String>().Utf8Value();
            if (t != "f16" && t != "f32") throw Napi::RangeError::New(info.Env(), "kvCacheType must be \"f16\" or \"f32\"");
            p.kv_f32 = t == "f32";
        }
    }
    return run_async<std::shared_ptr<llama_session>>(info.Env(),
        [path, p](const progress_fn &) { return std::make_shared<llama_session>(path, p); },
        [](Napi::Env env, std::shared_ptr<llama_session> & s) -> Napi::Value {
            return env.GetInstanceData<addon_data>()->classes.at("Model").New({Napi::External<std::shared_ptr<llama_session>>::New(env, &s)});
        });
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
    install_llama_logger();
    llama_backend_init();
    env.SetInstanceData<addon_data>(new addon_data());
    // not exported: Model objects come from loadModel()
    env.GetInstanceData<addon_data>()->classes["Model"] = Napi::Persistent(Model::define(env));

    export_functions(env, exports, {{"systemInfo", system_info_js}, {"loadModel", load_model_js}});
    register_extensions(env, exports);
    return exports;
}

} // namespace

std::shared_ptr<llama_session> unwrap_model(Napi::Value v) { return Model::unwrap(v); }

void register_class(Napi::Env env, Napi::Object exports, const std::string & name, Napi::Function ctor) {
    env.GetInstanceData<addon_data>()->classes[name] = Napi::Persistent(ctor);
    exports.Set(name, ctor);
}

bool is_instance(Napi::Value v, const std::string & name) {
    auto & classes = v.Env().GetInstanceData<addon_data>()->classes;
    auto it = classes.find(name);
    return v.IsObject() && it != classes.end() && v.As<Napi::Object>().InstanceOf(it->second.Value());
}

} // namespace ppc

static Napi::Object init_addon(Napi::Env env, Napi::Object exports) { return ppc::init(env, exports); }

NODE_API_MODULE(ppc_gpt, init_addon)
