// Node-API bindings of the continuous-batching generator (generate/batch_generator.h), the
// BatchGenerator class. JS submits requests synchronously and keeps one run() in flight; each run
// resolves with the requests that finished.
#include "addon.h"
#include "common/async.h"
#include "generate/batch_generator.h"

#include <algorithm>
#include <memory>

namespace ppc {

namespace {

std::vector<std::string> string_array(const Napi::Object & o, const char * key) {
    std::vector<std::string> out;
    if (!o.Has(key) || o.Get(key).IsUndefined()) return out;
    if (!o.Get(key).IsArray()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be an array of strings");
    Napi::Array a = o.Get(key).As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
        if (!a.Get(i).IsString()) throw Napi::TypeError::New(o.Env(), std::string(key) + "[" + std::to_string(i) + "] must be a string");
        out.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
    return out;
}

// The options of BatchGenerator.open(model, {sequences, contextSize, batchSize, threads, flashAttention, kvCacheType})
generator_params generator_options(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    generator_params p;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
        Napi::Object o = arg_object(info, 1, "options");
        p.n_slots = (uint32_t) opt_number(o, "sequences", p.n_slots, 1, 256, true);
        p.n_ctx_slot = (uint32_t) opt_number(o, "contextSize", p.n_ctx_slot, 8, 1 << 20, true);
        p.n_batch = (uint32_t) opt_number(o, "batchSize", std::max(p.n_batch, p.n_slots), 1, 1 << 16, true);
        p.n_threads = (int32_t) opt_number(o, "threads", 0, 0, 1024, true);
        if (o.Has("flashAttention") && !o.Get("flashAttention").IsUndefined()) p.flash_attn = o.Get("flashAttention").ToBoolean() ? 1 : 0;
        if (o.Has("kvCacheType") && !o.Get("kvCacheType").IsUndefined()) {
            const std::string t = o.Get("kvCacheType").ToString().Utf8Value();
            if (t != "f32" && t != "f16") throw Napi::RangeError::New(env, "kvCacheType must be \"f32\" or \"f16\"");
            p.kv_f32 = t == "f32";
        }
    }
    return p;
}

// A request of submit({prompt, maxTokens, temperature, topK, topP, minP, seed, grammar, grammarRoot, stop, stopTokens})
generation_request generation_request_of(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = arg_object(info, 0, "request");
    generation_request r;
    r.prompt = int32_tokens(o.Get("prompt"), "request.prompt");
    r.max_tokens = (int32_t) opt_number(o, "maxTokens", r.max_tokens, 1, 1 << 24, true);
    r.sampling.temperature = (float) opt_number(o, "temperature", r.sampling.temperature, 0, 1e6);
    r.sampling.top_k = (int32_t) opt_number(o, "topK", r.sampling.top_k, 0, 1 << 24, true);
    r.sampling.top_p = (float) opt_number(o, "topP", r.sampling.top_p, 0, 1);
    r.sampling.min_p = (float) opt_number(o, "minP", r.sampling.min_p, 0, 1);
    r.sampling.seed = (uint32_t) opt_number(o, "seed", r.sampling.seed, 0, 4294967295.0, true);
    if (o.Has("grammar") && !o.Get("grammar").IsUndefined()) {
        if (!o.Get("grammar").IsString()) throw Napi::TypeError::New(env, "grammar must be a GBNF string");
        r.grammar = o.Get("grammar").As<Napi::String>().Utf8Value();
    }
    if (o.Has("grammarRoot") && !o.Get("grammarRoot").IsUndefined()) r.grammar_root = o.Get("grammarRoot").ToString().Utf8Value();
    r.stop_strings = string_array(o, "stop");
    if (o.Has("stopTokens") && !o.Get("stopTokens").IsUndefined()) r.stop_tokens = int32_tokens(o.Get("stopTokens"), "request.stopTokens");
    return r;
}

// The requests that finished: [{id, text, tokens, finish, promptTokens, completionTokens}]
Napi::Value generation_results(Napi::Env env, const std::vector<generation_result> & results) {
    static const char * const reasons[] = {"stop", "length", "cancelled"};
    Napi::Array a = Napi::Array::New(env, results.size());
    for (size_t i = 0; i < results.size(); ++i) {
        const generation_result & r = results[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("id", (double) r.id);
        o.Set("text", Napi::String::New(env, r.text));
        Napi::Int32Array tokens = Napi::Int32Array::New(env, r.tokens.size());
        std::copy(r.tokens.begin(), r.tokens.end(), tokens.Data());
        o.Set("tokens", tokens);
        o.Set("finish", reasons[(int32_t) r.finish]);
        o.Set("promptTokens", r.n_prompt);
        o.Set("completionTokens", r.n_generated);
        a.Set((uint32_t) i, o);
    }
    return a;
}

// JS's BatchGenerator: a continuous-batching generator (generate/batch_generator.h) on a Model.
//   BatchGenerator.open(model, options) -> Promise<BatchGenerator>
//   submit(request) -> id; cancel(id); run() -> Promise<finished requests>; close()
class BatchGeneratorObject : public Napi::ObjectWrap<BatchGeneratorObject> {
public:
    static constexpr const char * k_name = "BatchGenerator";
    static constexpr napi_type_tag k_tag = {0x7070632d67656e65ull, 0x7261746f722d6267ull};

    static Napi::Function define(Napi::Env env) {
        return DefineClass(env, k_name, {
            StaticMethod<&BatchGeneratorObject::open>("open"),
            InstanceMethod<&BatchGeneratorObject::submit>("submit"),
            InstanceMethod<&BatchGeneratorObject::cancel>("cancel"),
            InstanceMethod<&BatchGeneratorObject::run>("run"),
            InstanceMethod<&BatchGeneratorObject::close>("close"),
        });
    }

    explicit BatchGeneratorObject(const Napi::CallbackInfo & info)
        : Napi::ObjectWrap<BatchGeneratorObject>(info), generator_(wrapped_arg<batch_generator>(info, k_name, k_tag)) {}

private:
    static Napi::Value open(const Napi::CallbackInfo & info) {
        if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "BatchGenerator.open(model, options)");
        std::shared_ptr<llama_session> session = unwrap_model(info[0]);
        const generator_params p = generator_options(info);
        return run_async<std::shared_ptr<batch_generator>>(info.Env(),
            [session, p](const progress_fn &) { return std::make_shared<batch_generator>(session, p); },
            [](Napi::Env env, std::shared_ptr<batch_generator> & g) -> Napi::Value { return new_wrapped(env, k_name, k_tag, g); });
    }

    const std::shared_ptr<batch_generator> & live(Napi::Env env) const {
        if (!generator_) throw Napi::Error::New(env, "the generator was closed");
        return generator_;
    }

    // Queues a request; a RangeError for one that can never run (prompt too long, bad grammar...).
    Napi::Value submit(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        const std::shared_ptr<batch_generator> & g = live(env);
        generation_request r = generation_request_of(info);
        try {
            return Napi::Number::New(env, (double) g->submit(std::move(r)));
        } catch (const std::invalid_argument & e) {
            throw Napi::RangeError::New(env, e.what());
        } catch (const std::exception & e) {
            throw Napi::Error::New(env, e.what());
        }
    }

    Napi::Value cancel(const Napi::CallbackInfo & info) {
        if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "cancel(id)");
        live(info.Env())->cancel((uint64_t) info[0].As<Napi::Number>().Int64Value());
        return info.Env().Undefined();
    }

    // Decodes until at least one request finished and resolves with those; [] when nothing is
    // queued or running.
    Napi::Value run(const Napi::CallbackInfo & info) {
        std::shared_ptr<batch_generator> g = live(info.Env());
        std::shared_ptr<cancel_token> cancel = cancel_;
        return run_async<std::vector<generation_result>>(info.Env(),
            [g, cancel](const progress_fn &) { return g->run(cancel.get()); },
            [](Napi::Env env, std::vector<generation_result> & results) -> Napi::Value { return generation_results(env, results); });
    }

    Napi::Value close(const Napi::CallbackInfo & info) {
        cancel_->cancelled.store(true);  // a run in flight stops after its current step
        generator_.reset();              // and frees the context when it lets go of it
        return info.Env().Undefined();
    }

    std::shared_ptr<batch_generator> generator_;
    std::shared_ptr<cancel_token> cancel_ = std::make_shared<cancel_token>();  // set by close()
};

} // namespace

void register_generate(Napi::Env env, Napi::Object exports) {
    register_class(env, exports, BatchGeneratorObject::k_name, BatchGeneratorObject::define(env));
}

} // namespace ppc
