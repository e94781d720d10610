// Node-API bindings of the GGUF tools (gguf/): reading a file's metadata and tensor table, layer
// removal, per-tensor absolute sums, (de)quantization of rows and the ggml type table.
#include "addon.h"
#include "common/async.h"
#include "common/napi_args.h"
#include "gguf/gguf_file.h"
#include "gguf/layer_removal.h"
#include "gguf/tensor_ops.h"

#include "ggml.h"

#include <cmath>
#include <cstring>

namespace ppc {
namespace {

// ---------------------------------------------------------------- GGUF reading

struct js_value {
    uint32_t type = 0;
    uint32_t elem_type = 0;
    uint64_t length = 0;
    bool truncated = false;
    std::vector<double> numbers;
    std::vector<int64_t> ints;   // exact value of 64-bit integers
    std::vector<std::string> strings;
};

struct js_kv {
    std::string key;
    js_value value;
};

struct gguf_summary {
    uint32_t version = 0, alignment = 0;
    uint64_t file_size = 0, data_offset = 0;
    std::vector<js_kv> kvs;
    std::vector<gguf_tensor_info> tensors;
};

js_value read_value(const gguf_file & f, const gguf_kv & kv, uint64_t max_values) {
    js_value v;
    v.type = kv.type;
    if (kv.type == GGUF_VT_STRING) {
        v.strings.push_back(f.scalar_string(kv));
    } else if (kv.type == GGUF_VT_ARRAY) {
        v.elem_type = kv.elem_type;
        v.length = kv.n_elem;
        const uint64_t n = std::min(kv.n_elem, max_values);
        v.truncated = n < kv.n_elem;
        for (uint64_t i = 0; i < n; ++i) {
            if (kv.elem_type == GGUF_VT_STRING) {
                v.strings.push_back(f.array_string(kv, i));
            } else {
                v.numbers.push_back(f.array_number(kv, i));
            }
        }
    } else {
        v.numbers.push_back(f.scalar_number(kv));
        if (kv.type == GGUF_VT_INT64 || kv.type == GGUF_VT_UINT64) {
            int64_t x;
            memcpy(&x, kv.value, 8);
            v.ints.push_back(x);
        }
    }
    return v;
}

Napi::Value number_to_js(Napi::Env env, uint32_t type, double d, const int64_t * exact) {
    if (type == GGUF_VT_BOOL) return Napi::Boolean::New(env, d != 0);
    if (exact && std::fabs(d) > 9007199254740991.0) {
        return type == GGUF_VT_UINT64 ? Napi::BigInt::New(env, (uint64_t) *exact) : Napi::BigInt::New(env, *exact);
    }
    return Napi::Number::New(env, d);
}

Napi::Value value_to_js(Napi::Env env, const js_value & v) {
    if (v.type == GGUF_VT_STRING) return Napi::String::New(env, v.strings[0]);
    if (v.type != GGUF_VT_ARRAY) return number_to_js(env, v.type, v.numbers[0], v.ints.empty() ? nullptr : &v.ints[0]);
    const size_t n = v.elem_type == GGUF_VT_STRING ? v.strings.size() : v.numbers.size();
    Napi::Array arr = Napi::Array::New(env, n);
    for (size_t i = 0; i < n; ++i) {
        arr.Set((uint32_t) i, v.elem_type == GGUF_VT_STRING ? Napi::String::New(env, v.strings[i]).As<Napi::Value>()
                                                            : number_to_js(env, v.elem_type, v.numbers[i], nullptr));
    }
    return arr;
}

Napi::Value gguf_read(const Napi::CallbackInfo & info) {
    const std::string path = arg_string(info, 0, "path");
    const uint64_t max_values = (uint64_t) opt_arg_int64(info, 1, 64);
    return run_async<gguf_summary>(info.Env(),
        [path, max_values](const progress_fn &) {
            gguf_file f(path);
            gguf_summary s;
            s.version = f.version();
            s.alignment = f.alignment();
            s.file_size = f.file_size();
            s.data_offset = f.data_offset();
            for (const auto & kv : f.kvs()) s.kvs.push_back({kv.key, read_value(f, kv, max_values)});
            s.tensors = f.tensors();
            return s;
        },
        [](Napi::Env env, gguf_summary & s) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("version", s.version);
            o.Set("alignment", s.alignment);
            o.Set("fileSize", (double) s.file_size);
            o.Set("dataOffset", (double) s.data_offset);
            Napi::Array kvs = Napi::Array::New(env, s.kvs.size());
            for (size_t i = 0; i < s.kvs.size(); ++i) {
                const js_value & v = s.kvs[i].value;
                Napi::Object kv = Napi::Object::New(env);
                kv.Set("key", s.kvs[i].key);
                kv.Set("type", gguf_vtype_name(v.type));
                if (v.type == GGUF_VT_ARRAY) {
                    kv.Set("elementType", gguf_vtype_name(v.elem_type));
                    kv.Set("length", (double) v.length);
                    kv.Set("truncated", v.truncated);
                }
                kv.Set("value", value_to_js(env, v));
                kvs.Set((uint32_t) i, kv);
            }
            o.Set("metadata", kvs);
            Napi::Array ts = Napi::Array::New(env, s.tensors.size());
            for (size_t i = 0; i < s.tensors.size(); ++i) {
                const gguf_tensor_info & t = s.tensors[i];
                Napi::Object to = Napi::Object::New(env);
                to.Set("name", t.name);
                Napi::Array shape = Napi::Array::New(env, t.n_dims);
                for (uint32_t d = 0; d < t.n_dims; ++d) shape.Set(d, (double) t.ne[d]);
                to.Set("shape", shape);
                to.Set("type", ggml_type_name((ggml_type) t.type));
                to.Set("typeId", t.type);
                to.Set("offset", (double) t.offset);
                to.Set("nBytes", (double) t.n_bytes);
                to.Set("nElements", (double) t.n_elements);
                ts.Set((uint32_t) i, to);
            }
            o.Set("tensors", ts);
            return o;
        });
}

// ---------------------------------------------------------------- layer removal

Napi::Array u32_array(Napi::Env env, const std::vector<uint32_t> & v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) a.Set((uint32_t) i, v[i]);
    return a;
}

