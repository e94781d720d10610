// Reading N-API call arguments, and exporting a binding file's functions: the shapes every binding
// file repeats, written once. Required arguments throw a JS TypeError naming the argument; optional
// ones fall back to a default when absent or of another type.
#pragma once

#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace ppc {

// ---------------------------------------------------------------- required arguments

std::string arg_string(const Napi::CallbackInfo & info, size_t i, const char * name);
Napi::Object arg_object(const Napi::CallbackInfo & info, size_t i, const char * name);
// An Int32Array (token ids) copied out; `what` names it in the TypeError.
std::vector<int32_t> int32_tokens(const Napi::Value & v, const std::string & what);

// ---------------------------------------------------------------- optional arguments

// Argument i if it is a function (a progress callback, mostly); an empty Function otherwise.
Napi::Function opt_arg_function(const Napi::CallbackInfo & info, size_t i);
// Argument i as a 32-bit integer if it is a number; `def` otherwise.
int32_t opt_arg_int32(const Napi::CallbackInfo & info, size_t i, int32_t def);
// Argument i as a 64-bit integer if it is a number; `def` otherwise.
int64_t opt_arg_int64(const Napi::CallbackInfo & info, size_t i, int64_t def);
// Argument i's JS truthiness; false when absent.
bool opt_arg_bool(const Napi::CallbackInfo & info, size_t i);

// ---------------------------------------------------------------- optional properties

Napi::Function opt_function(const Napi::Object & obj, const char * key);
// An optional number property in [lo, hi] (a whole number if `integer`); `def` when absent.
double opt_number(const Napi::Object & o, const char * key, double def, double lo, double hi, bool integer = false);

// ---------------------------------------------------------------- exports

// One free function of a binding file, as its register_* exports it.
struct js_function {
    const char * name;
    Napi::Value (*callback)(const Napi::CallbackInfo &);
};

// Sets exports[name] = a JS function calling `callback`, for each one.
void export_functions(Napi::Env env, Napi::Object exports, std::initializer_list<js_function> functions);

} // namespace ppc
