#include "cuda/layer_stats.h"

#include "ggml-backend.h"

#include <cuda_runtime.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace ppc {

namespace {

void check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

template <typename T>
void ensure(T ** ptr, size_t * cap, size_t n, const char * what) {
    if (*cap >= n) return;
    if (*ptr) cudaFree(*ptr);
    *ptr = nullptr;
    check(cudaMalloc((void **) ptr, n * sizeof(T)), what);
    *cap = n;
}

bool on_cuda(const ggml_tensor * t) {
    if (!t->buffer || ggml_backend_buffer_is_host(t->buffer) || !ggml_is_contiguous(t)) return false;
    const char * name = ggml_backend_buft_name(ggml_backend_buffer_get_type(t->buffer));
    return name && strncmp(name, "CUDA", 4) == 0;
}

// Sums four per-thread partials over a block of 256 threads; the totals land in sh[j][0].
__device__ void block_sum4(double (&sh)[4][256], double a, double b, double c, double d) {
    sh[0][threadIdx.x] = a; sh[1][threadIdx.x] = b; sh[2][threadIdx.x] = c; sh[3][threadIdx.x] = d;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            for (int j = 0; j < 4; ++j) sh[j][threadIdx.x] += sh[j][threadIdx.x + s];
        }
        __syncthreads();
    }
}

// One block per token: the four dot products over the hidden dimension, reduced in double.
__global__ void token_stats_kernel(const float * __restrict__ x, const float * __restrict__ y, int64_t n_embd,
                                   double * __restrict__ out, int64_t n_tokens) {
    const int64_t t = blockIdx.x;
    const float * xr = x + t * n_embd;
    const float * yr = y + t * n_embd;
    double xy = 0, xx = 0, yy = 0, dd = 0;
    for (int64_t k = threadIdx.x; k < n_embd; k += blockDim.x) {
        const double a = xr[k], b = yr[k];
        xy += a * b; xx += a * a; yy += b * b; dd += (b - a) * (b - a);
    }
    __shared__ double sh[4][256];
    block_sum4(sh, xy, xx, yy, dd);
    if (threadIdx.x == 0) {
        xy = sh[0][0]; xx = sh[1][0]; yy = sh[2][0]; dd = sh[3][0];
        double c = (xx > 0 && yy > 0) ? xy / sqrt(xx * yy) : 1.0;
        c = fmax(-1.0, fmin(1.0, c));
        out[t]                = c;
        out[n_tokens + t]     = acos(c) / 3.14159265358979323846;
        out[2 * n_tokens + t] = xx > 0 ? sqrt(dd / xx) : 0.0;
    }
}

// One block: masked sums of the per-token terms.
__global__ void masked_sum_kernel(const double * __restrict__ per_token, const uint8_t * __restrict__ mask,
                                  int64_t n_tokens, double * __restrict__ sums) {
    double c = 0, a = 0, r = 0, n = 0;
    for (int64_t t = threadIdx.x; t < n_tokens; t += blockDim.x) {
        if (mask && !mask[t]) continue;
        c += per_token[t]; a += per_token[n_tokens + t]; r += per_token[2 * n_tokens + t]; n += 1;
    }
    __shared__ double sh[4][256];
    block_sum4(sh, c, a, r, n);
    if (threadIdx.x == 0) {
        for (int j = 0; j < 4; ++j) sums[j] = sh[j][0];
    }
}

int device_of(const void * p) {
    cudaPointerAttributes attr;
    check(cudaPointerGetAttributes(&attr, p), "cudaPointerGetAttributes");
    return attr.device;
}

} // namespace

cuda_layer_stats::~cuda_layer_stats() {
    if (device >= 0) cudaSetDevice(device);
    if (prev) cudaFree(prev);
    if (per_token) cudaFree(per_token);
    if (mask) cudaFree(mask);
    if (sums) cudaFree(sums);
}

bool cuda_layer_stats_set_input(cuda_layer_stats * s, const ggml_tensor * t, int64_t n_embd, int64_t n_tokens) {
    if (!on_cuda(t)) return false;
    s->device = device_of(t->data);
    check(cudaSetDevice(s->device), "cudaSetDevice");
    // ggml computes on its own non-blocking streams: wait for them before reading.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    s->n_embd = n_embd;
    s->n_tokens = n_tokens;
    ensure(&s->prev, &s->prev_cap, (size_t) (n_embd * n_tokens), "cudaMalloc");
    check(cudaMemcpy(s->prev, t->data, (size_t) (n_embd * n_tokens) * sizeof(float), cudaMemcpyDeviceToDevice), "cudaMemcpy");
    return true;
}

bool cuda_layer_stats_upload_input(cuda_layer_stats * s, const ggml_tensor * t, const std::vector<float> & host,
                                   int64_t n_embd, int64_t n_tokens) {
    if (!on_cuda(t) || host.size() != (size_t) (n_embd * n_tokens)) return false;
    s->device = device_of(t->data);
    check(cudaSetDevice(s->device), "cudaSetDevice");
    s->n_embd = n_embd;
    s->n_tokens = n_tokens;
    ensure(&s->prev, &s->prev_cap, host.size(), "cudaMalloc");
    check(cudaMemcpy(s->prev, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    return true;
}

bool cuda_layer_stats_step(cuda_layer_stats * s, const ggml_tensor * t, const uint8_t * mask,
                           double * cos_sum, double * angular_sum, double * contribution_sum, uint64_t * counted) {
    if (!on_cuda(t) || s->device < 0 || t->ne[0] != s->n_embd || t->ne[1] != s->n_tokens) return false;
    check(cudaSetDevice(s->device), "cudaSetDevice");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    const int64_t n_tokens = s->n_tokens;
    ensure(&s->per_token, &s->per_token_cap, (size_t) (3 * n_tokens), "cudaMalloc");
    if (!s->sums) check(cudaMalloc((void **) &s->sums, 4 * sizeof(double)), "cudaMalloc");
    const uint8_t * d_mask = nullptr;
    if (mask) {
        ensure(&s->mask, &s->mask_cap, (size_t) n_tokens, "cudaMalloc");
        check(cudaMemcpy(s->mask, mask, (size_t) n_tokens, cudaMemcpyHostToDevice), "cudaMemcpy");
        d_mask = s->mask;
    }
    token_stats_kernel<<<(unsigned) n_tokens, 256>>>(s->prev, (const float *) t->data, s->n_embd, s->per_token, n_tokens);
    masked_sum_kernel<<<1, 256>>>(s->per_token, d_mask, n_tokens, s->sums);
    check(cudaGetLastError(), "layer statistics kernels");
    double h[4];
    check(cudaMemcpy(h, s->sums, sizeof(h), cudaMemcpyDeviceToHost), "cudaMemcpy");
    *cos_sum = h[0];
    *angular_sum = h[1];
    *contribution_sum = h[2];
    *counted = (uint64_t) h[3];
    check(cudaMemcpy(s->prev, t->data, (size_t) (s->n_embd * n_tokens) * sizeof(float), cudaMemcpyDeviceToDevice), "cudaMemcpy");
    return true;
}

void cuda_layer_stats_get_input(const cuda_layer_stats * s, std::vector<float> & dst) {
    check(cudaSetDevice(s->device), "cudaSetDevice");
    dst.resize((size_t) (s->n_embd * s->n_tokens));
    check(cudaMemcpy(dst.data(), s->prev, dst.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
}

} // namespace ppc