Napi::Value remove_layers_js(const Napi::CallbackInfo & info) {
    const std::string in_path  = arg_string(info, 0, "input path");
    const std::string out_path = arg_string(info, 1, "output path");
    if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(info.Env(), "layers must be an array of integers");
    Napi::Array arr = info[2].As<Napi::Array>();
    std::vector<int64_t> layers;
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Value v = arr.Get(i);
        if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "layers must be an array of integers");
        const double d = v.As<Napi::Number>().DoubleValue();
        if (d != std::floor(d)) throw Napi::TypeError::New(info.Env(), "layer indices must be integers");
        layers.push_back((int64_t) d);
    }
    Napi::Function on_progress = opt_arg_function(info, 3);
    return run_async<layer_removal_result>(info.Env(),
        [=](const progress_fn & report) { return remove_layers(in_path, out_path, layers, report, nullptr); },
        [](Napi::Env env, layer_removal_result & r) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("layersBefore", r.n_layer_before);
            o.Set("layersAfter", r.n_layer_after);
            o.Set("removed", u32_array(env, r.removed));
            o.Set("kept", u32_array(env, r.kept));
            o.Set("originalKept", u32_array(env, r.original_kept));
            o.Set("bytesWritten", (double) r.bytes_written);
            Napi::Array changed = Napi::Array::New(env, r.metadata_changed.size());
            for (size_t i = 0; i < r.metadata_changed.size(); ++i) changed.Set((uint32_t) i, r.metadata_changed[i]);
            o.Set("metadataChanged", changed);
            return o;
        },
        on_progress);
}

