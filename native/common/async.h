// Promise-returning async work for Node-API: the work runs on libuv's thread pool, never on the JS
// thread; C++ exceptions thrown by the work become rejected promises with the exception's message.
#pragma once

#include <napi.h>

// The argument helpers (arg_string, opt_number, ...) that binding files use with run_async.
#include "common/napi_args.h"

#include <atomic>
#include <cstdint>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ppc {

// Progress reported from a worker thread: done / total in the work's own unit (bytes, tokens...).
struct progress {
    double done  = 0;
    double total = 0;
};

using progress_fn = std::function<void(const progress &)>;

// Shared cancellation flag: JS sets it, the worker polls it between chunks of work.
struct cancel_token {
    std::atomic<bool> cancelled{false};
};

// Runs `execute` off the JS thread, then `resolve` on the JS thread to build the promise's value.
// If `on_progress` is a JS function it is called with (done, total), at most every 100 ms.
template <typename Result>
class promise_worker : public Napi::AsyncProgressQueueWorker<progress> {
public:
    using execute_fn = std::function<Result(const progress_fn &)>;
    using resolve_fn = std::function<Napi::Value(Napi::Env, Result &)>;

    promise_worker(Napi::Env env, execute_fn execute, resolve_fn resolve, Napi::Function on_progress)
        : Napi::AsyncProgressQueueWorker<progress>(env, "ppc-gpt"),
          deferred_(Napi::Promise::Deferred::New(env)),
          execute_(std::move(execute)),
          resolve_(std::move(resolve)) {
        if (!on_progress.IsEmpty()) {
            progress_cb_ = Napi::Persistent(on_progress);
        }
    }

    Napi::Promise promise() const { return deferred_.Promise(); }

protected:
    void Execute(const ExecutionProgress & ep) override {
        try {
            last_report_ms_ = -1e9;
            progress_fn report = [&](const progress & p) {
                if (progress_cb_.IsEmpty()) return;
                const double now = now_ms();
                if (now - last_report_ms_ < 100.0 && p.done < p.total) return;
                last_report_ms_ = now;
                ep.Send(&p, 1);
            };
            result_ = execute_(report);
        } catch (const std::exception & e) {
            SetError(e.what());
        } catch (...) {
            SetError("unknown native error");
        }
    }

    void OnProgress(const progress * data, size_t count) override {
        if (progress_cb_.IsEmpty() || count == 0) return;
        Napi::HandleScope scope(Env());
        const progress & p = data[count - 1];
        progress_cb_.Call({Napi::Number::New(Env(), p.done), Napi::Number::New(Env(), p.total)});
    }

    void OnOK() override {
        Napi::HandleScope scope(Env());
        try {
            deferred_.Resolve(resolve_(Env(), result_));
        } catch (const Napi::Error & e) {
            deferred_.Reject(e.Value());
        } catch (const std::exception & e) {
            deferred_.Reject(Napi::Error::New(Env(), e.what()).Value());
        }
    }

    void OnError(const Napi::Error & e) override { deferred_.Reject(e.Value()); }

private:
    static double now_ms();

    Napi::Promise::Deferred deferred_;
    execute_fn execute_;
    resolve_fn resolve_;
    Napi::FunctionReference progress_cb_;
    Result result_{};
    double last_report_ms_ = 0;
};

template <typename Result>
double promise_worker<Result>::now_ms() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

// Queues the work and returns its promise.
template <typename Result>
Napi::Promise run_async(Napi::Env env,
                        typename promise_worker<Result>::execute_fn execute,
                        typename promise_worker<Result>::resolve_fn resolve,
                        Napi::Function on_progress = Napi::Function()) {
    auto * worker = new promise_worker<Result>(env, std::move(execute), std::move(resolve), on_progress);
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
}

} // namespace ppc
