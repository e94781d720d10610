// Node-API bindings of the token-embedding capability: reading one tensor as F32, the model's
// vocabulary with token attributes, exact similarity rows, nearest neighbours and CusText clusters.
#include "addon.h"
#include "common/async.h"
#include "common/napi_args.h"
#include "embed/neighbours.h"
#include "embed/tensor_f32.h"

#include "ggml.h"
#include "llama.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

namespace ppc {

namespace {

// An embedding matrix passed from JS as (Float32Array, columns). The array stays referenced
// until the async work that reads it has resolved.
struct js_embeddings {
    embed_view view;
    std::shared_ptr<Napi::Reference<Napi::Float32Array>> keep;
};

js_embeddings arg_embeddings(const Napi::CallbackInfo & info, size_t i) {
    Napi::Env env = info.Env();
    if (info.Length() <= i + 1 || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
        throw Napi::TypeError::New(env, "embeddings must be a Float32Array");
    }
    if (!info[i + 1].IsNumber()) throw Napi::TypeError::New(env, "columns must be a number");
    Napi::Float32Array a = info[i].As<Napi::Float32Array>();
    const int64_t cols = info[i + 1].As<Napi::Number>().Int64Value();
    if (cols <= 0 || a.ElementLength() == 0 || a.ElementLength() % (size_t) cols != 0) {
        throw Napi::RangeError::New(env, "the embeddings length (" + std::to_string(a.ElementLength()) +
                                         ") must be a positive multiple of the column count (" + std::to_string(cols) + ")");
    }
    js_embeddings e;
    e.view.data = a.Data();
    e.view.n_cols = cols;
    e.view.n_rows = (int64_t) (a.ElementLength() / (size_t) cols);
    e.keep = std::make_shared<Napi::Reference<Napi::Float32Array>>(Napi::Persistent(a));
    return e;
}

std::vector<int32_t> arg_tokens(const Napi::CallbackInfo & info, size_t i, const char * name) {
    if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
        throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an Int32Array");
    }
    Napi::Int32Array a = info[i].As<Napi::Int32Array>();
    return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

int64_t arg_int(const Napi::CallbackInfo & info, size_t i, const char * name) {
    if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
    const double d = info[i].As<Napi::Number>().DoubleValue();
    if (d != std::floor(d)) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an integer");
    return (int64_t) d;
}

embed_metric arg_metric(const Napi::CallbackInfo & info, size_t i) {
    const int64_t m = arg_int(info, i, "metric");
    if (m != EMBED_COSINE && m != EMBED_EUCLIDEAN) throw Napi::RangeError::New(info.Env(), "metric must be 0 (cosine) or 1 (euclidean)");
    return (embed_metric) m;
}

template <typename T, typename A>
A copy_to(Napi::Env env, const std::vector<T> & v) {
    A out = A::New(env, v.size());
    if (!v.empty()) memcpy(out.Data(), v.data(), v.size() * sizeof(T));
    return out;
}

// embedReadTensor(path, name, threads, onProgress?) -> Promise<{name, type, typeId, rows, cols, offset, nBytes, data}>
Napi::Value read_tensor_js(const Napi::CallbackInfo & info) {
    const std::string path = arg_string(info, 0, "path");
    const std::string name = arg_string(info, 1, "tensor name");
    const int threads = opt_arg_int32(info, 2, 0);
    return run_async<f32_matrix>(info.Env(),
        [=](const progress_fn & report) { return read_tensor_f32(path, name, threads, report); },
        [](Napi::Env env, f32_matrix & m) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("name", m.name);
            o.Set("type", ggml_type_name((ggml_type) m.type));
            o.Set("typeId", m.type);
            o.Set("rows", (double) m.n_rows);
            o.Set("cols", (double) m.n_cols);
            o.Set("offset", (double) m.offset);
            o.Set("nBytes", (double) m.n_bytes);
            o.Set("data", copy_to<float, Napi::Float32Array>(env, m.data));
            return o;
        },
        opt_arg_function(info, 3));
}

// embedVocab(model) -> {attributes: Int32Array, texts: string[], pieces: string[]}
Napi::Value vocab_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1) throw Napi::TypeError::New(env, "expected a Model from loadModel()");
    std::shared_ptr<llama_session> s = unwrap_model(info[0]);
    const int32_t n = s->n_vocab();
    Napi::Int32Array attrs = Napi::Int32Array::New(env, (size_t) n);
    Napi::Array texts = Napi::Array::New(env, (size_t) n);
    Napi::Array pieces = Napi::Array::New(env, (size_t) n);
    for (int32_t t = 0; t < n; ++t) {
        attrs[(size_t) t] = (int32_t) llama_vocab_get_attr(s->vocab(), t);
        const char * text = llama_vocab_get_text(s->vocab(), t);
        texts.Set((uint32_t) t, Napi::String::New(env, text ? text : ""));
        pieces.Set((uint32_t) t, Napi::String::New(env, s->token_to_piece(t)));
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("attributes", attrs);
    o.Set("texts", texts);
    o.Set("pieces", pieces);
    return o;
}

