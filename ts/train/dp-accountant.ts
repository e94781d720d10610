// RDP accountant for DP-SGD: the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang
// 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"), as TF-Privacy's and
// Opacus' compute_rdp compute it: for each order α the RDP of one step is log(A_α)/(α-1) with
//   A_α = E_{z~N(0,σ²)} [((1-q) + q·exp((2z-1)/(2σ²)))^α],
// a finite binomial sum for integer α and two convergent series (with erfc) for fractional α.
// RDP composes additively over steps. Conversion to (ε, δ): Balle et al. 2020 ("Hypothesis
// testing interpretations and Rényi differential privacy", Theorem 21), the bound Opacus uses:
//   ε = rdp(α) + log((α-1)/α) - (log δ + log α)/(α-1),  minimised over α;
// the classic conversion ε = rdp(α) - log δ/(α-1) (Mironov 2017, Proposition 3) is available too.
// docs/train.md shows both and the published numbers they reproduce.

/** The orders Opacus evaluates by default: 1.1 … 10.9 in steps of 0.1, then 12 … 63. */
export const defaultRdpOrders: readonly number[] = [
    ...Array.from({length: 99}, (_, i) => 1 + (i + 1) / 10),
    ...Array.from({length: 52}, (_, i) => 12 + i),
];

export type RdpConversion = "improved" | "classic";

