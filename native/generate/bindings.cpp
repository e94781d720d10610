// Node-API bindings of the continuous-batching generator (generate/batch_generator.h). JS submits
// requests synchronously and keeps one generatorRun() in flight; each run resolves with the
// requests that finished.
#include "addon.h"
#include "common/async.h"
#include "generate/batch_generator.h"

#include <algorithm>
#include <memory>

namespace ppc {

namespace {

struct generator_handle {
    std::shared_ptr<batch_generator> generator;
    std::shared_ptr<cancel_token> cancel = std::make_shared<cancel_token>();  // set by close()
};

const napi_type_tag k_generator_tag = {0x7070632d67656e65ull, 0x7261746f722d6267ull};

generator_handle & unwrap_generator(Napi::Value v, bool live = true) {
    if (!v.IsExternal() || !v.As<Napi::External<generator_handle>>().CheckTypeTag(&k_generator_tag)) {
        throw Napi::TypeError::New(v.Env(), "expected a generator from generatorOpen()");
    }
    generator_handle & h = *v.As<Napi::External<generator_handle>>().Data();
    if (live && !h.generator) throw Napi::Error::New(v.Env(), "the generator was closed");
    return h;
}

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

// generatorOpen(model, {sequences, contextSize, batchSize, threads, flashAttention, kvCacheType})
Napi::Value generator_open(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1) throw Napi::TypeError::New(env, "generatorOpen(model, options)");
    std::shared_ptr<llama_session> session = unwrap_model(info[0]);
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
    return run_async<std::shared_ptr<batch_generator>>(env,
        [session, p](const progress_fn &) { return std::make_shared<batch_generator>(session, p); },
        [](Napi::Env env, std::shared_ptr<batch_generator> & g) -> Napi::Value {
            auto * h = new generator_handle{g};
            Napi::External<generator_handle> ext =
                Napi::External<generator_handle>::New(env, h, [](Napi::Env, generator_handle * x) { delete x; });
            ext.TypeTag(&k_generator_tag);
            return ext;
        });
}

// generatorSubmit(generator, {prompt, maxTokens, temperature, topK, topP, minP, seed, grammar, grammarRoot, stop, stopTokens}) -> id
Napi::Value generator_submit(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2) throw Napi::TypeError::New(env, "generatorSubmit(generator, request)");
    generator_handle & h = unwrap_generator(info[0]);
    Napi::Object o = arg_object(info, 1, "request");
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
    try {
        return Napi::Number::New(env, (double) h.generator->submit(std::move(r)));
    } catch (const std::invalid_argument & e) {
        throw Napi::RangeError::New(env, e.what());
    } catch (const std::exception & e) {
        throw Napi::Error::New(env, e.what());
    }
}

Napi::Value generator_cancel(const Napi::CallbackInfo & info) {
    if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "generatorCancel(generator, id)");
    generator_handle & h = unwrap_generator(info[0]);
    h.generator->cancel((uint64_t) info[1].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
}

// generatorRun(generator) -> [{id, text, tokens, finish, promptTokens, completionTokens}]: the requests that
// finished; [] when nothing is queued or running.
Napi::Value generator_run(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1) throw Napi::TypeError::New(env, "generatorRun(generator)");
    generator_handle & h = unwrap_generator(info[0]);
    std::shared_ptr<batch_generator> g = h.generator;
    std::shared_ptr<cancel_token> cancel = h.cancel;
    return run_async<std::vector<generation_result>>(env,
        [g, cancel](const progress_fn &) { return g->run(cancel.get()); },
        [](Napi::Env env, std::vector<generation_result> & results) -> Napi::Value {
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
        });
}

Napi::Value generator_close(const Napi::CallbackInfo & info) {
    if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "generatorClose(generator)");
    generator_handle & h = unwrap_generator(info[0], false);
    h.cancel->cancelled.store(true);  // a run in flight stops after its current step
    h.generator.reset();               // and frees the context when it lets go of it
    return info.Env().Undefined();
}

} // namespace

void register_generate(Napi::Env env, Napi::Object exports) {
    exports.Set("generatorOpen", Napi::Function::New(env, generator_open));
    exports.Set("generatorSubmit", Napi::Function::New(env, generator_submit));
    exports.Set("generatorCancel", Napi::Function::New(env, generator_cancel));
    exports.Set("generatorRun", Napi::Function::New(env, generator_run));
    exports.Set("generatorClose", Napi::Function::New(env, generator_close));
}

} // namespace ppc
