// Nearest-neighbour search over a vocabulary's token embeddings, and CusText's greedy partition
// of the vocabulary into clusters of K mutually near tokens.
//
// Candidates are found with an F32 matrix product (ggml's mul_mat, which runs llamafile's tiled
// sgemm on the CPU) and a bounded top-M selection per query; they are then re-ranked by the exact
// similarity computed in double precision. Every similarity that leaves this file is that exact
// double value, so that the privacy mechanisms built on it can be audited against an independent
// double-precision computation.
#pragma once

#include "common/async.h"

#include <cstdint>
#include <vector>

namespace ppc {

enum embed_metric : int32_t {
    EMBED_COSINE    = 0,  // s(x, y) = e_x . e_y / (|e_x| |e_y|); 0 when either row is all zeros
    EMBED_EUCLIDEAN = 1,  // s(x, y) = -|e_x - e_y|
};

// A row-major F32 matrix owned elsewhere: row i is token i's embedding.
struct embed_view {
    const float * data = nullptr;
    int64_t n_rows = 0;
    int64_t n_cols = 0;
    const float * row(int64_t i) const { return data + i * n_cols; }
};

// Exact similarity of rows a and b in double precision (norms: row_norms() of the same view).
double exact_similarity(const embed_view & e, const double * norms, int64_t a, int64_t b, embed_metric metric);

// Euclidean norm of every row, in double precision.
std::vector<double> row_norms(const embed_view & e, int n_threads);

// Checks that `ids` are distinct, ascending and inside [0, n_rows); throws std::invalid_argument.
void check_token_set(const std::vector<int32_t> & ids, int64_t n_rows, const char * what);

// Similarities s(q, y) of every query token q against every token y of `domain`, exact, in double:
// queries.size() x domain.size(), row-major.
std::vector<double> similarity_rows(const embed_view & e, const std::vector<int32_t> & queries,
                                    const std::vector<int32_t> & domain, embed_metric metric, int n_threads);

struct neighbour_lists {
    int32_t m = 0;                  // list capacity per query
    std::vector<int32_t> count;     // per query: entries filled (< m only when the domain is smaller)
    std::vector<int32_t> tokens;    // queries x m, token ids, by similarity descending, then id ascending
    std::vector<double> similarity; // queries x m, exact similarities
};

// The m most similar tokens of `domain` to each query token (the query itself excluded).
neighbour_lists nearest_neighbours(const embed_view & e, const std::vector<int32_t> & queries,
                                   const std::vector<int32_t> & domain, int32_t m, embed_metric metric,
                                   int n_threads, const progress_fn & progress);

// CusText's conservative mapping as a partition of `domain`: the smallest unassigned token x is
// a seed; x and the (K - 1) unassigned tokens most similar to it (similarity descending, then
// token id ascending) form a cluster; repeat until every token is assigned (the last cluster
// holds the |domain| mod K tokens left, when that is not zero).
struct cluster_partition {
    std::vector<int32_t> offsets;         // n_clusters + 1
    std::vector<int32_t> members;         // cluster c: members[offsets[c] .. offsets[c+1]), seed first, then by rank
    std::vector<uint64_t> sim_offsets;    // n_clusters + 1, into similarities
    std::vector<double> similarities;     // cluster c of size n: n x n, [i * n + j] = s(member i, member j)
    int64_t batches = 0;                  // neighbour searches run
    int64_t rows_searched = 0;            // query rows multiplied against the remaining vocabulary
    int64_t rows_wasted = 0;              // searched rows whose token another cluster took first
    int64_t compactions = 0;              // times the remaining vocabulary was repacked
};

cluster_partition build_clusters(const embed_view & e, const std::vector<int32_t> & domain, int32_t k,
                                 embed_metric metric, int n_threads, const progress_fn & progress);

} // namespace ppc
