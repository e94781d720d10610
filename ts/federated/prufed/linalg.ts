// Small dense linear algebra for FlexLoRA's re-factorisation, in double precision: the truncated SVD
// of a low-rank product U·V (U: m×R, V: R×n, R small) without forming the m×n matrix.
//   1. thin QR of U (modified Gram-Schmidt, applied twice: "twice is enough" for orthogonality),
//      U = Qu·Ru; and of Vᵀ, Vᵀ = Qv·Rv, so U·V = Qu·(Ru·Rvᵀ)·Qvᵀ;
//   2. SVD of the small R×R core M = Ru·Rvᵀ by one-sided Jacobi (Hestenes): rotate column pairs
//      of M until all are orthogonal; the column norms are the singular values;
//   3. left singular vectors Qu·Um, right ones Qv·Vm.
// Cost O((m + n)·R² + R³ per sweep), for R = the sum of the clients' ranks.

/** A dense row-major matrix. */
export interface Matrix {
    rows: number;
    cols: number;
    data: Float64Array;
}

export function matrix(rows: number, cols: number, data?: Float64Array): Matrix {
    return {rows, cols, data: data ?? new Float64Array(rows * cols)};
}

export function transpose(a: Matrix): Matrix {
    const t = matrix(a.cols, a.rows);
    for (let i = 0; i < a.rows; i++)
        for (let j = 0; j < a.cols; j++)
            t.data[j * a.rows + i] = a.data[i * a.cols + j];
    return t;
}

export function multiply(a: Matrix, b: Matrix): Matrix {
    if (a.cols !== b.rows)
        throw new Error(`matrix product: ${a.rows}×${a.cols} by ${b.rows}×${b.cols}`);
    const c = matrix(a.rows, b.cols);
    for (let i = 0; i < a.rows; i++)
        for (let k = 0; k < a.cols; k++) {
            const x = a.data[i * a.cols + k];
            if (x === 0)
                continue;
            for (let j = 0; j < b.cols; j++)
                c.data[i * b.cols + j] += x * b.data[k * b.cols + j];
        }
    return c;
}

/**
 * Thin QR of a (m×k, m ≥ k not required): Q has orthonormal columns (m×q), R is q×k, A = Q·R.
 * Columns that are (numerically) in the span of earlier ones add no column to Q.
 */
export function thinQr(a: Matrix): {q: Matrix; r: Matrix} {
    const m = a.rows, k = a.cols;
    const cols: Float64Array[] = [];
    const rRows: Float64Array[] = [];
    let scale = 0;
    for (let j = 0; j < k; j++) {
        let s = 0;
        for (let i = 0; i < m; i++)
            s += a.data[i * k + j] ** 2;
        scale = Math.max(scale, Math.sqrt(s));
    }
    const tol = scale * 1e-13;
    for (let j = 0; j < k; j++) {
        const v = new Float64Array(m);
        for (let i = 0; i < m; i++)
            v[i] = a.data[i * k + j];
        const coef = new Float64Array(cols.length);
        for (let pass = 0; pass < 2; pass++) {
            for (let c = 0; c < cols.length; c++) {
                const q = cols[c];
                let d = 0;
                for (let i = 0; i < m; i++)
                    d += q[i] * v[i];
                coef[c] += d;
                for (let i = 0; i < m; i++)
                    v[i] -= d * q[i];
            }
        }
        let norm = 0;
        for (let i = 0; i < m; i++)
            norm += v[i] * v[i];
        norm = Math.sqrt(norm);
        for (let c = 0; c < cols.length; c++)
            rRows[c][j] = coef[c];
        if (norm > tol && cols.length < m) {
            for (let i = 0; i < m; i++)
                v[i] /= norm;
            cols.push(v);
            const row = new Float64Array(k);
            row[j] = norm;
            rRows.push(row);
        }
    }
    const q = matrix(m, cols.length);
    cols.forEach((col, c) => col.forEach((x, i) => (q.data[i * cols.length + c] = x)));
    const r = matrix(cols.length, k);
    rRows.forEach((row, c) => r.data.set(row, c * k));
    return {q, r};
}

