#include "embed/neighbours.h"

#include "embed/tensor_f32.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

namespace ppc {

namespace {

// Bound on |F32 score - exact score| relative to the scale of the products summed: n-term dot
// products in F32 (any summation order, FMA or not) err by at most n*u times the sum of |a_i b_i|,
// u = 2^-24; the rows were themselves rounded to F32 (2u). Doubled for safety.
double f32_dot_error_factor(int64_t n) {
    return 2.0 * (double) (n + 4) * std::ldexp(1.0, -24);
}

// Runs fn(i) for i in [0, n) on up to n_threads threads (the caller's included).
template <typename Fn>
void parallel_for(int64_t n, int n_threads, Fn && fn) {
    const int nt = (int) std::max<int64_t>(1, std::min<int64_t>(n_threads, n));
    if (nt == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<int64_t> next{0};
    auto work = [&]() {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    };
    std::vector<std::thread> pool;
    pool.reserve((size_t) nt - 1);
    for (int t = 1; t < nt; ++t) pool.emplace_back(work);
    work();
    for (auto & th : pool) th.join();
}

double dot_f64(const float * a, const float * b, int64_t n) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += (double) a[i] * (double) b[i];
    return acc;
}

double dist_f64(const float * a, const float * b, int64_t n) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = (double) a[i] - (double) b[i];
        acc += d * d;
    }
    return std::sqrt(acc);
}

// keys: n_keys x dim, queries: n_q x dim (row-major F32) -> out: n_q x n_keys, out[q][j] = keys[j] . queries[q].
void matmul_f32(const float * keys, int64_t n_keys, const float * queries, int64_t n_q, int64_t dim, float * out,
                int n_threads, std::vector<uint8_t> & work) {
    ggml_init_params ip = {ggml_tensor_overhead() * 4 + ggml_graph_overhead() + 1024, nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, dim, n_keys);
    ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, dim, n_q);
    a->data = const_cast<float *>(keys);
    b->data = const_cast<float *>(queries);
    ggml_tensor * c = ggml_mul_mat(ctx, a, b);
    c->data = out;
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, c);
    ggml_cplan plan = ggml_graph_plan(gf, n_threads, nullptr);
    if (work.size() < plan.work_size) work.resize(plan.work_size);
    plan.work_data = work.data();
    const ggml_status st = ggml_graph_compute(gf, &plan);
    ggml_free(ctx);
    if (st != GGML_STATUS_SUCCESS) throw std::runtime_error("ggml_graph_compute failed in the neighbour search");
}

// F32 candidate search of query tokens against a packed set of key tokens, with exact re-ranking.
class candidate_search {
public:
    candidate_search(const embed_view & e, const std::vector<double> & norms, embed_metric metric, int n_threads)
        : e_(e), norms_(norms), metric_(metric), n_threads_(n_threads) {}

    // Packs the search rows of `tokens` (ascending token ids) as the keys. The packed matrix is
    // padded with zeros to a multiple of 16 rows and 8 columns, the shapes llamafile's tiled sgemm
    // takes (ggml falls back to far slower row-by-row dot products otherwise); zeros change no dot product.
    void set_keys(const std::vector<int32_t> & tokens) {
        key_tokens_ = tokens;
        const size_t dp = (size_t) padded_dim();
        const size_t rows = ((tokens.size() + 15) / 16) * 16;
        key_rows_.assign(rows * dp, 0.0f);
        key_bias_.assign(tokens.size(), 0.0f);
        parallel_for((int64_t) tokens.size(), n_threads_, [&](int64_t j) {
            search_row(tokens[(size_t) j], key_rows_.data() + (size_t) j * dp);
            if (metric_ == EMBED_EUCLIDEAN) key_bias_[(size_t) j] = (float) -(norms_[(size_t) tokens[(size_t) j]] * norms_[(size_t) tokens[(size_t) j]]);
        });
    }

    int64_t n_keys() const { return (int64_t) key_tokens_.size(); }
    const std::vector<int32_t> & key_tokens() const { return key_tokens_; }

