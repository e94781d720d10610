#include "gguf/layer_removal.h"

#include "common/atomic_file.h"
#include "gguf/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace ppc {

namespace {

// Metadata keys (after "<arch>.") whose value counts layers from the start or the end of the stack.
const char * const k_leading_count_keys[]  = {"leading_dense_block_count", "hash_layer_count"};
const char * const k_trailing_count_keys[] = {"nextn_predict_layers", "attention.shared_kv_layers"};
// Arrays whose elements are this model's layer indices.
const char * const k_layer_index_keys[]    = {"ple.layers"};
// Arrays that are not indexed by layer even when their length happens to equal the layer count.
const char * const k_not_per_layer_keys[]  = {"rope.dimension_sections", "classifier.output_labels",
                                              "target_layers", "ple.layers", "ple.layer_multipliers"};
// Periodic layer layouts that llama.cpp cannot express per layer: removal is refused unless
// the period is 1 (every layer alike).
const char * const k_period_keys[]         = {"interleave_moe_layer_step", "moe_every_n_layers"};

// Architectures whose sliding-window layout follows a period (llama.cpp's load_swa_pattern) and
// whose recurrent/full-attention layout follows an interval. Removal turns these into explicit
// per-layer arrays, which the loader reads in preference to the period.
struct swa_rule  { const char * arch; uint32_t default_period; bool dense_first; };
struct recr_rule { const char * arch; uint32_t default_interval; };
const swa_rule k_swa_rules[] = {
    {"afmoe", 4, false}, {"cohere2", 4, false}, {"cohere2moe", 4, true}, {"exaone-moe", 4, false},
    {"exaone4", 4, false}, {"gemma-embedding", 6, false}, {"gemma2", 2, false}, {"gemma3", 6, false},
    {"laguna", 4, true},
};
const recr_rule k_recr_rules[] = {
    {"qwen3next", 4}, {"qwen35", 4}, {"qwen35moe", 4}, {"qwen4exp", 4}, {"minimax-01", 8},
};

template <size_t N>
bool in_list(const char * const (&list)[N], const std::string & s) {
    for (const char * k : list) {
        if (s == k) return true;
    }
    return false;
}

// Parses "blk.<N>.<rest>"; returns false for other names.
bool parse_block_name(const std::string & name, uint64_t & layer, std::string & rest) {
    if (name.compare(0, 4, "blk.") != 0) return false;
    size_t i = 4;
    uint64_t n = 0;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
        n = n * 10 + (uint64_t) (name[i] - '0');
        if (n > (1ull << 32)) return false;
        ++i;
    }
    if (i == 4 || i >= name.size() || name[i] != '.') return false;
    layer = n;
    rest  = name.substr(i);
    return true;
}

} // namespace

