// Node-API bindings of the log-likelihood scorer (capture/loglik.h), the LoglikScorer class, and the
// vocabulary facts the TypeScript tokenization needs (BOS/EOS and whether the model adds them).
#include "addon.h"
#include "capture/loglik.h"
#include "common/async.h"
#include "common/napi_args.h"

#include <memory>

namespace ppc {

namespace {

// The options of LoglikScorer.open(model, {contextSize, batchSize, sequences, threads, shareContext, flashAttention,
// kvCacheType, lora: [{path, scale}]})
loglik_params scorer_params(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    loglik_params p;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
        if (!info[1].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
        Napi::Object o = info[1].As<Napi::Object>();
        p.n_ctx = (uint32_t) opt_number(o, "contextSize", p.n_ctx, 0, 1u << 24, true);
        p.n_batch = (uint32_t) opt_number(o, "batchSize", p.n_batch, 1, 1u << 16, true);
        p.n_seq_max = (uint32_t) opt_number(o, "sequences", p.n_seq_max, 1, 256, true);
        p.n_threads = (int32_t) opt_number(o, "threads", 0, 0, 1024, true);
        if (o.Has("shareContext") && !o.Get("shareContext").IsUndefined()) p.share_context = o.Get("shareContext").ToBoolean();
        if (o.Has("flashAttention") && !o.Get("flashAttention").IsUndefined()) p.flash_attn = o.Get("flashAttention").ToBoolean();
        if (o.Has("kvCacheType") && !o.Get("kvCacheType").IsUndefined()) {
            const std::string t = o.Get("kvCacheType").ToString().Utf8Value();
            if (t != "f32" && t != "f16") throw Napi::RangeError::New(env, "kvCacheType must be \"f32\" or \"f16\"");
            p.kv_f32 = t == "f32";
        }
        if (o.Has("lora") && !o.Get("lora").IsUndefined()) {
            if (!o.Get("lora").IsArray()) throw Napi::TypeError::New(env, "lora must be an array of {path, scale}");
            Napi::Array a = o.Get("lora").As<Napi::Array>();
            for (uint32_t i = 0; i < a.Length(); ++i) {
                Napi::Value e = a.Get(i);
                if (!e.IsObject() || !e.As<Napi::Object>().Get("path").IsString()) {
                    throw Napi::TypeError::New(env, "lora[" + std::to_string(i) + "] must be {path: string, scale?: number}");
                }
                Napi::Object eo = e.As<Napi::Object>();
                lora_spec s;
                s.path = eo.Get("path").As<Napi::String>().Utf8Value();
                if (eo.Has("scale") && !eo.Get("scale").IsUndefined()) {
                    if (!eo.Get("scale").IsNumber()) throw Napi::TypeError::New(env, "lora[" + std::to_string(i) + "].scale must be a number");
                    s.scale = eo.Get("scale").As<Napi::Number>().FloatValue();
                }
                p.adapters.push_back(s);
            }
        }
    }
    return p;
}

struct score_output {
    std::vector<std::vector<loglik_score>> scores;
};

// The requests of score(): [{context: Int32Array, continuations: Int32Array[]}]
std::shared_ptr<std::vector<loglik_request>> score_requests(Napi::Value v) {
    Napi::Env env = v.Env();
    if (!v.IsArray()) throw Napi::TypeError::New(env, "requests must be an array");
    Napi::Array arr = v.As<Napi::Array>();
    auto requests = std::make_shared<std::vector<loglik_request>>(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Value e = arr.Get(i);
        const std::string at = "requests[" + std::to_string(i) + "]";
        if (!e.IsObject()) throw Napi::TypeError::New(env, at + " must be {context, continuations}");
        Napi::Object o = e.As<Napi::Object>();
        (*requests)[i].context = int32_tokens(o.Get("context"), at + ".context");
        if (!o.Get("continuations").IsArray()) throw Napi::TypeError::New(env, at + ".continuations must be an array of Int32Array");
        Napi::Array c = o.Get("continuations").As<Napi::Array>();
        for (uint32_t j = 0; j < c.Length(); ++j) {
            (*requests)[i].continuations.push_back(int32_tokens(c.Get(j), at + ".continuations[" + std::to_string(j) + "]"));
        }
    }
    return requests;
}

// {logprobs: Float64Array, greedy: Uint8Array, tokens: Int32Array}, one entry per continuation in order
Napi::Value score_result(Napi::Env env, const score_output & out) {
    size_t n = 0;
    for (const auto & r : out.scores) n += r.size();
    Napi::Float64Array logprobs = Napi::Float64Array::New(env, n);
    Napi::Uint8Array greedy = Napi::Uint8Array::New(env, n);
    Napi::Int32Array tokens = Napi::Int32Array::New(env, n);
    size_t k = 0;
    for (const auto & r : out.scores) {
        for (const loglik_score & s : r) {
            logprobs[k] = s.logprob;
            greedy[k] = s.is_greedy ? 1 : 0;
            tokens[k] = s.n_tokens;
            ++k;
        }
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("logprobs", logprobs);
    o.Set("greedy", greedy);
    o.Set("tokens", tokens);
    return o;
}

// JS's LoglikScorer: a scoring context (capture/loglik.h) on a Model.
//   LoglikScorer.open(model, options) -> Promise<LoglikScorer>
//   score(requests, onProgress?), cancel(), close(), info()
class LoglikScorerObject : public Napi::ObjectWrap<LoglikScorerObject> {
public:
    static constexpr const char * k_name = "LoglikScorer";
    static constexpr napi_type_tag k_tag = {0x7070632d676c6f67ull, 0x6c696b2d73636f72ull};

    static Napi::Function define(Napi::Env env) {
        return DefineClass(env, k_name, {
            StaticMethod<&LoglikScorerObject::open>("open"),
            InstanceMethod<&LoglikScorerObject::score>("score"),
            InstanceMethod<&LoglikScorerObject::cancel>("cancel"),
            InstanceMethod<&LoglikScorerObject::close>("close"),
            InstanceMethod<&LoglikScorerObject::info>("info"),
        });
    }

    explicit LoglikScorerObject(const Napi::CallbackInfo & info)
        : Napi::ObjectWrap<LoglikScorerObject>(info), scorer_(wrapped_arg<loglik_scorer>(info, k_name, k_tag)) {}

private:
    static Napi::Value open(const Napi::CallbackInfo & info) {
        if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "LoglikScorer.open(model, options)");
        std::shared_ptr<llama_session> session = unwrap_model(info[0]);
        const loglik_params p = scorer_params(info);
        return run_async<std::shared_ptr<loglik_scorer>>(info.Env(),
            [session, p](const progress_fn &) { return std::make_shared<loglik_scorer>(session, p); },
            [](Napi::Env env, std::shared_ptr<loglik_scorer> & s) -> Napi::Value { return new_wrapped(env, k_name, k_tag, s); });
    }

    const std::shared_ptr<loglik_scorer> & live(Napi::Env env) const {
        if (!scorer_) throw Napi::Error::New(env, "the scorer was closed");
        return scorer_;
    }

    // score([{context: Int32Array, continuations: Int32Array[]}], onProgress?)
    //   -> {logprobs: Float64Array, greedy: Uint8Array, tokens: Int32Array}, one entry per continuation in order
    Napi::Value score(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1) throw Napi::TypeError::New(env, "score(requests, onProgress?)");
        std::shared_ptr<loglik_scorer> scorer = live(env);
        auto requests = score_requests(info[0]);
        Napi::Function on_progress = opt_arg_function(info, 1);
        auto cancel = std::make_shared<cancel_token>();
        cancel_ = cancel;
        return run_async<score_output>(env,
            [scorer, requests, cancel](const progress_fn & progress) {
                score_output out;
                out.scores = scorer->score(*requests, progress, cancel.get());
                return out;
            },
            [](Napi::Env env, score_output & out) -> Napi::Value { return score_result(env, out); },
            on_progress);
    }