    // The m keys most similar to each query token, by exact similarity (descending, then token id
    // ascending), skipping the query itself and every key k with skip(k) true.
    template <typename Skip>
    void search(const std::vector<int32_t> & queries, int32_t m, Skip && skip, neighbour_lists & out) {
        const int64_t dim = e_.n_cols;
        const int64_t dp = padded_dim();
        const int64_t nq = (int64_t) queries.size();
        const int64_t nk = n_keys();
        const int64_t nk_padded = (int64_t) (key_rows_.size() / (size_t) dp);
        query_rows_.assign((size_t) (nq * dp), 0.0f);
        parallel_for(nq, n_threads_, [&](int64_t q) { search_row(queries[(size_t) q], query_rows_.data() + (size_t) (q * dp)); });
        scores_.resize((size_t) nq * (size_t) nk_padded);
        if (nk > 0 && nq > 0) matmul_f32(key_rows_.data(), nk_padded, query_rows_.data(), nq, dp, scores_.data(), n_threads_, work_);

        out.m = m;
        out.count.assign((size_t) nq, 0);
        out.tokens.assign((size_t) nq * (size_t) m, -1);
        out.similarity.assign((size_t) nq * (size_t) m, 0.0);
        // Scale of the error bound: cosine rows are unit vectors (sum |a_i b_i| <= 1); Euclidean
        // scores 2 a.b - |b|^2 are bounded by the largest key norm.
        double max_key_norm = 0;
        for (int32_t t : key_tokens_) max_key_norm = std::max(max_key_norm, norms_[(size_t) t]);
        const double gamma = f32_dot_error_factor(dim);
        parallel_for(nq, n_threads_, [&](int64_t q) {
            const int32_t self = queries[(size_t) q];
            const float * sc = scores_.data() + (size_t) q * (size_t) nk_padded;
            const double delta = metric_ == EMBED_COSINE ? gamma
                : gamma * (2.0 * norms_[(size_t) self] * max_key_norm + 2.0 * max_key_norm * max_key_norm);
            // Candidate selection that provably keeps the exact top m: with T the m-th best F32
            // score, m keys have exact scores >= T - delta, so every exact top-m key has an F32
            // score >= T - 2 delta. All of those are re-ranked in double.
            thread_local std::vector<float> eligible;
            thread_local std::vector<int32_t> cand;
            eligible.clear();
            cand.clear();
            auto f32_score = [&](int64_t j) {
                return metric_ == EMBED_EUCLIDEAN ? 2.0f * sc[j] + key_bias_[(size_t) j] : sc[j];
            };
            for (int64_t j = 0; j < nk; ++j) {
                const int32_t tok = key_tokens_[(size_t) j];
                if (tok == self || skip(tok)) continue;
                eligible.push_back(f32_score(j));
                cand.push_back((int32_t) j);
            }
            if ((int64_t) eligible.size() > m) {
                std::nth_element(eligible.begin(), eligible.begin() + (m - 1), eligible.end(), std::greater<float>());
                const double floor = (double) eligible[(size_t) (m - 1)] - 2.0 * delta;
                size_t kept = 0;
                for (int32_t j : cand) {
                    if ((double) f32_score(j) >= floor) cand[kept++] = j;
                }
                cand.resize(kept);
            }
            // Exact re-ranking in double.
            std::vector<std::pair<double, int32_t>> ranked;
            ranked.reserve(cand.size());
            for (int32_t j : cand) {
                const int32_t tok = key_tokens_[(size_t) j];
                ranked.emplace_back(exact_similarity(e_, norms_.data(), self, tok, metric_), tok);
            }
            const size_t n = std::min(ranked.size(), (size_t) m);
            std::partial_sort(ranked.begin(), ranked.begin() + (ptrdiff_t) n, ranked.end(), [](const auto & x, const auto & y) {
                return x.first != y.first ? x.first > y.first : x.second < y.second;
            });
            out.count[(size_t) q] = (int32_t) n;
            for (size_t i = 0; i < n; ++i) {
                out.tokens[(size_t) q * (size_t) m + i] = ranked[i].second;
                out.similarity[(size_t) q * (size_t) m + i] = ranked[i].first;
            }
        });
    }

private:
    int64_t padded_dim() const { return (e_.n_cols + 7) / 8 * 8; }

