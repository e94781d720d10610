#include "lora/merge.h"

#include "common/atomic_file.h"
#include "gguf/gguf_file.h"
#include "gguf/tensor_ops.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

namespace ppc {

namespace {

bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string kv_string(const gguf_file & f, const std::string & key) {
    const gguf_kv * kv = f.find(key);
    return kv ? f.scalar_string(*kv) : std::string();
}

std::vector<float> read_f32(const gguf_file & f, const gguf_tensor_info & t) {
    return dequantize(t.type, f.tensor_data(t), (size_t) t.n_bytes, (int64_t) t.n_elements);
}

} // namespace

lora_merge_result merge_lora(const std::string & base_path, const std::string & adapter_path, const std::string & out_path,
                             float scale, const progress_fn & progress, const cancel_token * cancel) {
    check_output_path(base_path, out_path);
    check_output_path(adapter_path, out_path);
    if (!std::isfinite(scale)) throw std::invalid_argument("the adapter scale must be a finite number");
    gguf_file base(base_path);
    gguf_file ad(adapter_path);

    // --- the adapter, validated as llama_adapter_lora_init does ---
    if (kv_string(ad, "general.type") != "adapter") throw gguf_error(adapter_path + ": general.type is not \"adapter\"");
    if (kv_string(ad, "adapter.type") != "lora") throw gguf_error(adapter_path + ": adapter.type is not \"lora\"");
    const std::string arch = base.get_string("general.architecture");
    if (kv_string(ad, "general.architecture") != arch) {
        throw gguf_error(adapter_path + ": the adapter is for architecture \"" + kv_string(ad, "general.architecture") +
                         "\", the base model is \"" + arch + "\"");
    }
    lora_merge_result res;
    if (const gguf_kv * kv = ad.find("adapter.lora.alpha")) res.alpha = (float) ad.scalar_number(*kv);

    struct pair { const gguf_tensor_info * a = nullptr; const gguf_tensor_info * b = nullptr; };
    std::map<std::string, pair> pairs;
    for (const auto & t : ad.tensors()) {
        if (ends_with(t.name, ".lora_a")) {
            pairs[t.name.substr(0, t.name.size() - 7)].a = &t;
        } else if (ends_with(t.name, ".lora_b")) {
            pairs[t.name.substr(0, t.name.size() - 7)].b = &t;
        } else {
            throw gguf_error(adapter_path + ": tensor '" + t.name + "' is neither a .lora_a nor a .lora_b matrix");
        }
    }
    if (pairs.empty()) throw gguf_error(adapter_path + ": the adapter has no LoRA tensors");
    for (const auto & [name, p] : pairs) {
        if (!p.a || !p.b) throw gguf_error(adapter_path + ": '" + name + "' lacks its " + (p.a ? ".lora_b" : ".lora_a") + " matrix");
        const gguf_tensor_info * w = base.find_tensor(name);
        if (!w) throw gguf_error(adapter_path + ": '" + name + "' is not a tensor of " + base_path);
        if (name == "token_embd.weight") throw gguf_error(adapter_path + ": merging a token-embedding LoRA is not supported");
        if (w->n_dims != 2 || p.a->n_dims != 2 || p.b->n_dims != 2 || p.a->ne[0] != w->ne[0] || p.b->ne[1] != w->ne[1] ||
            p.a->ne[1] != p.b->ne[0]) {
            throw gguf_error(adapter_path + ": the LoRA matrices of '" + name + "' do not fit its shape [" +
                             std::to_string(w->ne[0]) + ", " + std::to_string(w->ne[1]) + "]");
        }
        const uint32_t r = (uint32_t) p.a->ne[1];
        if (res.rank != 0 && res.rank != r) res.rank = UINT32_MAX; // mixed ranks: reported as 0 below
        else if (res.rank == 0) res.rank = r;
    }
    if (res.rank == UINT32_MAX) res.rank = 0;

    // --- output: the base's header byte for byte (same tensors, types and offsets), then the data ---
    std::vector<const gguf_tensor_info *> order;
    for (const auto & t : base.tensors()) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const gguf_tensor_info * x, const gguf_tensor_info * y) { return x->offset < y->offset; });

    uint64_t total = 0;
    for (const auto * t : order) total += t->n_bytes;
    progress_fn report = progress ? progress : [](const struct progress &) {};
    struct progress prog{0, (double) total};

    atomic_output out(out_path);
    out.copy_from(base.fd(), 0, base.data_offset(), [](uint64_t) {});
    // output offsets equal input offsets: gaps (alignment padding) are copied too, so that the file
    // differs from the base only inside the merged tensors
    auto pad_to = [&](uint64_t pos) {
        if (out.position() > pos) throw gguf_error(base_path + ": tensor data overlaps");
        out.copy_from(base.fd(), out.position(), pos - out.position(), [](uint64_t) {});
    };
    for (const gguf_tensor_info * t : order) {
        if (cancel && cancel->cancelled.load()) throw std::runtime_error("cancelled");
        pad_to(base.data_offset() + t->offset);
        auto it = pairs.find(t->name);
        if (it == pairs.end()) {
            out.copy_from(base.fd(), base.data_offset() + t->offset, t->n_bytes, [&](uint64_t n) {
                if (cancel && cancel->cancelled.load()) throw std::runtime_error("cancelled");
                prog.done += (double) n;
                report(prog);
            });
            continue;
        }
        // W[o][i] += s * sum_k B[o][k] A[k][i]   (ggml layout: A rows of n_in, B rows of r, W rows of n_in)
        const int64_t n_in = t->ne[0], n_out = t->ne[1], r = it->second.a->ne[1];
        const float s = res.alpha != 0.0f ? scale * res.alpha / (float) r : scale;
        std::vector<float> w = read_f32(base, *t);
        const std::vector<float> a = read_f32(ad, *it->second.a);
        const std::vector<float> b = read_f32(ad, *it->second.b);
        std::vector<double> row((size_t) n_in);
        for (int64_t o = 0; o < n_out; ++o) {
            std::fill(row.begin(), row.end(), 0.0);
            for (int64_t k = 0; k < r; ++k) {
                const double bk = b[(size_t) (o * r + k)];
                const float * ak = a.data() + k * n_in;
                for (int64_t i = 0; i < n_in; ++i) row[(size_t) i] += bk * ak[i];
            }
            float * wo = w.data() + o * n_in;
            for (int64_t i = 0; i < n_in; ++i) wo[i] = (float) ((double) wo[i] + s * row[(size_t) i]);
        }
        const std::vector<uint8_t> bytes = quantize_rows(t->type, w.data(), n_out, n_in);
        if (bytes.size() != t->n_bytes) throw std::logic_error("internal error: requantized '" + t->name + "' has another size");
        out.write(bytes.data(), bytes.size());
        res.merged.push_back(t->name);
        prog.done += (double) t->n_bytes;
        report(prog);
    }
    pad_to(base.file_size());
    res.bytes_written = out.position();
    out.commit();
    return res;
}

} // namespace ppc
