#include "common/napi_args.h"

#include <cmath>
#include <iomanip>
#include <sstream>

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

std::vector<int32_t> int32_tokens(const Napi::Value & v, const std::string & what) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
        throw Napi::TypeError::New(v.Env(), what + " must be an Int32Array");
    }
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

Napi::Function opt_arg_function(const Napi::CallbackInfo & info, size_t i) {
    return info.Length() > i && info[i].IsFunction() ? info[i].As<Napi::Function>() : Napi::Function();
}

int32_t opt_arg_int32(const Napi::CallbackInfo & info, size_t i, int32_t def) {
    return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().Int32Value() : def;
}

int64_t opt_arg_int64(const Napi::CallbackInfo & info, size_t i, int64_t def) {
    return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().Int64Value() : def;
}

bool opt_arg_bool(const Napi::CallbackInfo & info, size_t i) { return info.Length() > i && info[i].ToBoolean(); }

Napi::Function opt_function(const Napi::Object & obj, const char * key) {
    if (!obj.Has(key)) return Napi::Function();
    Napi::Value v = obj.Get(key);
    if (v.IsUndefined() || v.IsNull()) return Napi::Function();
    if (!v.IsFunction()) {
        throw Napi::TypeError::New(obj.Env(), std::string(key) + " must be a function");
    }
    return v.As<Napi::Function>();
}

namespace {

// 1, 0.95, 16777216: how a JS user writes numbers (std::to_string would print 1.000000).
std::string format_number(double d) {
    std::ostringstream os;
    os << std::setprecision(12) << d;
    return os.str();
}

} // namespace

double opt_number(const Napi::Object & o, const char * key, double def, double lo, double hi, bool integer) {
    if (!o.Has(key) || o.Get(key).IsUndefined()) return def;
    Napi::Value v = o.Get(key);
    if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= lo && d <= hi) || (integer && d != std::floor(d))) {
        throw Napi::RangeError::New(o.Env(), std::string(key) + " must be " + (integer ? "an integer " : "") + "in [" +
                                             format_number(lo) + ", " + format_number(hi) + "], got " + format_number(d));
    }
    return d;
}

void export_functions(Napi::Env env, Napi::Object exports, std::initializer_list<js_function> functions) {
    for (const js_function & f : functions) exports.Set(f.name, Napi::Function::New(env, f.callback));
}

} // namespace ppc