    // The F32 row the matrix product uses: unit-length for cosine, raw for Euclidean.
    void search_row(int32_t tok, float * dst) const {
        const float * src = e_.row(tok);
        const double norm = norms_[(size_t) tok];
        if (metric_ == EMBED_COSINE) {
            const double inv = norm > 0 ? 1.0 / norm : 0.0;
            for (int64_t i = 0; i < e_.n_cols; ++i) dst[i] = (float) ((double) src[i] * inv);
        } else {
            std::copy(src, src + e_.n_cols, dst);
        }
    }

    const embed_view & e_;
    const std::vector<double> & norms_;
    embed_metric metric_;
    int n_threads_;
    std::vector<int32_t> key_tokens_;
    std::vector<float> key_rows_;
    std::vector<float> key_bias_;
    std::vector<float> query_rows_;
    std::vector<float> scores_;
    std::vector<uint8_t> work_;
};

void check_metric(embed_metric metric) {
    if (metric != EMBED_COSINE && metric != EMBED_EUCLIDEAN) {
        throw std::invalid_argument("unknown similarity metric " + std::to_string((int) metric));
    }
}

} // namespace

double exact_similarity(const embed_view & e, const double * norms, int64_t a, int64_t b, embed_metric metric) {
    if (metric == EMBED_COSINE) {
        const double na = norms[a], nb = norms[b];
        if (na == 0 || nb == 0) return 0.0;
        return dot_f64(e.row(a), e.row(b), e.n_cols) / (na * nb);
    }
    return -dist_f64(e.row(a), e.row(b), e.n_cols);
}

std::vector<double> row_norms(const embed_view & e, int n_threads) {
    std::vector<double> norms((size_t) e.n_rows);
    parallel_for(e.n_rows, embed_threads(n_threads), [&](int64_t i) {
        norms[(size_t) i] = std::sqrt(dot_f64(e.row(i), e.row(i), e.n_cols));
    });
    return norms;
}

void check_token_set(const std::vector<int32_t> & ids, int64_t n_rows, const char * what) {
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= n_rows) {
            throw std::invalid_argument(std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                                        " is outside the embedding matrix (" + std::to_string(n_rows) + " rows)");
        }
        if (i > 0 && ids[i] <= ids[i - 1]) {
            throw std::invalid_argument(std::string(what) + " must hold distinct token ids in ascending order (at index " +
                                        std::to_string(i) + ")");
        }
    }
}

std::vector<double> similarity_rows(const embed_view & e, const std::vector<int32_t> & queries,
                                    const std::vector<int32_t> & domain, embed_metric metric, int n_threads) {
    check_metric(metric);
    for (size_t i = 0; i < queries.size(); ++i) {
        if (queries[i] < 0 || queries[i] >= e.n_rows) {
            throw std::invalid_argument("queries[" + std::to_string(i) + "] = " + std::to_string(queries[i]) +
                                        " is outside the embedding matrix (" + std::to_string(e.n_rows) + " rows)");
        }
    }
    check_token_set(domain, e.n_rows, "domain");
    std::vector<double> norms;
    if (metric == EMBED_COSINE) norms = row_norms(e, n_threads);
    const size_t nd = domain.size();
    const int64_t dim = e.n_cols;
    std::vector<double> out(queries.size() * nd);
    // Same arithmetic as exact_similarity(), with the query row converted to double once.
    parallel_for((int64_t) queries.size(), embed_threads(n_threads), [&](int64_t q) {
        double * row = out.data() + (size_t) q * nd;
        const int32_t qt = queries[(size_t) q];
        std::vector<double> qd(e.row(qt), e.row(qt) + dim);
        if (metric == EMBED_COSINE) {
            const double nq = norms[(size_t) qt];
            for (size_t j = 0; j < nd; ++j) {
                const double nj = norms[(size_t) domain[j]];
                if (nq == 0 || nj == 0) {
                    row[j] = 0.0;
                    continue;
                }
                const float * r = e.row(domain[j]);
                double acc = 0;
                for (int64_t i = 0; i < dim; ++i) acc += qd[(size_t) i] * (double) r[i];
                row[j] = acc / (nq * nj);
            }
        } else {
            for (size_t j = 0; j < nd; ++j) {
                const float * r = e.row(domain[j]);
                double acc = 0;
                for (int64_t i = 0; i < dim; ++i) {
                    const double d = qd[(size_t) i] - (double) r[i];
                    acc += d * d;
                }
                row[j] = -std::sqrt(acc);
            }
        }
    });
    return out;
}

