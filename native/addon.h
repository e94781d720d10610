// What binding files share. Each capability keeps its bindings in its own folder and exports a
// register_*(env, exports) function, called from register_extensions() in bindings.cpp.
#pragma once

#include <napi.h>

#include "capture/model.h"

#include <memory>

namespace ppc {

// The llama_session behind a JS Model object from loadModel(); throws a JS TypeError otherwise.
std::shared_ptr<llama_session> unwrap_model(Napi::Value v);

// Adds every capability's bindings to the module's exports (bindings.cpp).
void register_extensions(Napi::Env env, Napi::Object exports);

// capture/layer_scores_bindings.cpp: layerScores, dumpHiddenStates
void register_layer_scores(Napi::Env env, Napi::Object exports);

// Log-likelihood scoring (capture/loglik_bindings.cpp).
void register_loglik(Napi::Env env, Napi::Object exports);
// Token embeddings, neighbour search, CusText clusters (embed/bindings.cpp).
void register_embed(Napi::Env env, Napi::Object exports);
// LoRA training, adapter inference and merging (lora/bindings.cpp).
void register_lora(Napi::Env env, Napi::Object exports);
// Continuous-batching text generation (generate/bindings.cpp).
void register_generate(Napi::Env env, Napi::Object exports);
// Model quantization by llama.cpp's quantizer (quantize/bindings.cpp).
void register_quantize(Napi::Env env, Napi::Object exports);

} // namespace ppc
