// Bindings: quantizeModel (llama.cpp's quantizer, off the JS thread) and quantizeTypes.
#include "addon.h"
#include "common/async.h"
#include "common/napi_args.h"
#include "quantize/quantize_model.h"

namespace ppc {

namespace {

quantize_kv kv_from_js(Napi::Env env, const Napi::Value & v) {
    if (!v.IsObject()) throw Napi::TypeError::New(env, "each metadata override must be {key, type, value}");
    Napi::Object o = v.As<Napi::Object>();
    quantize_kv kv;
    kv.key = o.Get("key").ToString().Utf8Value();
    const std::string type = o.Get("type").ToString().Utf8Value();
    Napi::Value value = o.Get("value");
    if (type == "str" && value.IsString()) {
        kv.tag = quantize_kv::STR;
        kv.s = value.As<Napi::String>().Utf8Value();
    } else if (type == "int" && value.IsNumber()) {
        kv.tag = quantize_kv::INT;
        kv.i = value.As<Napi::Number>().Int64Value();
    } else if (type == "float" && value.IsNumber()) {
        kv.tag = quantize_kv::FLOAT;
        kv.f = value.As<Napi::Number>().DoubleValue();
    } else if (type == "bool" && value.IsBoolean()) {
        kv.tag = quantize_kv::BOOL;
        kv.b = value.As<Napi::Boolean>().Value();
    } else {
        throw Napi::TypeError::New(env, "metadata override " + kv.key + ": type must be str, int, float or bool with a value of that type");
    }
    return kv;
}

std::vector<imatrix_values> imatrix_from_js(Napi::Env env, const Napi::Value & v) {
    std::vector<imatrix_values> out;
    if (v.IsUndefined() || v.IsNull()) return out;
    if (!v.IsArray()) throw Napi::TypeError::New(env, "imatrix must be an array of {name, values: Float32Array}");
    Napi::Array arr = v.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Value item = arr.Get(i);
        if (!item.IsObject()) throw Napi::TypeError::New(env, "imatrix entries must be {name, values: Float32Array}");
        Napi::Object o = item.As<Napi::Object>();
        Napi::Value values = o.Get("values");
        if (!values.IsTypedArray() || values.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
            throw Napi::TypeError::New(env, "imatrix entry values must be a Float32Array");
        }
        Napi::Float32Array f = values.As<Napi::Float32Array>();
        out.push_back({o.Get("name").ToString().Utf8Value(), std::vector<float>(f.Data(), f.Data() + f.ElementLength())});
    }
    return out;
}

Napi::Value quantize_model_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const std::string in_path = arg_string(info, 0, "input path");
    const std::string out_path = arg_string(info, 1, "output path");
    Napi::Object o = arg_object(info, 2, "options");
    quantize_options opts;
    opts.type = o.Get("type").ToString().Utf8Value();
    opts.threads = (int32_t) opt_number(o, "threads", 0, 0, 1024, true);
    opts.allow_requantize = o.Get("allowRequantize").ToBoolean();
    opts.pure = o.Get("pure").ToBoolean();
    opts.imatrix = imatrix_from_js(env, o.Get("imatrix"));
    Napi::Value overrides = o.Get("overrides");
    if (overrides.IsArray()) {
        Napi::Array arr = overrides.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); ++i) opts.overrides.push_back(kv_from_js(env, arr.Get(i)));
    }
    Napi::Function on_progress = opt_arg_function(info, 3);
    return run_async<quantize_result>(env,
        [in_path, out_path, opts](const progress_fn & report) { return quantize_model(in_path, out_path, opts, report); },
        [](Napi::Env env, quantize_result & r) -> Napi::Value {
            Napi::Object res = Napi::Object::New(env);
            res.Set("type", r.type);
            res.Set("ftype", r.ftype);
            res.Set("tensors", r.tensors);
            res.Set("bytesIn", (double) r.bytes_in);
            res.Set("bytesOut", (double) r.bytes_out);
            return res;
        },
        on_progress);
}

Napi::Value quantize_types_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const auto & types = quantize_types();
    Napi::Array out = Napi::Array::New(env, types.size());
    for (size_t i = 0; i < types.size(); ++i) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", types[i].name);
        o.Set("ftype", types[i].ftype);
        o.Set("description", types[i].description);
        out.Set((uint32_t) i, o);
    }
    return out;
}

} // namespace

void register_quantize(Napi::Env env, Napi::Object exports) {
    export_functions(env, exports, {{"quantizeModel", quantize_model_js}, {"quantizeTypes", quantize_types_js}});
}

} // namespace ppc