neighbour_lists nearest_neighbours(const embed_view & e, const std::vector<int32_t> & queries,
                                   const std::vector<int32_t> & domain, int32_t m, embed_metric metric,
                                   int n_threads, const progress_fn & progress) {
    check_metric(metric);
    if (m < 1) throw std::invalid_argument("the neighbour count must be at least 1");
    check_token_set(domain, e.n_rows, "domain");
    for (size_t i = 0; i < queries.size(); ++i) {
        if (queries[i] < 0 || queries[i] >= e.n_rows) {
            throw std::invalid_argument("queries[" + std::to_string(i) + "] is outside the embedding matrix");
        }
    }
    const int nt = embed_threads(n_threads);
    const std::vector<double> norms = row_norms(e, nt);
    candidate_search cs(e, norms, metric, nt);
    cs.set_keys(domain);
    neighbour_lists out;
    out.m = m;
    // Queries in blocks, so the score matrix stays bounded (~64 MiB).
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(1024, (int64_t) ((16u << 20) / std::max<size_t>(domain.size(), 1))));
    neighbour_lists part;
    for (size_t q0 = 0; q0 < queries.size(); q0 += (size_t) block) {
        const size_t nq = std::min(queries.size() - q0, (size_t) block);
        std::vector<int32_t> qs(queries.begin() + (ptrdiff_t) q0, queries.begin() + (ptrdiff_t) (q0 + nq));
        cs.search(qs, m, [](int32_t) { return false; }, part);
        out.count.insert(out.count.end(), part.count.begin(), part.count.end());
        out.tokens.insert(out.tokens.end(), part.tokens.begin(), part.tokens.end());
        out.similarity.insert(out.similarity.end(), part.similarity.begin(), part.similarity.end());
        if (progress) progress({(double) (q0 + nq), (double) queries.size()});
    }
    return out;
}

