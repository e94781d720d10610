#include "quantize/imatrix_collector.h"

#include "ggml-backend.h"

#include <cmath>
#include <cstring>

namespace ppc {

std::string weight_name(const char * name) {
    const char * p = strchr(name, '#');
    if (!p) return name;
    ++p;
    const char * q = strchr(p, '#');
    return q ? std::string(p, (size_t) (q - p)) : std::string(p);
}

bool imatrix_collector::wants(const ggml_tensor * t) {
    if (t->op != GGML_OP_MUL_MAT && t->op != GGML_OP_MUL_MAT_ID) return false;
    const ggml_tensor * src0 = t->src[0];
    const ggml_tensor * src1 = t->src[1];
    if (!src0 || !src1 || src1->type != GGML_TYPE_F32) return false;
    // llama-imatrix: block weights only (output.weight only with --process-output, off by default)
    return weight_name(src0->name).compare(0, 4, "blk.") == 0;
}

bool imatrix_collector::collect(const ggml_tensor * t) {
    const ggml_tensor * src1 = t->src[1];
    const char * data = (const char *) src1->data;
    if (!ggml_backend_buffer_is_host(src1->buffer)) {
        host_copy_.resize(ggml_nbytes(src1));
        ggml_backend_tensor_get(src1, host_copy_.data(), 0, host_copy_.size());
        data = host_copy_.data();
    }
    if (src1->nb[0] != ggml_element_size(src1)) {
        error_ = std::string("activations of ") + t->src[0]->name + " are not contiguous in a row";
        return false;
    }
    const std::string name = weight_name(t->src[0]->name);
    return t->op == GGML_OP_MUL_MAT_ID ? collect_experts(name, t, data) : collect_dense(name, t, data);
}

bool imatrix_collector::collect_dense(const std::string & name, const ggml_tensor * t, const char * data) {
    const ggml_tensor * src0 = t->src[0];
    const ggml_tensor * src1 = t->src[1];
    const int64_t n_mat = src0->ne[2] * src0->ne[3];
    const int64_t ne0 = src1->ne[0];
    imatrix_entry & e = entries_[name];
    if (e.sums.empty()) {
        e.sums.assign((size_t) (ne0 * n_mat), 0.0);
        e.counts.assign(1, 0);
    } else if (e.sums.size() != (size_t) (ne0 * n_mat)) {
        error_ = "inconsistent activation size for " + name;
        return false;
    }
    for (int64_t i3 = 0; i3 < src1->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < src1->ne[2]; ++i2) {
            const int64_t mat = (i3 % src0->ne[3]) * src0->ne[2] + (i2 % src0->ne[2]);
            double * acc = e.sums.data() + mat * ne0;
            for (int64_t row = 0; row < src1->ne[1]; ++row) {
                const float * x = (const float *) (data + row * src1->nb[1] + i2 * src1->nb[2] + i3 * src1->nb[3]);
                for (int64_t j = 0; j < ne0; ++j) {
                    if (!std::isfinite(x[j])) {
                        error_ = "non-finite activations entering " + name;
                        return false;
                    }
                    acc[j] += (double) x[j] * (double) x[j];
                }
            }
        }
    }
    for (auto & c : e.counts) c += ggml_nrows(src1) / n_mat;
    return true;
}

bool imatrix_collector::collect_experts(const std::string & name, const ggml_tensor * t, const char * data) {
    const ggml_tensor * src0 = t->src[0];
    const ggml_tensor * src1 = t->src[1];
    const ggml_tensor * ids = t->src[2];
    const int64_t n_as = src0->ne[2];
    const int64_t n_ids = ids->ne[0];
    const int64_t ne0 = src1->ne[0];
    const int64_t n_tokens = src1->ne[2];
    if (ids->ne[1] != n_tokens || ggml_nrows(src1) != src1->ne[1] * src1->ne[2]) {
        error_ = "unexpected expert routing shape for " + name;
        return false;
    }
    ids_.resize(ggml_nbytes(ids));
    ggml_backend_tensor_get(ids, ids_.data(), 0, ids_.size());
    imatrix_entry & e = entries_[name];
    if (e.sums.empty()) {
        e.sums.assign((size_t) (ne0 * n_as), 0.0);
        e.counts.assign((size_t) n_as, 0);
    } else if (e.sums.size() != (size_t) (ne0 * n_as) || e.counts.size() != (size_t) n_as) {
        error_ = "inconsistent activation size for " + name;
        return false;
    }
    for (int64_t idx = 0; idx < n_ids; ++idx) {
        for (int64_t row = 0; row < n_tokens; ++row) {
            const int32_t ex = *(const int32_t *) (ids_.data() + row * ids->nb[1] + idx * ids->nb[0]);
            if (ex < 0 || ex >= n_as) {
                error_ = "expert id out of range for " + name;
                return false;
            }
            const float * x = (const float *) (data + (idx % src1->ne[1]) * src1->nb[1] + row * src1->nb[2]);
            double * acc = e.sums.data() + ex * ne0;
            ++e.counts[(size_t) ex];
            for (int64_t j = 0; j < ne0; ++j) {
                if (!std::isfinite(x[j])) {
                    error_ = "non-finite activations entering " + name;
                    return false;
                }
                acc[j] += (double) x[j] * (double) x[j];
            }
        }
    }
    return true;
}

} // namespace ppc
