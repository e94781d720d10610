// The registry of capability bindings: one line per capability.
#include "addon.h"

namespace ppc {

void register_extensions(Napi::Env env, Napi::Object exports) {
    register_gguf(env, exports);
    register_loglik(env, exports);
    register_embed(env, exports);
    register_layer_scores(env, exports);
    register_lora(env, exports);
    register_generate(env, exports);
    register_quantize(env, exports);
}

} // namespace ppc