// embedSimilarityRows(data, cols, queries, domain, metric, threads) -> Promise<Float64Array>
Napi::Value similarity_rows_js(const Napi::CallbackInfo & info) {
    js_embeddings e = arg_embeddings(info, 0);
    std::vector<int32_t> queries = arg_tokens(info, 2, "queries");
    std::vector<int32_t> domain = arg_tokens(info, 3, "domain");
    const embed_metric metric = arg_metric(info, 4);
    const int threads = (int) arg_int(info, 5, "threads");
    return run_async<std::vector<double>>(info.Env(),
        [e, queries, domain, metric, threads](const progress_fn &) {
            return similarity_rows(e.view, queries, domain, metric, threads);
        },
        [e](Napi::Env env, std::vector<double> & rows) -> Napi::Value {
            return copy_to<double, Napi::Float64Array>(env, rows);
        });
}

// embedNearest(data, cols, queries, domain, m, metric, threads, onProgress?) -> Promise<{m, count, tokens, similarity}>
Napi::Value nearest_js(const Napi::CallbackInfo & info) {
    js_embeddings e = arg_embeddings(info, 0);
    std::vector<int32_t> queries = arg_tokens(info, 2, "queries");
    std::vector<int32_t> domain = arg_tokens(info, 3, "domain");
    const int64_t m = arg_int(info, 4, "m");
    if (m < 1 || m > (1 << 20)) throw Napi::RangeError::New(info.Env(), "m must be in [1, 2^20]");
    const embed_metric metric = arg_metric(info, 5);
    const int threads = (int) arg_int(info, 6, "threads");
    return run_async<neighbour_lists>(info.Env(),
        [e, queries, domain, m, metric, threads](const progress_fn & report) {
            return nearest_neighbours(e.view, queries, domain, (int32_t) m, metric, threads, report);
        },
        [e](Napi::Env env, neighbour_lists & l) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("m", l.m);
            o.Set("count", copy_to<int32_t, Napi::Int32Array>(env, l.count));
            o.Set("tokens", copy_to<int32_t, Napi::Int32Array>(env, l.tokens));
            o.Set("similarity", copy_to<double, Napi::Float64Array>(env, l.similarity));
            return o;
        },
        opt_arg_function(info, 7));
}

// embedClusters(data, cols, domain, k, metric, threads, onProgress?) -> Promise<{offsets, members, similarityOffsets, similarities, stats}>
Napi::Value clusters_js(const Napi::CallbackInfo & info) {
    js_embeddings e = arg_embeddings(info, 0);
    std::vector<int32_t> domain = arg_tokens(info, 2, "domain");
    const int64_t k = arg_int(info, 3, "k");
    if (k < 1 || k > (1 << 16)) throw Napi::RangeError::New(info.Env(), "k must be in [1, 65536]");
    const embed_metric metric = arg_metric(info, 4);
    const int threads = (int) arg_int(info, 5, "threads");
    return run_async<cluster_partition>(info.Env(),
        [e, domain, k, metric, threads](const progress_fn & report) {
            return build_clusters(e.view, domain, (int32_t) k, metric, threads, report);
        },
        [e](Napi::Env env, cluster_partition & p) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("offsets", copy_to<int32_t, Napi::Int32Array>(env, p.offsets));
            o.Set("members", copy_to<int32_t, Napi::Int32Array>(env, p.members));
            std::vector<double> so(p.sim_offsets.begin(), p.sim_offsets.end());
            o.Set("similarityOffsets", copy_to<double, Napi::Float64Array>(env, so));
            o.Set("similarities", copy_to<double, Napi::Float64Array>(env, p.similarities));
            Napi::Object st = Napi::Object::New(env);
            st.Set("batches", (double) p.batches);
            st.Set("rowsSearched", (double) p.rows_searched);
            st.Set("rowsWasted", (double) p.rows_wasted);
            st.Set("compactions", (double) p.compactions);
            o.Set("stats", st);
            return o;
        },
        opt_arg_function(info, 6));
}

// Token sequences of many texts, flattened: text i is tokens[offsets[i] .. offsets[i+1]).
struct token_batch {
    std::vector<int32_t> offsets;
    std::vector<int32_t> tokens;
};

