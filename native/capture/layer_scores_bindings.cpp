// Bindings: layerScores (Block Influence and friends) and dumpHiddenStates.
#include "addon.h"
#include "capture/layer_scores.h"
#include "common/async.h"
#include "common/napi_args.h"

namespace ppc {

namespace {

Napi::Array doubles(Napi::Env env, const std::vector<double> & v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) a.Set((uint32_t) i, v[i]);
    return a;
}

// [{name, sums: Float64Array, counts: number[]}], in name order.
Napi::Array imatrix_to_js(Napi::Env env, const std::map<std::string, imatrix_entry> & entries) {
    Napi::Array out = Napi::Array::New(env, entries.size());
    uint32_t k = 0;
    for (const auto & [name, e] : entries) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", name);
        Napi::Float64Array sums = Napi::Float64Array::New(env, e.sums.size());
        std::copy(e.sums.begin(), e.sums.end(), sums.Data());
        o.Set("sums", sums);
        Napi::Array counts = Napi::Array::New(env, e.counts.size());
        for (size_t i = 0; i < e.counts.size(); ++i) counts.Set((uint32_t) i, (double) e.counts[i]);
        o.Set("counts", counts);
        out.Set(k++, o);
    }
    return out;
}

Napi::Value layer_scores_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto session = unwrap_model(info[0]);
    if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "sequences must be an array");
    Napi::Array arr = info[1].As<Napi::Array>();
    std::vector<scored_sequence> seqs(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Value item = arr.Get(i);
        if (!item.IsObject()) throw Napi::TypeError::New(env, "each sequence must be {tokens, mask?}");
        Napi::Object o = item.As<Napi::Object>();
        seqs[i].tokens = int32_tokens(o.Get("tokens"), "sequence.tokens");
        Napi::Value m = o.Get("mask");
        if (!m.IsUndefined() && !m.IsNull()) {
            if (!m.IsTypedArray() || m.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
                throw Napi::TypeError::New(env, "sequence.mask must be a Uint8Array");
            }
            Napi::Uint8Array ma = m.As<Napi::Uint8Array>();
            seqs[i].mask.assign(ma.Data(), ma.Data() + ma.ElementLength());
        }
    }
    layer_score_params params;
    if (info.Length() > 2 && info[2].IsObject()) {
        Napi::Object o = info[2].As<Napi::Object>();
        if (o.Has("maxBatchTokens") && o.Get("maxBatchTokens").IsNumber()) params.max_batch_tokens = o.Get("maxBatchTokens").As<Napi::Number>().Uint32Value();
        if (o.Has("maxSequences") && o.Get("maxSequences").IsNumber()) params.max_sequences = o.Get("maxSequences").As<Napi::Number>().Uint32Value();
        if (o.Has("capture")) params.capture = o.Get("capture").ToBoolean();
        if (o.Has("imatrix")) params.imatrix = o.Get("imatrix").ToBoolean();
        if (params.max_batch_tokens == 0 || params.max_sequences == 0) throw Napi::RangeError::New(env, "maxBatchTokens and maxSequences must be positive");
    }
    Napi::Function on_progress = opt_arg_function(info, 3);
    return run_async<layer_score_sums>(env,
        [session, seqs, params](const progress_fn & report) {
            std::lock_guard<std::mutex> lock(session->mutex());
            return compute_layer_scores(*session, seqs, params, report);
        },
        [](Napi::Env env, layer_score_sums & s) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("nLayer", s.n_layer);
            o.Set("tokens", (double) s.n_tokens);
            o.Set("cosSum", doubles(env, s.cos_sum));
            o.Set("angularSum", doubles(env, s.angular_sum));
            o.Set("contributionSum", doubles(env, s.contribution_sum));
            o.Set("deviceSteps", (double) s.device_steps);
            if (!s.imatrix.empty()) o.Set("imatrix", imatrix_to_js(env, s.imatrix));
            return o;
        },
        on_progress);
}

Napi::Value dump_hidden_states_js(const Napi::CallbackInfo & info) {
    auto session = unwrap_model(info[0]);
    std::vector<llama_token> tokens = int32_tokens(info[1], "tokens");
    return run_async<std::vector<float>>(info.Env(),
        [session, tokens](const progress_fn &) {
            std::lock_guard<std::mutex> lock(session->mutex());
            return dump_hidden_states(*session, tokens);
        },
        [](Napi::Env env, std::vector<float> & v) -> Napi::Value {
            Napi::Float32Array out = Napi::Float32Array::New(env, v.size());
            std::copy(v.begin(), v.end(), out.Data());
            return out;
        });
}

} // namespace

void register_layer_scores(Napi::Env env, Napi::Object exports) {
    export_functions(env, exports, {{"layerScores", layer_scores_js}, {"dumpHiddenStates", dump_hidden_states_js}});
}

} // namespace ppc