// ---------------------------------------------------------------- tensor helpers

Napi::Value tensor_abs_sums_js(const Napi::CallbackInfo & info) {
    const std::string path = arg_string(info, 0, "path");
    if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(info.Env(), "names must be an array of strings");
    Napi::Array arr = info[1].As<Napi::Array>();
    std::vector<std::string> names;
    for (uint32_t i = 0; i < arr.Length(); ++i) names.push_back(arr.Get(i).As<Napi::String>().Utf8Value());
    Napi::Function on_progress = opt_arg_function(info, 2);
    return run_async<std::vector<tensor_abs_stats>>(info.Env(),
        [=](const progress_fn & report) { return tensor_abs_sums(path, names, report); },
        [](Napi::Env env, std::vector<tensor_abs_stats> & stats) -> Napi::Value {
            Napi::Array out = Napi::Array::New(env, stats.size());
            for (size_t i = 0; i < stats.size(); ++i) {
                Napi::Object o = Napi::Object::New(env);
                o.Set("name", stats[i].name);
                o.Set("sumAbs", stats[i].sum_abs);
                o.Set("count", (double) stats[i].n);
                out.Set((uint32_t) i, o);
            }
            return out;
        },
        on_progress);
}

Napi::Value quantize_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
        throw Napi::TypeError::New(env, "quantize(type: number, data: Float32Array, rowLength: number)");
    }
    Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_float32_array) throw Napi::TypeError::New(env, "data must be a Float32Array");
    Napi::Float32Array data = ta.As<Napi::Float32Array>();
    const int64_t n_per_row = info[2].As<Napi::Number>().Int64Value();
    if (n_per_row <= 0 || data.ElementLength() % (size_t) n_per_row != 0) {
        throw Napi::RangeError::New(env, "rowLength must divide the element count");
    }
    try {
        std::vector<uint8_t> q = quantize_rows(info[0].As<Napi::Number>().Uint32Value(), data.Data(),
                                               (int64_t) data.ElementLength() / n_per_row, n_per_row);
        return Napi::Buffer<uint8_t>::Copy(env, q.data(), q.size());
    } catch (const std::exception & e) {
        throw Napi::RangeError::New(env, e.what());
    }
}

Napi::Value dequantize_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
        throw Napi::TypeError::New(env, "dequantize(type: number, data: Uint8Array, count: number)");
    }
    Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
    try {
        std::vector<float> f = dequantize(info[0].As<Napi::Number>().Uint32Value(), data.Data(), data.ByteLength(),
                                          info[2].As<Napi::Number>().Int64Value());
        Napi::Float32Array out = Napi::Float32Array::New(env, f.size());
        std::copy(f.begin(), f.end(), out.Data());
        return out;
    } catch (const std::exception & e) {
        throw Napi::RangeError::New(env, e.what());
    }
}

Napi::Value ggml_types_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    uint32_t k = 0;
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        if (ggml_blck_size((ggml_type) t) <= 0 || ggml_type_size((ggml_type) t) == 0) continue;
        Napi::Object o = Napi::Object::New(env);
        o.Set("id", t);
        o.Set("name", ggml_type_name((ggml_type) t));
        o.Set("blockSize", (double) ggml_blck_size((ggml_type) t));
        o.Set("typeSize", (double) ggml_type_size((ggml_type) t));
        o.Set("quantized", ggml_is_quantized((ggml_type) t));
        out.Set(k++, o);
    }
    return out;
}

} // namespace

void register_gguf(Napi::Env env, Napi::Object exports) {
    export_functions(env, exports, {
        {"ggufRead", gguf_read},
        {"removeLayers", remove_layers_js},
        {"tensorAbsSums", tensor_abs_sums_js},
        {"quantize", quantize_js},
        {"dequantize", dequantize_js},
        {"ggmlTypes", ggml_types_js},
    });
}

} // namespace ppc