function logAdd(a: number, b: number): number {
    if (a === -Infinity)
        return b;
    if (b === -Infinity)
        return a;
    const m = Math.max(a, b);
    return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

/** log(exp(a) - exp(b)) for a >= b. */
function logSub(a: number, b: number): number {
    if (b === -Infinity)
        return a;
    if (a < b)
        throw new Error("logSub: the result would be negative");
    if (a === b)
        return -Infinity;
    return a + Math.log(-Math.expm1(b - a));
}

/** log(erfc(x)) with full relative precision, also far in the tail. */
export function logErfc(x: number): number {
    if (x < 0)
        return Math.log(2 - Math.exp(logErfc(-x)));
    if (x < 3) {
        // erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1·3···(2n+1)): positive terms only
        let term = x, sum = x;
        for (let n = 1; n < 500 && term > 1e-17 * sum; n++) {
            term *= 2 * x * x / (2 * n + 1);
            sum += term;
        }
        const erf = 2 / Math.sqrt(Math.PI) * Math.exp(-x * x) * sum;
        return Math.log1p(-erf);
    }
    // continued fraction erfc(x) = exp(-x^2)/sqrt(pi) · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))) (modified Lentz)
    const tiny = 1e-300;
    let f = x, c = x, d = 0;
    for (let n = 1; n < 500; n++) {
        const a = n / 2;
        d = x + a * d;
        d = d === 0 ? tiny : d;
        c = x + a / c;
        c = c === 0 ? tiny : c;
        d = 1 / d;
        const delta = c * d;
        f *= delta;
        if (Math.abs(delta - 1) < 1e-16)
            break;
    }
    return -x * x - 0.5 * Math.log(Math.PI) - Math.log(f);
}

/** log Γ-free binomial: log|C(α, i)| and its sign, for real α, built up term by term. */
function logAInteger(q: number, sigma: number, alpha: number): number {
    let logA = -Infinity;
    let logCoef = 0;
    for (let i = 0; i <= alpha; i++) {
        if (i > 0)
            logCoef += Math.log(alpha - i + 1) - Math.log(i);
        const s = logCoef + i * Math.log(q) + (alpha - i) * Math.log1p(-q) + (i * i - i) / (2 * sigma * sigma);
        logA = logAdd(logA, s);
    }
    return logA;
}

function logAFractional(q: number, sigma: number, alpha: number): number {
    let logA0 = -Infinity, logA1 = -Infinity;
    const z0 = sigma * sigma * Math.log(1 / q - 1) + 0.5;
    let logCoef = 0, sign = 1;
    for (let i = 0; ; i++) {
        if (i > 0) {
            const factor = (alpha - i + 1) / i;
            if (factor < 0)
                sign = -sign;
            logCoef += Math.log(Math.abs(factor));
        }
        const j = alpha - i;
        const logT0 = logCoef + i * Math.log(q) + j * Math.log1p(-q);
        const logT1 = logCoef + j * Math.log(q) + i * Math.log1p(-q);
        const logE0 = Math.log(0.5) + logErfc((i - z0) / (Math.SQRT2 * sigma));
        const logE1 = Math.log(0.5) + logErfc((z0 - j) / (Math.SQRT2 * sigma));
        const logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0;
        const logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1;
        if (sign > 0) {
            logA0 = logAdd(logA0, logS0);
            logA1 = logAdd(logA1, logS1);
        } else {
            logA0 = logSub(logA0, logS0);
            logA1 = logSub(logA1, logS1);
        }
        if (Math.max(logS0, logS1) < -30 || i > 10000)
            break;
    }
    return logAdd(logA0, logA1);
}

/** RDP of ONE step of the Poisson-subsampled Gaussian mechanism (sampling rate q, noise multiplier σ) at order α > 1. */
export function subsampledGaussianRdp(q: number, sigma: number, alpha: number): number {
    if (!(q >= 0 && q <= 1))
        throw new RangeError(`the sampling rate q must be in [0, 1] (got ${q})`);
    if (!(sigma >= 0))
        throw new RangeError(`the noise multiplier must be >= 0 (got ${sigma})`);
    if (!(alpha > 1))
        throw new RangeError(`RDP orders must be > 1 (got ${alpha})`);
    if (q === 0)
        return 0;
    if (sigma === 0)
        return Infinity;
    if (q === 1)
        return alpha / (2 * sigma * sigma);
    if (alpha === Infinity)
        return Infinity;
    const logA = Number.isInteger(alpha) ? logAInteger(q, sigma, alpha) : logAFractional(q, sigma, alpha);
    return logA / (alpha - 1);
}

/** RDP after `steps` steps at each order. */
export function computeRdp(q: number, sigma: number, steps: number, orders: readonly number[] = defaultRdpOrders): number[] {
    if (!Number.isInteger(steps) || steps < 0)
        throw new RangeError(`steps must be a non-negative integer (got ${steps})`);
    return orders.map((a) => subsampledGaussianRdp(q, sigma, a) * steps);
}

/** The (ε, δ) guarantee implied by RDP values at the given orders; `order` is the one that attains it. */
export function rdpToEpsilon(orders: readonly number[], rdp: readonly number[], delta: number, conversion: RdpConversion = "improved"):
    {epsilon: number; order: number} {
    if (!(delta > 0 && delta < 1))
        throw new RangeError(`delta must be in (0, 1) (got ${delta})`);
    if (orders.length !== rdp.length || orders.length === 0)
        throw new RangeError("orders and rdp must be non-empty and of the same length");
    let best = {epsilon: Infinity, order: NaN};
    orders.forEach((a, i) => {
        const eps = conversion === "classic"
            ? rdp[i] - Math.log(delta) / (a - 1)
            : rdp[i] + Math.log1p(-1 / a) - (Math.log(delta) + Math.log(a)) / (a - 1);
        if (eps < best.epsilon)
            best = {epsilon: Math.max(0, eps), order: a};
    });
    return best;
}

export interface DpSgdAccounting {
    /** Noise multiplier σ (noise std = σ · C). */
    noiseMultiplier: number;
    /** Poisson sampling rate q (expected batch / dataset size). */
    sampleRate: number;
    steps: number;
    delta: number;
    conversion?: RdpConversion;
    orders?: readonly number[];
}

/** ε spent by DP-SGD after `steps` steps. */
export function dpSgdEpsilon(a: DpSgdAccounting): {epsilon: number; order: number} {
    const orders = a.orders ?? defaultRdpOrders;
    return rdpToEpsilon(orders, computeRdp(a.sampleRate, a.noiseMultiplier, a.steps, orders), a.delta, a.conversion);
}

/**
 * The smallest noise multiplier (to `tolerance`) whose ε after `steps` steps is at most
 * `targetEpsilon`, by bisection (ε decreases as σ grows).
 */
export function noiseMultiplierFor(targetEpsilon: number, a: Omit<DpSgdAccounting, "noiseMultiplier">, tolerance = 1e-3): number {
    if (!(targetEpsilon > 0 && Number.isFinite(targetEpsilon)))
        throw new RangeError(`the target epsilon must be a positive number (got ${targetEpsilon})`);
    const eps = (sigma: number) => dpSgdEpsilon({...a, noiseMultiplier: sigma}).epsilon;
    let hi = 1;
    while (eps(hi) > targetEpsilon) {
        hi *= 2;
        if (hi > 1e6)
            throw new RangeError(`no noise multiplier up to 1e6 reaches epsilon ${targetEpsilon} in ${a.steps} steps`);
    }
    let lo = 0;
    while (hi - lo > tolerance) {
        const mid = (lo + hi) / 2;
        if (eps(mid) > targetEpsilon)
            lo = mid;
        else
            hi = mid;
    }
    return hi;
}
