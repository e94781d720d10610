// libcublas.so.11 that forwards the cuBLAS calls ggml's CUDA backend makes to a newer cuBLAS
// (libcublas.so.12 or .13) loaded at first use. For device checks only: it lets the release's
// CUDA 11.8 build run on a GPU machine that has a newer CUDA runtime but not cuBLAS 11 (whose
// libcublasLt alone is ~550 MB, too large to bring along). Users install cuBLAS 11 (docs/install.md).
//
// The functions keep their CUDA 11 prototypes and symbol version (libcublas.so.11, see
// cublas11-forward.map); their types (handles, enums, cudaDataType, cublasComputeType_t) are the
// same in cuBLAS 12 and 13.
//
//   gcc -O2 -shared -fPIC -o libcublas.so.11 -Wl,-soname,libcublas.so.11
//       -Wl,--version-script=cublas11-forward.map cublas11-forward.c -ldl   (one line)
//
// PPC_CUBLAS_FORWARD names the library to forward to (default: libcublas.so.13, then .12).
#include <cublas_v2.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void * target(void) {
    static void * lib = NULL;
    if (lib)
        return lib;
    const char * chosen = getenv("PPC_CUBLAS_FORWARD");
    const char * names[] = {chosen, "libcublas.so.13", "libcublas.so.12"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !lib; ++i)
        if (names[i])
            lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "cublas11-forward: no newer cuBLAS found (set PPC_CUBLAS_FORWARD): %s\n", dlerror());
        abort();
    }
    return lib;
}

static void * resolve(const char * name) {
    void * f = dlsym(target(), name);
    if (!f) {
        fprintf(stderr, "cublas11-forward: %s is not in the target cuBLAS\n", name);
        abort();
    }
    return f;
}

// One forwarding function: its CUDA 11 prototype, the call's arguments.
#define FORWARD(name, params, args)                                   \
    cublasStatus_t CUBLASWINAPI name params {                         \
        static __typeof__(name) * fn = NULL;                          \
        if (!fn)                                                      \
            fn = (__typeof__(name) *) resolve(#name);                 \
        return fn args;                                               \
    }

FORWARD(cublasCreate_v2, (cublasHandle_t * handle), (handle))
FORWARD(cublasDestroy_v2, (cublasHandle_t handle), (handle))
FORWARD(cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
FORWARD(cublasSetMathMode, (cublasHandle_t handle, cublasMath_t mode), (handle, mode))
FORWARD(cublasSetWorkspace_v2, (cublasHandle_t handle, void * workspace, size_t size), (handle, workspace, size))
FORWARD(cublasGemmEx,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void * alpha,
         const void * A, cudaDataType at, int lda, const void * B, cudaDataType bt, int ldb, const void * beta,
         void * C, cudaDataType ct, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmBatchedEx,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void * alpha,
         const void * const A[], cudaDataType at, int lda, const void * const B[], cudaDataType bt, int ldb,
         const void * beta, void * const C[], cudaDataType ct, int ldc, int batch, cublasComputeType_t compute,
         cublasGemmAlgo_t algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, batch, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void * alpha,
         const void * A, cudaDataType at, int lda, long long int sa, const void * B, cudaDataType bt, int ldb,
         long long int sb, const void * beta, void * C, cudaDataType ct, int ldc, long long int sc, int batch,
         cublasComputeType_t compute, cublasGemmAlgo_t algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute, algo))
FORWARD(cublasSgemm_v2,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float * alpha,
         const float * A, int lda, const float * B, int ldb, const float * beta, float * C, int ldc),
        (h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc))
FORWARD(cublasSgemmBatched,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float * alpha,
         const float * const A[], int lda, const float * const B[], int ldb, const float * beta, float * const C[],
         int ldc, int batch),
        (h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, batch))
FORWARD(cublasSgemmStridedBatched,
        (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float * alpha,
         const float * A, int lda, long long int sa, const float * B, int ldb, long long int sb, const float * beta,
         float * C, int ldc, long long int sc, int batch),
        (h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch))
FORWARD(cublasStrsmBatched,
        (cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t trans, cublasDiagType_t diag,
         int m, int n, const float * alpha, const float * const A[], int lda, float * const B[], int ldb, int batch),
        (h, side, uplo, trans, diag, m, n, alpha, A, lda, B, ldb, batch))
