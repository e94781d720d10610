// What binding files share. Each capability keeps its bindings in its own folder and exports a
// register_*(env, exports) function, called from register_extensions() in bindings.cpp.
#pragma once

#include <napi.h>

#include "capture/model.h"

#include <map>
#include <memory>
#include <string>

namespace ppc {

// The llama_session behind a JS Model object from loadModel(); throws a JS TypeError otherwise.
std::shared_ptr<llama_session> unwrap_model(Napi::Value v);

// The addon's classes (Model, LoglikScorer, BatchGenerator, LoraTrainer, ...) are Napi::ObjectWrap
// classes whose JS objects only the addon makes: their open() resolves with one, built from the
// native object passed through a type-tagged External. Their constructors are kept per Node-API
// environment (each worker thread has its own), in the addon's instance data.
struct addon_data {
    std::map<std::string, Napi::FunctionReference> classes;
};

// Exports class `ctor` as `name` and keeps it for new_wrapped.
void register_class(Napi::Env env, Napi::Object exports, const std::string & name, Napi::Function ctor);
// Whether `v` is an object of class `name`.
bool is_instance(Napi::Value v, const std::string & name);

// A new JS object of class `name` holding `obj` (its constructor takes it with wrapped_arg).
template <typename T>
Napi::Object new_wrapped(Napi::Env env, const std::string & name, const napi_type_tag & tag, std::shared_ptr<T> obj) {
    Napi::External<std::shared_ptr<T>> ext = Napi::External<std::shared_ptr<T>>::New(env, &obj);
    ext.TypeTag(&tag);
    return env.GetInstanceData<addon_data>()->classes.at(name).New({ext});
}

// The native object a constructor of class `name` was called with by new_wrapped; a TypeError for
// anything else (a JS `new` of the class).
template <typename T>
std::shared_ptr<T> wrapped_arg(const Napi::CallbackInfo & info, const std::string & name, const napi_type_tag & tag) {
    if (info.Length() < 1 || !info[0].IsExternal() || !info[0].As<Napi::External<std::shared_ptr<T>>>().CheckTypeTag(&tag)) {
        throw Napi::TypeError::New(info.Env(), name + " objects come from " + name + ".open()");
    }
    return *info[0].As<Napi::External<std::shared_ptr<T>>>().Data();
}

// Adds every capability's bindings to the module's exports (bindings.cpp).
void register_extensions(Napi::Env env, Napi::Object exports);

// GGUF reading, layer removal, tensor sums and (de)quantization (gguf/bindings.cpp).
void register_gguf(Napi::Env env, Napi::Object exports);
// capture/layer_scores_bindings.cpp: layerScores, dumpHiddenStates
void register_layer_scores(Napi::Env env, Napi::Object exports);

// Log-likelihood scoring: the LoglikScorer class (capture/loglik_bindings.cpp).
void register_loglik(Napi::Env env, Napi::Object exports);
// Token embeddings, neighbour search, CusText clusters (embed/bindings.cpp).
void register_embed(Napi::Env env, Napi::Object exports);
// LoRA training (the LoraTrainer class), adapter inference and merging (lora/bindings.cpp).
void register_lora(Napi::Env env, Napi::Object exports);
// Continuous-batching text generation: the BatchGenerator class (generate/bindings.cpp).
void register_generate(Napi::Env env, Napi::Object exports);
// Model quantization by llama.cpp's quantizer (quantize/bindings.cpp).
void register_quantize(Napi::Env env, Napi::Object exports);

} // namespace ppc
