#include "gguf/tensor_ops.h"

#include "gguf/gguf_file.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <sys/mman.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace ppc {

namespace {

void check_type(uint32_t type) {
    if (type >= GGML_TYPE_COUNT || ggml_blck_size((ggml_type) type) <= 0 || ggml_type_size((ggml_type) type) == 0) {
        throw std::invalid_argument("unknown or unsupported ggml type " + std::to_string(type));
    }
}

} // namespace

std::vector<uint8_t> quantize_rows(uint32_t type, const float * src, int64_t n_rows, int64_t n_per_row) {
    check_type(type);
    const ggml_type t = (ggml_type) type;
    if (n_per_row % ggml_blck_size(t) != 0) {
        throw std::invalid_argument(std::string("row length ") + std::to_string(n_per_row) + " is not a multiple of " +
                                    ggml_type_name(t) + "'s block size " + std::to_string(ggml_blck_size(t)));
    }
    if (ggml_quantize_requires_imatrix(t)) {
        throw std::invalid_argument(std::string(ggml_type_name(t)) + " needs an importance matrix to quantize");
    }
    std::vector<uint8_t> dst(ggml_row_size(t, n_per_row) * (size_t) n_rows);
    if (t == GGML_TYPE_F32) {
        memcpy(dst.data(), src, dst.size());
        return dst;
    }
    if (t == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(src, (ggml_fp16_t *) dst.data(), n_rows * n_per_row);
        return dst;
    }
    if (t == GGML_TYPE_BF16) {
        ggml_fp32_to_bf16_row(src, (ggml_bf16_t *) dst.data(), n_rows * n_per_row);
        return dst;
    }
    ggml_quantize_init(t);
    ggml_quantize_chunk(t, src, dst.data(), 0, n_rows, n_per_row, nullptr);
    return dst;
}

std::vector<float> dequantize(uint32_t type, const uint8_t * src, size_t src_size, int64_t n) {
    check_type(type);
    const ggml_type t = (ggml_type) type;
    if (n % ggml_blck_size(t) != 0) throw std::invalid_argument("element count is not a multiple of the block size");
    if (ggml_row_size(t, n) > src_size) throw std::invalid_argument("buffer too small for the element count");
    std::vector<float> dst((size_t) n);
    if (t == GGML_TYPE_F32) {
        memcpy(dst.data(), src, (size_t) n * 4);
        return dst;
    }
    const auto * traits = ggml_get_type_traits(t);
    if (!traits->to_float) throw std::invalid_argument(std::string("cannot dequantize ") + ggml_type_name(t));
    traits->to_float(src, dst.data(), n);
    return dst;
}

std::vector<tensor_abs_stats> tensor_abs_sums(const std::string & path, const std::vector<std::string> & names,
                                              const progress_fn & progress) {
    gguf_file f(path);
    std::vector<const gguf_tensor_info *> infos;
    double total = 0;
    for (const auto & name : names) {
        const gguf_tensor_info * t = f.find_tensor(name);
        if (!t) throw std::invalid_argument(path + ": no tensor named '" + name + "'");
        infos.push_back(t);
        total += (double) t->n_bytes;
    }
    std::vector<tensor_abs_stats> out;
    std::vector<float> row_buf;
    struct progress p{0, total};
    const long page = sysconf(_SC_PAGESIZE);
    for (const gguf_tensor_info * t : infos) {
        const ggml_type type = (ggml_type) t->type;
        const auto * traits = ggml_get_type_traits(type);
        if (type != GGML_TYPE_F32 && !traits->to_float) {
            throw std::invalid_argument(path + ": cannot dequantize tensor '" + t->name + "' of type " + ggml_type_name(type));
        }
        tensor_abs_stats s;
        s.name = t->name;
        const int64_t n_per_row = t->ne[0];
        const int64_t n_rows    = (int64_t) (t->n_elements / (uint64_t) n_per_row);
        const size_t  row_bytes = ggml_row_size(type, n_per_row);
        const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t) ((4u << 20) / std::max<size_t>(row_bytes, 1)));
        row_buf.resize((size_t) (n_per_row * rows_per_chunk));
        const uint8_t * data = f.tensor_data(*t);
        for (int64_t r0 = 0; r0 < n_rows; r0 += rows_per_chunk) {
            const int64_t nr = std::min(rows_per_chunk, n_rows - r0);
            const uint8_t * src = data + (size_t) r0 * row_bytes;
            const int64_t n = nr * n_per_row;
            if (type == GGML_TYPE_F32) {
                memcpy(row_buf.data(), src, (size_t) n * 4);
            } else {
                traits->to_float(src, row_buf.data(), n);
            }
            double acc = 0;
            for (int64_t i = 0; i < n; ++i) acc += std::fabs((double) row_buf[(size_t) i]);
            s.sum_abs += acc;
            // Drop the pages just read from this process's mapping: memory stays flat on big models.
            const uintptr_t a0 = ((uintptr_t) src) / (uintptr_t) page * (uintptr_t) page;
            madvise((void *) a0, (size_t) ((uintptr_t) src + (size_t) nr * row_bytes - a0), MADV_DONTNEED);
            p.done += (double) ((size_t) nr * row_bytes);
            if (progress) progress(p);
        }
        s.n = t->n_elements;
        out.push_back(std::move(s));
    }
    return out;
}

} // namespace ppc