cluster_partition build_clusters(const embed_view & e, const std::vector<int32_t> & domain, int32_t k,
                                 embed_metric metric, int n_threads, const progress_fn & progress) {
    check_metric(metric);
    if (k < 1) throw std::invalid_argument("the cluster size K must be at least 1");
    check_token_set(domain, e.n_rows, "domain");
    const int nt = embed_threads(n_threads);
    const int64_t n = (int64_t) domain.size();
    const std::vector<double> norms = row_norms(e, nt);

    std::vector<uint8_t> assigned((size_t) e.n_rows, 1);  // tokens outside the domain count as taken
    for (int32_t t : domain) assigned[(size_t) t] = 0;
    auto is_taken = [&](int32_t tok) { return assigned[(size_t) tok] != 0; };

    cluster_partition out;
    out.offsets.push_back(0);
    candidate_search cs(e, norms, metric, nt);
    if (k > 1 && n > 1) cs.set_keys(domain);
    // List length: the K - 1 neighbours plus room for the ones that earlier clusters of the same
    // batch take first.
    const int32_t m = std::max<int32_t>(2 * k + 8, 32);
    int64_t remaining = n;
    size_t next_seed = 0;  // index into domain: every token before it is assigned
    neighbour_lists lists;
    std::vector<int32_t> batch;
    std::vector<int32_t> cluster;

    auto close_cluster = [&]() {
        for (int32_t t : cluster) assigned[(size_t) t] = 1;
        out.members.insert(out.members.end(), cluster.begin(), cluster.end());
        out.offsets.push_back((int32_t) out.members.size());
        remaining -= (int64_t) cluster.size();
    };

    while (remaining > 0) {
        while (assigned[(size_t) domain[next_seed]]) ++next_seed;
        if (k == 1 || remaining == 1) {
            cluster.assign(1, domain[next_seed]);
            close_cluster();
            continue;
        }
        // Repack the keys once a third of them are taken: later products shrink with the vocabulary.
        if (cs.n_keys() > 256 && remaining * 3 < cs.n_keys() * 2) {
            std::vector<int32_t> keys;
            keys.reserve((size_t) remaining);
            for (size_t i = next_seed; i < domain.size(); ++i) {
                if (!assigned[(size_t) domain[i]]) keys.push_back(domain[i]);
            }
            cs.set_keys(keys);
            out.compactions++;
        }
        // The next seeds are the smallest unassigned tokens; a batch searches for several at once.
        // About an eighth of the remaining tokens end up in the batch's clusters: few seeds are taken
        // by an earlier cluster of the same batch, so few searched rows are wasted.
        const int64_t n_batch = std::max<int64_t>(1, std::min<int64_t>(256, remaining / (8 * (int64_t) k)));
        batch.clear();
        for (size_t i = next_seed; i < domain.size() && (int64_t) batch.size() < n_batch; ++i) {
            if (!assigned[(size_t) domain[i]]) batch.push_back(domain[i]);
        }
        cs.search(batch, m, is_taken, lists);
        out.batches++;
        out.rows_searched += (int64_t) batch.size();
        for (size_t q = 0; q < batch.size(); ++q) {
            const int32_t seed = batch[q];
            if (assigned[(size_t) seed]) {
                out.rows_wasted++;
                continue;
            }
            const int64_t need = std::min<int64_t>(k, remaining) - 1;
            cluster.assign(1, seed);
            const int32_t cnt = lists.count[q];
            for (int32_t i = 0; i < cnt && (int64_t) cluster.size() <= need; ++i) {
                const int32_t tok = lists.tokens[q * (size_t) m + (size_t) i];
                if (!assigned[(size_t) tok]) cluster.push_back(tok);
            }
            if ((int64_t) cluster.size() <= need) {
                // Earlier clusters of this batch took too many of this seed's candidates; the
                // first seed of a fresh search always completes (its list is current).
                if (q == 0) throw std::logic_error("neighbour list of a fresh search is short");
                out.rows_wasted += (int64_t) (batch.size() - q);
                break;
            }
            close_cluster();
        }
        if (progress) progress({(double) (n - remaining), (double) n});
    }

    // Exact similarities between the members of each cluster.
    const int64_t n_clusters = (int64_t) out.offsets.size() - 1;
    out.sim_offsets.resize((size_t) n_clusters + 1);
    out.sim_offsets[0] = 0;
    for (int64_t c = 0; c < n_clusters; ++c) {
        const uint64_t sz = (uint64_t) (out.offsets[(size_t) c + 1] - out.offsets[(size_t) c]);
        out.sim_offsets[(size_t) c + 1] = out.sim_offsets[(size_t) c] + sz * sz;
    }
    out.similarities.resize((size_t) out.sim_offsets.back());
    parallel_for(n_clusters, nt, [&](int64_t c) {
        const int32_t * mem = out.members.data() + out.offsets[(size_t) c];
        const int64_t sz = out.offsets[(size_t) c + 1] - out.offsets[(size_t) c];
        double * s = out.similarities.data() + out.sim_offsets[(size_t) c];
        for (int64_t i = 0; i < sz; ++i) {
            for (int64_t j = i; j < sz; ++j) {
                const double v = exact_similarity(e, norms.data(), mem[i], mem[j], metric);
                s[i * sz + j] = v;
                s[j * sz + i] = v;
            }
        }
    });
    if (progress) progress({(double) n, (double) n});
    return out;
}

} // namespace ppc
