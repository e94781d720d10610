#include "common/async.h"

namespace ppc {

std::string arg_string(const Napi::CallbackInfo & info, size_t i, const char * name) {
    if (info.Length() <= i || !info[i].IsString()) {
        throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
    }
    return info[i].As<Napi::String>().Utf8Value();
}

Napi::Object arg_object(const Napi::CallbackInfo & info, size_t i, const char * name) {
    if (info.Length() <= i || !info[i].IsObject()) {
        throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an object");
    }
    return info[i].As<Napi::Object>();
}

Napi::Function opt_function(const Napi::Object & obj, const char * key) {
    if (!obj.Has(key)) return Napi::Function();
    Napi::Value v = obj.Get(key);
    if (v.IsUndefined() || v.IsNull()) return Napi::Function();
    if (!v.IsFunction()) {
        throw Napi::TypeError::New(obj.Env(), std::string(key) + " must be a function");
    }
    return v.As<Napi::Function>();
}

} // namespace ppc