// Runs fn(i) for i in [0, n) on up to n_threads threads; llama.cpp's vocabulary is immutable
// after loading, so tokenization and detokenization are safe to run concurrently.
template <typename Fn>
void for_each_text(size_t n, int n_threads, Fn && fn) {
    const size_t nt = std::max<size_t>(1, std::min<size_t>((size_t) embed_threads(n_threads), n));
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&]() {
        try {
            for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next.store(n);
        }
    };
    std::vector<std::thread> pool;
    for (size_t t = 1; t < nt; ++t) pool.emplace_back(work);
    work();
    for (auto & th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

std::vector<std::string> arg_strings(const Napi::CallbackInfo & info, size_t i, const char * name) {
    if (info.Length() <= i || !info[i].IsArray()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an array of strings");
    Napi::Array a = info[i].As<Napi::Array>();
    std::vector<std::string> out(a.Length());
    for (uint32_t k = 0; k < a.Length(); ++k) {
        Napi::Value v = a.Get(k);
        if (!v.IsString()) throw Napi::TypeError::New(info.Env(), std::string(name) + "[" + std::to_string(k) + "] is not a string");
        out[k] = v.As<Napi::String>().Utf8Value();
    }
    return out;
}

// embedTokenizeBatch(model, texts, addSpecial, parseSpecial, threads) -> Promise<{offsets, tokens}>
Napi::Value tokenize_batch_js(const Napi::CallbackInfo & info) {
    if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "expected a Model from loadModel()");
    std::shared_ptr<llama_session> s = unwrap_model(info[0]);
    auto texts = std::make_shared<std::vector<std::string>>(arg_strings(info, 1, "texts"));
    const bool add_special = opt_arg_bool(info, 2);
    const bool parse_special = opt_arg_bool(info, 3);
    const int threads = opt_arg_int32(info, 4, 0);
    return run_async<token_batch>(info.Env(),
        [s, texts, add_special, parse_special, threads](const progress_fn &) {
            std::vector<std::vector<llama_token>> per(texts->size());
            for_each_text(texts->size(), threads, [&](size_t i) { per[i] = s->tokenize((*texts)[i], add_special, parse_special); });
            token_batch b;
            b.offsets.resize(per.size() + 1, 0);
            size_t total = 0;
            for (size_t i = 0; i < per.size(); ++i) {
                total += per[i].size();
                if (total > (size_t) INT32_MAX) throw std::runtime_error("more than 2^31 tokens in one batch");
                b.offsets[i + 1] = (int32_t) total;
            }
            b.tokens.resize(total);
            for (size_t i = 0; i < per.size(); ++i) std::copy(per[i].begin(), per[i].end(), b.tokens.begin() + b.offsets[i]);
            return b;
        },
        [](Napi::Env env, token_batch & b) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("offsets", copy_to<int32_t, Napi::Int32Array>(env, b.offsets));
            o.Set("tokens", copy_to<int32_t, Napi::Int32Array>(env, b.tokens));
            return o;
        });
}

// embedDetokenizeBatch(model, tokens, offsets, removeSpecial, unparseSpecial, threads) -> Promise<string[]>
Napi::Value detokenize_batch_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1) throw Napi::TypeError::New(env, "expected a Model from loadModel()");
    std::shared_ptr<llama_session> s = unwrap_model(info[0]);
    std::vector<int32_t> tokens = arg_tokens(info, 1, "tokens");
    std::vector<int32_t> offsets = arg_tokens(info, 2, "offsets");
    if (offsets.empty() || offsets[0] != 0 || (size_t) offsets.back() != tokens.size()) {
        throw Napi::RangeError::New(env, "offsets must start at 0 and end at the token count");
    }
    for (size_t i = 1; i < offsets.size(); ++i) {
        if (offsets[i] < offsets[i - 1]) throw Napi::RangeError::New(env, "offsets must be non-decreasing");
    }
    const int32_t n_vocab = s->n_vocab();
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            throw Napi::RangeError::New(env, "token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                             " is outside the vocabulary (" + std::to_string(n_vocab) + " tokens)");
        }
    }
    const bool remove_special = opt_arg_bool(info, 3);
    const bool unparse_special = opt_arg_bool(info, 4);
    const int threads = opt_arg_int32(info, 5, 0);
    return run_async<std::vector<std::string>>(env,
        [s, tokens = std::move(tokens), offsets = std::move(offsets), remove_special, unparse_special, threads](const progress_fn &) {
            std::vector<std::string> texts(offsets.size() - 1);
            for_each_text(texts.size(), threads, [&](size_t i) {
                texts[i] = s->detokenize(std::vector<llama_token>(tokens.begin() + offsets[i], tokens.begin() + offsets[i + 1]),
                                         remove_special, unparse_special);
            });
            return texts;
        },
        [](Napi::Env env, std::vector<std::string> & texts) -> Napi::Value {
            Napi::Array a = Napi::Array::New(env, texts.size());
            for (size_t i = 0; i < texts.size(); ++i) a.Set((uint32_t) i, Napi::String::New(env, texts[i]));
            return a;
        });
}

} // namespace

void register_embed(Napi::Env env, Napi::Object exports) {
    export_functions(env, exports, {
        {"embedReadTensor", read_tensor_js},
        {"embedVocab", vocab_js},
        {"embedSimilarityRows", similarity_rows_js},
        {"embedNearest", nearest_js},
        {"embedClusters", clusters_js},
        {"embedTokenizeBatch", tokenize_batch_js},
        {"embedDetokenizeBatch", detokenize_batch_js},
    });
}

} // namespace ppc