layer_removal_result remove_layers(const std::string & in_path, const std::string & out_path,
                                   const std::vector<int64_t> & layers, const progress_fn & progress,
                                   const cancel_token * cancel) {
    check_output_path(in_path, out_path);
    gguf_file in(in_path);

    const std::string arch = in.get_string("general.architecture");
    const std::string prefix = arch + ".";
    const gguf_kv * block_count_kv = in.find(prefix + "block_count");
    if (!block_count_kv) throw gguf_error(in_path + ": missing metadata key '" + prefix + "block_count'");
    const int64_t n_layer_i = in.get_int(*block_count_kv);
    if (n_layer_i <= 0 || n_layer_i > 100000) throw gguf_error(in_path + ": implausible " + prefix + "block_count " + std::to_string(n_layer_i));
    const uint32_t n_layer = (uint32_t) n_layer_i;

    // --- which layers go ---
    if (layers.empty()) throw std::invalid_argument("no layers to remove were given");
    std::vector<bool> removed(n_layer, false);
    for (int64_t l : layers) {
        if (l < 0 || l >= (int64_t) n_layer) {
            throw std::invalid_argument("layer " + std::to_string(l) + " is out of range: " + in_path + " has " +
                                        std::to_string(n_layer) + " layers (0.." + std::to_string(n_layer - 1) + ")");
        }
        if (removed[(size_t) l]) throw std::invalid_argument("layer " + std::to_string(l) + " is listed twice");
        removed[(size_t) l] = true;
    }
    layer_removal_result res;
    res.n_layer_before = n_layer;
    std::vector<int64_t> new_index(n_layer, -1);
    for (uint32_t l = 0; l < n_layer; ++l) {
        if (removed[l]) {
            res.removed.push_back(l);
        } else {
            new_index[l] = (int64_t) res.kept.size();
            res.kept.push_back(l);
        }
    }
    if (res.kept.empty()) throw std::invalid_argument("removing every layer (" + std::to_string(n_layer) + ") leaves no model");
    res.n_layer_after = (uint32_t) res.kept.size();

    // Layer numbering of the unpruned ancestor, so that pruned models stay aligned with it.
    std::vector<uint32_t> ancestor(n_layer);
    for (uint32_t l = 0; l < n_layer; ++l) ancestor[l] = l;
    uint32_t ancestor_block_count = n_layer;
    if (const gguf_kv * kv = in.find("ppc_gpt.pruning.original_layers")) {
        if (kv->type != GGUF_VT_ARRAY || kv->n_elem != n_layer || gguf_vtype_size(kv->elem_type) == 0) {
            throw gguf_error(in_path + ": ppc_gpt.pruning.original_layers does not list one index per layer");
        }
        for (uint32_t l = 0; l < n_layer; ++l) ancestor[l] = (uint32_t) in.array_number(*kv, l);
        if (const gguf_kv * bc = in.find("ppc_gpt.pruning.original_block_count")) ancestor_block_count = (uint32_t) in.get_int(*bc);
    }
    for (uint32_t l : res.kept) res.original_kept.push_back(ancestor[l]);

    // --- tensors: which are kept, under which name ---
    struct planned_tensor { const gguf_tensor_info * src; std::string name; };
    std::vector<planned_tensor> out_tensors;
    for (const auto & t : in.tensors()) {
        uint64_t layer;
        std::string rest;
        if (parse_block_name(t.name, layer, rest)) {
            if (layer >= n_layer) {
                throw gguf_error(in_path + ": tensor '" + t.name + "' belongs to layer " + std::to_string(layer) +
                                 " but " + prefix + "block_count is " + std::to_string(n_layer));
            }
            if (removed[layer]) continue;
            out_tensors.push_back({&t, "blk." + std::to_string(new_index[layer]) + rest});
        } else {
            if (t.name.find(".blk.") != std::string::npos) {
                throw gguf_error(in_path + ": tensor '" + t.name + "' belongs to a second stack of blocks "
                                 "(encoder/decoder models); ppc-gpt removes layers from single-stack models only");
            }
            if (t.name.compare(0, 10, "per_layer_") == 0) {
                throw gguf_error(in_path + ": tensor '" + t.name + "' packs all layers into one tensor (" + arch +
                                 "); removing layers from this architecture is not supported");
            }
            out_tensors.push_back({&t, t.name});
        }
    }

    // --- metadata ---
    const gguf_kv * nextn_kv = in.find(prefix + "nextn_predict_layers");
    const uint32_t n_nextn = nextn_kv ? (uint32_t) std::max<int64_t>(0, in.get_int(*nextn_kv)) : 0;
    const uint32_t n_main  = n_layer - std::min(n_layer, n_nextn);

    const swa_rule * swa = nullptr;
    for (const auto & r : k_swa_rules) if (arch == r.arch) swa = &r;
    const recr_rule * recr = nullptr;
    for (const auto & r : k_recr_rules) if (arch == r.arch) recr = &r;

    auto kept_bools = [&](auto && is_set) {
        std::vector<bool> v;
        for (uint32_t l : res.kept) v.push_back(is_set(l));
        return v;
    };
    auto swa_layers = [&](uint32_t period) {
        return kept_bools([&](uint32_t il) {
            if (il >= n_main) return false;
            if (period == 0) return true;
            return swa->dense_first ? (il % period != 0) : (il % period < period - 1);
        });
    };
    auto recr_layers = [&](uint32_t interval) {
        return kept_bools([&](uint32_t il) { return il < n_main && interval != 0 && (il + 1) % interval != 0; });
    };

    gguf_buffer hdr;
    hdr.raw("GGUF", 4);
    hdr.pod<uint32_t>(3);
    hdr.pod<uint64_t>(out_tensors.size());
    const size_t n_kv_pos = hdr.bytes.size();
    hdr.pod<uint64_t>(0);  // patched below
    uint64_t n_kv_out = 0;
    bool wrote_swa = false, wrote_recr = false;

    for (const auto & kv : in.kvs()) {
        const bool ours = kv.key.compare(0, prefix.size(), prefix) == 0;
        const std::string sub = ours ? kv.key.substr(prefix.size()) : std::string();
        if (kv.key.compare(0, 16, "ppc_gpt.pruning.") == 0) continue;  // rewritten at the end
        ++n_kv_out;

        if (ours && sub == "block_count") {
            hdr.kv_int(kv.key, kv.type, res.n_layer_after);
            res.metadata_changed.push_back(kv.key);
        } else if (ours && in_list(k_leading_count_keys, sub) && kv.type != GGUF_VT_ARRAY) {
            const int64_t k = in.get_int(kv);
            int64_t n = 0;
            for (uint32_t l : res.kept) n += (int64_t) l < k;
            hdr.kv_int(kv.key, kv.type, n);
            res.metadata_changed.push_back(kv.key);
        } else if (ours && in_list(k_trailing_count_keys, sub) && kv.type != GGUF_VT_ARRAY) {
            const int64_t k = in.get_int(kv);
            int64_t n = 0;
            for (uint32_t l : res.kept) n += (int64_t) l >= (int64_t) n_layer - k;
            hdr.kv_int(kv.key, kv.type, n);
            res.metadata_changed.push_back(kv.key);
        } else if (ours && in_list(k_period_keys, sub) && kv.type != GGUF_VT_ARRAY && in.get_int(kv) > 1) {
            throw gguf_error(in_path + ": '" + kv.key + "' = " + std::to_string(in.get_int(kv)) +
                             " makes the layer kinds periodic, and llama.cpp cannot load a " + arch +
                             " model whose layers break that period; removing layers from it is not supported");
        } else if (ours && sub == "attention.sliding_window_pattern" && kv.type != GGUF_VT_ARRAY && swa) {
            hdr.kv_bool_array(kv.key, swa_layers((uint32_t) in.get_int(kv)));
            wrote_swa = true;
            res.metadata_changed.push_back(kv.key);
        } else if (ours && in_list(k_layer_index_keys, sub) && kv.type == GGUF_VT_ARRAY) {
            std::vector<uint32_t> remapped;
            for (uint64_t i = 0; i < kv.n_elem; ++i) {
                const double v = in.array_number(kv, i);
                if (v >= 0 && v < n_layer && !removed[(size_t) v]) remapped.push_back((uint32_t) new_index[(size_t) v]);
            }
            hdr.kv_u32_array(kv.key, remapped);
            res.metadata_changed.push_back(kv.key);
        } else if (ours && kv.type == GGUF_VT_ARRAY && kv.n_elem == n_layer && !in_list(k_not_per_layer_keys, sub)) {
            // A per-layer array (head counts, feed-forward lengths, window layouts...): keep the
            // kept layers' elements, byte for byte.
            hdr.str(kv.key);
            hdr.pod<uint32_t>(GGUF_VT_ARRAY);
            hdr.pod<uint32_t>(kv.elem_type);
            hdr.pod<uint64_t>(res.kept.size());
            for (uint32_t l : res.kept) {
                const auto span = in.array_element_span(kv, l);
                hdr.raw(kv.value + span.first, span.second - span.first);
            }
            if (sub == "attention.sliding_window_pattern") wrote_swa = true;
            if (sub == "attention.recurrent_layers") wrote_recr = true;
            res.metadata_changed.push_back(kv.key);
        } else {
            if (ours && sub == "attention.recurrent_layers") wrote_recr = true;
            if (ours && sub == "attention.sliding_window_pattern") wrote_swa = true;
            hdr.raw(kv.record, kv.record_size);
        }
    }
    if (swa && !wrote_swa) {
        hdr.kv_bool_array(prefix + "attention.sliding_window_pattern", swa_layers(swa->default_period));
        res.metadata_changed.push_back(prefix + "attention.sliding_window_pattern");
        ++n_kv_out;
    }
    if (recr && !wrote_recr) {
        uint32_t interval = recr->default_interval;
        if (const gguf_kv * kv = in.find(prefix + "full_attention_interval")) interval = (uint32_t) in.get_int(*kv);
        hdr.kv_bool_array(prefix + "attention.recurrent_layers", recr_layers(interval));
        res.metadata_changed.push_back(prefix + "attention.recurrent_layers");
        ++n_kv_out;
    }
    hdr.kv_u32_array("ppc_gpt.pruning.original_layers", res.original_kept);
    hdr.kv_int("ppc_gpt.pruning.original_block_count", GGUF_VT_UINT32, ancestor_block_count);
    n_kv_out += 2;

    // llama.cpp requires tensor data packed densely after the header, so the one free choice is
    // where the data section starts. A padding string makes it start at the input's offset within
    // a 4 KiB page: then every run of kept tensors that follows whole-page removals (the usual
    // case: a layer's size is a multiple of 4 KiB for common widths) sits at its input's page
    // offset, and the kernel copies whole pages, measured ~1.4x faster than copies whose pages
    // straddle (BENCHMARKS.md). At most 4 KiB of spaces.
    constexpr uint64_t k_page = 4096;
    const uint32_t align = in.alignment();
    if (align <= k_page && k_page % align == 0) {
        static const std::string pad_key = "ppc_gpt.pruning.page_padding";
        uint64_t infos = 0;  // the tensor infos' size: name, dims, type, offset
        for (const auto & pt : out_tensors) infos += 8 + pt.name.size() + 4 + 8ull * pt.src->n_dims + 4 + 8;
        const uint64_t fixed = hdr.bytes.size() + (8 + pad_key.size() + 4 + 8) + infos;
        const uint64_t want = in.data_offset() % k_page;
        hdr.kv_string(pad_key, std::string((size_t) ((want + k_page - fixed % k_page) % k_page), ' '));
        ++n_kv_out;
    }
    memcpy(hdr.bytes.data() + n_kv_pos, &n_kv_out, 8);

    // --- tensor infos: same order as the input, data packed at the input's alignment ---
    std::vector<uint64_t> offsets;
    uint64_t data_size = 0;
    for (const auto & pt : out_tensors) {
        const gguf_tensor_info & t = *pt.src;
        hdr.str(pt.name);
        hdr.pod<uint32_t>(t.n_dims);
        for (uint32_t d = 0; d < t.n_dims; ++d) hdr.pod<uint64_t>((uint64_t) t.ne[d]);
        hdr.pod<uint32_t>(t.type);
        hdr.pod<uint64_t>(data_size);
        offsets.push_back(data_size);
        data_size += (t.n_bytes + align - 1) / align * align;
    }
    hdr.pad_to(align);

    // --- write ---
    atomic_output out(out_path);
    out.write(hdr.bytes.data(), hdr.bytes.size());
    const uint64_t data_start = out.position();
    progress_fn report = progress ? progress : [](const struct progress &) {};
    struct progress p{0, (double) data_size};  // input bytes copied (padding between tensors included)
    static const uint8_t zeros[256] = {0};
    // Consecutive kept tensors that sit at the same relative offsets in the input as in the output
    // (the usual case: both files pack tensors in order at one alignment) move as one range, so a
    // removal costs a handful of large in-kernel copies rather than one per tensor.
    for (size_t i = 0; i < out_tensors.size();) {
        size_t j = i + 1;
        while (j < out_tensors.size() &&
               out_tensors[j].src->offset > out_tensors[i].src->offset &&
               out_tensors[j].src->offset - out_tensors[i].src->offset == offsets[j] - offsets[i]) {
            ++j;
        }
        const gguf_tensor_info & last = *out_tensors[j - 1].src;
        const uint64_t begin = out_tensors[i].src->offset;
        out.copy_from(in.fd(), in.data_offset() + begin, last.offset + last.n_bytes - begin, [&](uint64_t n) {
            if (cancel && cancel->cancelled.load()) throw std::runtime_error("cancelled");
            p.done += (double) n;
            report(p);
        });
        uint64_t pad = (align - (out.position() - data_start) % align) % align;
        while (pad > 0) {
            const size_t n = (size_t) std::min<uint64_t>(pad, sizeof(zeros));
            out.write(zeros, n);
            pad -= n;
        }
        i = j;
    }
    if (out.position() - data_start != data_size) {
        throw std::logic_error("internal error: wrote " + std::to_string(out.position() - data_start) +
                               " data bytes, planned " + std::to_string(data_size));
    }
    res.bytes_written = out.position();
    out.commit();
    p.done = p.total;
    report(p);
    return res;
}

} // namespace ppc
