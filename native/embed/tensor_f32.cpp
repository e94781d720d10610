#include "embed/tensor_f32.h"

#include "gguf/gguf_file.h"

#include "ggml.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace ppc {

int embed_threads(int requested) {
    if (requested > 0) return requested;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : (int) hw;
}

f32_matrix read_tensor_f32(const std::string & path, const std::string & name, int n_threads,
                           const progress_fn & progress) {
    gguf_file f(path);
    const gguf_tensor_info * t = f.find_tensor(name);
    if (!t) {
        std::string have;
        for (size_t i = 0; i < f.tensors().size() && i < 8; ++i) have += (i ? ", " : "") + f.tensors()[i].name;
        if (f.tensors().size() > 8) have += ", ...";
        throw std::invalid_argument(path + ": no tensor named '" + name + "' (tensors: " + (have.empty() ? "none" : have) + ")");
    }
    const ggml_type type = (ggml_type) t->type;
    const auto * traits = ggml_get_type_traits(type);
    if (type != GGML_TYPE_F32 && !traits->to_float) {
        throw std::invalid_argument(path + ": cannot dequantize tensor '" + name + "' of type " + ggml_type_name(type));
    }
    f32_matrix m;
    m.name = name;
    m.type = t->type;
    m.n_cols = t->ne[0];
    m.n_rows = t->ne[0] > 0 ? (int64_t) (t->n_elements / (uint64_t) t->ne[0]) : 0;
    m.offset = f.data_offset() + t->offset;
    m.n_bytes = t->n_bytes;
    if (m.n_rows <= 0 || m.n_cols <= 0) throw std::invalid_argument(path + ": tensor '" + name + "' is empty");
    m.data.resize((size_t) (m.n_rows * m.n_cols));

    const size_t row_bytes = ggml_row_size(type, m.n_cols);
    const uint8_t * src = f.tensor_data(*t);
    // Chunks of ~1 MiB of source rows, handed out to threads from an atomic counter.
    const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t) ((1u << 20) / std::max<size_t>(row_bytes, 1)));
    const int64_t n_chunks = (m.n_rows + rows_per_chunk - 1) / rows_per_chunk;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    float * dst = m.data.data();
    // Dequantizes the next unclaimed chunk; false when none is left.
    auto next_chunk = [&]() -> bool {
        const int64_t c = next.fetch_add(1);
        if (c >= n_chunks) return false;
        const int64_t r0 = c * rows_per_chunk;
        const int64_t nr = std::min(rows_per_chunk, m.n_rows - r0);
        const uint8_t * s = src + (size_t) r0 * row_bytes;
        float * d = dst + (size_t) (r0 * m.n_cols);
        if (type == GGML_TYPE_F32) {
            memcpy(d, s, (size_t) (nr * m.n_cols) * sizeof(float));
        } else {
            traits->to_float(s, d, nr * m.n_cols);
        }
        done.fetch_add(nr);
        return true;
    };
    const int nt = (int) std::min<int64_t>(embed_threads(n_threads), n_chunks);
    std::vector<std::thread> pool;
    for (int i = 1; i < nt; ++i) pool.emplace_back([&]() { while (next_chunk()) {} });
    // The calling thread works too and reports progress between its chunks.
    while (next_chunk()) {
        if (progress) progress({(double) done.load(), (double) m.n_rows});
    }
    for (auto & th : pool) th.join();
    if (progress) progress({(double) m.n_rows, (double) m.n_rows});
    return m;
}

} // namespace ppc
