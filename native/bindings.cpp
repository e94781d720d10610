// The registry of capability bindings: one line per capability.
#include "addon.h"

namespace ppc {

void register_extensions(Napi::Env env, Napi::Object exports) {
    (void) env;
    (void) exports;
}

} // namespace ppc