/** SVD of a small matrix by one-sided Jacobi: A = U·diag(s)·Vᵀ, s descending, U m×p, V n×p, p = min(m, n). */
export function jacobiSvd(a: Matrix): {u: Matrix; s: Float64Array; v: Matrix} {
    // Work on the taller orientation so that columns are orthogonalised.
    if (a.rows < a.cols) {
        const t = jacobiSvd(transpose(a));
        return {u: t.v, s: t.s, v: t.u};
    }
    const m = a.rows, n = a.cols;
    const w = Float64Array.from(a.data);
    const v = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
        v[i * n + i] = 1;
    for (let sweep = 0; sweep < 60; sweep++) {
        let rotated = false;
        for (let p = 0; p < n - 1; p++)
            for (let q = p + 1; q < n; q++) {
                let alpha = 0, beta = 0, gamma = 0;
                for (let i = 0; i < m; i++) {
                    const x = w[i * n + p], y = w[i * n + q];
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta))
                    continue;
                rotated = true;
                const zeta = (beta - alpha) / (2 * gamma);
                const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
                const c = 1 / Math.sqrt(1 + t * t), s = c * t;
                for (let i = 0; i < m; i++) {
                    const x = w[i * n + p], y = w[i * n + q];
                    w[i * n + p] = c * x - s * y;
                    w[i * n + q] = s * x + c * y;
                }
                for (let i = 0; i < n; i++) {
                    const x = v[i * n + p], y = v[i * n + q];
                    v[i * n + p] = c * x - s * y;
                    v[i * n + q] = s * x + c * y;
                }
            }
        if (!rotated)
            break;
    }
    const norms = Array.from({length: n}, (_, j) => {
        let s = 0;
        for (let i = 0; i < m; i++)
            s += w[i * n + j] ** 2;
        return Math.sqrt(s);
    });
    const order = norms.map((_, j) => j).sort((x, y) => norms[y] - norms[x]);
    const u = matrix(m, n), vs = matrix(n, n), s = new Float64Array(n);
    order.forEach((j, k) => {
        s[k] = norms[j];
        for (let i = 0; i < m; i++)
            u.data[i * n + k] = norms[j] > 0 ? w[i * n + j] / norms[j] : 0;
        for (let i = 0; i < n; i++)
            vs.data[i * n + k] = v[i * n + j];
    });
    return {u, s, v: vs};
}

/**
 * The leading `rank` singular triplets of U·V (U m×R, V R×n): left vectors m×rank, right vectors
 * n×rank, values descending. Fewer than `rank` columns come back when U·V has lower rank.
 */
export function productSvd(u: Matrix, v: Matrix, rank: number): {u: Matrix; s: Float64Array; v: Matrix} {
    if (u.cols !== v.rows)
        throw new Error(`productSvd: ${u.rows}×${u.cols} by ${v.rows}×${v.cols}`);
    const qu = thinQr(u), qv = thinQr(transpose(v));
    if (qu.q.cols === 0 || qv.q.cols === 0)
        return {u: matrix(u.rows, 0), s: new Float64Array(0), v: matrix(v.cols, 0)};
    const core = multiply(qu.r, transpose(qv.r));
    const small = jacobiSvd(core);
    const smax = small.s[0] ?? 0;
    let k = 0;
    while (k < Math.min(rank, small.s.length) && small.s[k] > smax * 1e-12)
        k++;
    const take = (x: Matrix): Matrix => {
        const out = matrix(x.rows, k);
        for (let i = 0; i < x.rows; i++)
            for (let j = 0; j < k; j++)
                out.data[i * k + j] = x.data[i * x.cols + j];
        return out;
    };
    return {u: multiply(qu.q, take(small.u)), s: small.s.slice(0, k), v: multiply(qv.q, take(small.v))};
}