    // Stops the score() call in flight (also after close()).
    Napi::Value cancel(const Napi::CallbackInfo & info) {
        if (cancel_) cancel_->cancelled.store(true);
        return info.Env().Undefined();
    }

    Napi::Value close(const Napi::CallbackInfo & info) {
        scorer_.reset();  // in-flight work holds its own reference
        return info.Env().Undefined();
    }

    Napi::Value info(const Napi::CallbackInfo & info) {
        Napi::Object o = Napi::Object::New(info.Env());
        const loglik_params & p = live(info.Env())->params();
        o.Set("contextSize", p.n_ctx);
        o.Set("batchSize", p.n_batch);
        o.Set("sequences", p.n_seq_max);
        o.Set("shareContext", p.share_context);
        o.Set("flashAttention", p.flash_attn);
        o.Set("kvCacheType", p.kv_f32 ? "f32" : "f16");
        o.Set("adapters", (double) p.adapters.size());
        return o;
    }

    std::shared_ptr<loglik_scorer> scorer_;
    std::shared_ptr<cancel_token> cancel_;  // of the score() call in flight
};

// modelVocabInfo(model) -> {bos, eos, addBos, addEos, nCtxTrain}
Napi::Value model_vocab_info_js(const Napi::CallbackInfo & info) {
    if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "modelVocabInfo(model)");
    std::shared_ptr<llama_session> s = unwrap_model(info[0]);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("bos", llama_vocab_bos(s->vocab()));
    o.Set("eos", llama_vocab_eos(s->vocab()));
    o.Set("addBos", llama_vocab_get_add_bos(s->vocab()));
    o.Set("addEos", llama_vocab_get_add_eos(s->vocab()));
    o.Set("nCtxTrain", llama_model_n_ctx_train(s->model()));
    return o;
}

} // namespace

void register_loglik(Napi::Env env, Napi::Object exports) {
    register_class(env, exports, LoglikScorerObject::k_name, LoglikScorerObject::define(env));
    exports.Set("modelVocabInfo", Napi::Function::New(env, model_vocab_info_js));
}

} // namespace ppc
