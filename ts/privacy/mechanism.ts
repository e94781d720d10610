// The Exponential Mechanism over tokens (McSherry & Talwar): input token x is replaced by output y
// with probability P(y|x) = exp(ε·u(x,y) / (2·Δu)) / Σ_y' exp(ε·u(x,y') / (2·Δu)).
// Probabilities are computed in double precision with the maximum subtracted before exp; a
// distribution with an output whose probability underflows is refused rather than silently
// truncated, so every table this module exposes is the mechanism's exact distribution (up to
// double rounding) and every listed output has a positive probability.
import type {UniformSource} from "../random.js";

/** What a mechanism promises, stated precisely (see docs/perturb.md). */
export type PrivacyGuarantee =
    | {
        /** For every pair of inputs x, x′ whose utilities differ by at most Δu on every output: P(y|x) ≤ e^ε·P(y|x′). */
        kind: "epsilon-dp";
        epsilon: number;
        sensitivity: number;
        statement: string;
    }
    | {
        /** ε-DP between any two tokens of one cluster (they share one output set); none across clusters. */
        kind: "cluster-epsilon-dp";
        epsilon: number;
        clusterSize: number;
        statement: string;
    }
    | {
        /** Metric DP: P(y|x) ≤ exp(ε·d(x,x′))·P(y|x′) for every x, x′, y; d = Euclidean distance of embeddings. */
        kind: "metric-dp";
        epsilon: number;
        metric: "euclidean";
        statement: string;
    };

/** Candidate outputs of one input and their utilities. */
export interface TokenUtilities {
    outputs: Int32Array;
    utilities: Float64Array;
}

/** The exact output distribution of one input token. */
export interface TokenDistribution {
    input: number;
    outputs: Int32Array;
    probabilities: Float64Array;
}

export interface ExponentialMechanismOptions {
    name?: string;
    /** Privacy parameter ε > 0. */
    epsilon: number;
    /** Sensitivity Δu > 0 of the utility over the pairs of inputs the guarantee covers. */
    sensitivity: number;
    /** Input tokens the mechanism accepts, and the only tokens it may output. */
    domain: ArrayLike<number>;
    /** Outputs and utilities of one input (outputs: distinct members of the domain). */
    utility?: (input: number) => TokenUtilities;
    /** Batched form, preferred when given (e.g. a native similarity computation). */
    utilities?: (inputs: Int32Array) => Promise<TokenUtilities[]>;
    /** Defaults to the generic ε-DP statement for utilities of sensitivity Δu. */
    guarantee?: PrivacyGuarantee;
    /** Upper bound on cached output entries (inputs × outputs) kept for sampling. Default 2^24. */
    cacheEntries?: number;
    /** Most outputs any input has (default: the domain size); sizes the sampling batches. */
    maxOutputs?: number;
}

/** A token-level DP mechanism: exact distributions, and a sampler that follows them. */
export interface TokenMechanism {
    readonly name: string;
    readonly epsilon: number;
    readonly sensitivity: number;
    readonly guarantee: PrivacyGuarantee;
    /** Accepted inputs (= possible outputs), ascending token ids. */
    readonly domain: Int32Array;
    has(token: number): boolean;
    /** The exact distribution of one input token. */
    distribution(input: number): Promise<TokenDistribution>;
    /** Distributions of many inputs, in order. */
    distributions(inputs: ArrayLike<number>): Promise<TokenDistribution[]>;
    /** Replaces every token of `tokens` (all in the domain) by a sample; one uniform draw per token, in order. */
    perturbTokens(tokens: Int32Array, rng: UniformSource): Promise<Int32Array>;
}

/** Smallest positive normal double: probabilities below it are not represented exactly. */
const MIN_NORMAL = 2.2250738585072014e-308;

export function checkEpsilon(epsilon: number): void {
    if (typeof epsilon !== "number" || !Number.isFinite(epsilon) || epsilon <= 0)
        throw new RangeError(`epsilon must be a finite number > 0 (got ${epsilon})`);
}

/**
 * Exact EM distribution from utilities: p_y = exp(a_y − m) / Σ exp(a_y′ − m), a_y = ε·u_y/(2Δu),
 * m = max a. Throws when a probability would underflow to zero or a subnormal.
 */
export function exponentialDistribution(input: number, u: TokenUtilities, epsilon: number, sensitivity: number): TokenDistribution {
    const n = u.outputs.length;
    if (n === 0 || u.utilities.length !== n)
        throw new Error(`input ${input}: ${n === 0 ? "no candidate outputs" : `${n} outputs but ${u.utilities.length} utilities`}`);
    const scale = epsilon / (2 * sensitivity);
    const uts = u.utilities;
    let max = -Infinity;
    for (let i = 0; i < n; i++)
        if (uts[i] > max)
            max = uts[i];
    const shift = scale * max;
    const p = new Float64Array(n);
    let z = 0;
    for (let i = 0; i < n; i++) {
        const w = Math.exp(scale * uts[i] - shift);
        p[i] = w;
        z += w;
    }
    // A NaN or infinite utility makes z NaN.
    if (!(z >= 1 && z < Infinity))
        throw new Error(`input ${input}: utilities are not all finite (${Array.from(uts).find((x) => !Number.isFinite(x))})`);
    let smallest = Infinity;
    for (let i = 0; i < n; i++) {
        const q = p[i] / z;
        p[i] = q;
        if (q < smallest)
            smallest = q;
    }
    // NaN-safe: a NaN or -Infinity utility also fails here.
    if (!(smallest >= MIN_NORMAL)) {
        const i = p.findIndex((q) => !(q >= MIN_NORMAL));
        throw new RangeError(`epsilon ${epsilon} is too large for this utility: P(${u.outputs[i]} | ${input}) = ` +
            `exp(${(scale * uts[i] - shift).toPrecision(6)}) / Z underflows double precision; use a smaller epsilon`);
    }
    return {input, outputs: u.outputs, probabilities: p};
}

interface Prepared {
    outputs: Int32Array;
    probabilities: Float64Array;
    cdf: Float64Array;
}

function prepare(d: TokenDistribution): Prepared {
    const cdf = new Float64Array(d.probabilities.length);
    let acc = 0;
    for (let i = 0; i < cdf.length; i++) {
        acc += d.probabilities[i];
        cdf[i] = acc;
    }
    return {outputs: d.outputs, probabilities: d.probabilities, cdf};
}

/** Index i of the first cdf[i] > target (the last index if rounding leaves none). */
function searchCdf(cdf: Float64Array, target: number): number {
    const n = cdf.length;
    if (n <= 32) {
        for (let i = 0; i < n; i++)
            if (cdf[i] > target)
                return i;
        return n - 1;
    }
    let lo = 0, hi = n - 1;
    while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (cdf[mid] > target)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/** Draws one output: the uniform scaled by the CDF's total, so rounding in the sum cannot bias the last output. */
export function sampleIndex(cdf: Float64Array, rng: UniformSource): number {
    return searchCdf(cdf, rng.nextDouble() * cdf[cdf.length - 1]);
}

export function genericGuarantee(epsilon: number, sensitivity: number): PrivacyGuarantee {
    return {
        kind: "epsilon-dp", epsilon, sensitivity,
        statement: `Exponential Mechanism with ε = ${epsilon}, Δu = ${sensitivity}: for any two input tokens x, x′ with ` +
            `|u(x,y) − u(x′,y)| ≤ ${sensitivity} for every output y, P(y|x) ≤ e^${epsilon}·P(y|x′) (ε-DP per token).`,
    };
}

/** Validates and sorts a domain into distinct ascending token ids. */
export function normalizeDomain(domain: ArrayLike<number>): Int32Array {
    if (domain instanceof Int32Array && domain.length > 0 && domain[0] >= 0 && domain.every((t, i) => i === 0 || t > domain[i - 1]))
        return domain;
    for (let i = 0; i < domain.length; i++) {
        const v = domain[i];
        if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff)
            throw new Error(`domain[${i}] = ${v} is not a token id`);
    }
    const d = Int32Array.from(domain).sort();
    if (d.length === 0)
        throw new Error("the mechanism's domain is empty");
    for (let i = 1; i < d.length; i++)
        if (d[i] === d[i - 1])
            throw new Error(`token ${d[i]} appears twice in the domain`);
    return d;
}

/** Prepared distributions for sampling, at most `capacity` entries in all, evicted oldest first. */
class PreparedCache {
    private readonly byInput = new Map<number, Prepared>();
    private entries = 0;

    constructor(readonly capacity: number) {}

    get(input: number): Prepared | undefined {
        return this.byInput.get(input);
    }

    /** Oldest-first eviction: a Map iterates in insertion order. */
    set(input: number, p: Prepared): void {
        const n = p.outputs.length;
        while (this.entries + n > this.capacity && this.byInput.size > 0) {
            const [oldest, q] = this.byInput.entries().next().value as [number, Prepared];
            this.byInput.delete(oldest);
            this.entries -= q.outputs.length;
        }
        this.byInput.set(input, p);
        this.entries += n;
    }
}

/**
 * Positions of `tokens` grouped by token (a counting sort): the positions holding token t are
 * order[count[t]] .. order[count[t + 1] - 1]; `distinct` lists the tokens present, ascending.
 */
function groupByToken(tokens: ArrayLike<number>, tokenCount: number): {count: Int32Array; order: Int32Array; distinct: number[]} {
    const n = tokens.length;
    const count = new Int32Array(tokenCount + 1);
    for (let i = 0; i < n; i++)
        count[tokens[i] + 1]++;
    for (let t = 0; t < tokenCount; t++)
        count[t + 1] += count[t];
    const order = new Int32Array(n);
    const fill = count.slice(0, tokenCount);
    for (let i = 0; i < n; i++)
        order[fill[tokens[i]]++] = i;
    const distinct: number[] = [];
    for (let t = 0; t < tokenCount; t++)
        if (count[t + 1] > count[t])
            distinct.push(t);
    return {count, order, distinct};
}

/** Membership in a sorted token domain: `has(t)`, and `size`, one past the largest token. */
function domainMembership(domain: Int32Array): {has: (t: number) => boolean; size: number} {
    const inDomain = new Uint8Array(domain[domain.length - 1] + 1);
    for (const t of domain)
        inDomain[t] = 1;
    return {has: (t) => Number.isInteger(t) && t >= 0 && t < inDomain.length && inDomain[t] === 1, size: inDomain.length};
}

/** A check that a utility's outputs lie in the domain, each once (the domain itself passes without a scan). */
function outputsChecker(domain: Int32Array, has: (t: number) => boolean, size: number): (input: number, u: TokenUtilities) => void {
    const seen = new Int32Array(size).fill(-1);
    let stamp = 0;
    return (input, u) => {
        if (u.outputs === domain)
            return;
        stamp++;
        for (let i = 0; i < u.outputs.length; i++) {
            const y = u.outputs[i];
            if (!has(y))
                throw new Error(`input ${input}: output ${y} is outside the mechanism's domain`);
            if (seen[y] === stamp)
                throw new Error(`input ${input}: output ${y} is listed twice`);
            seen[y] = stamp;
        }
    };
}

/** The general Exponential Mechanism over tokens for a given utility and sensitivity. */
export function exponentialMechanism(o: ExponentialMechanismOptions): TokenMechanism {
    checkEpsilon(o.epsilon);
    if (typeof o.sensitivity !== "number" || !Number.isFinite(o.sensitivity) || o.sensitivity <= 0)
        throw new RangeError(`sensitivity must be a finite number > 0 (got ${o.sensitivity})`);
    if (!o.utility && !o.utilities)
        throw new Error("exponentialMechanism needs a utility or utilities function");
    const domain = normalizeDomain(o.domain);
    const {has, size: domainSize} = domainMembership(domain);
    const epsilon = o.epsilon, sensitivity = o.sensitivity;
    const capacity = o.cacheEntries ?? (1 << 24);
    const maxOutputs = Math.min(o.maxOutputs ?? domain.length, domain.length);
    const cache = new PreparedCache(capacity);
    const checkOutputs = outputsChecker(domain, has, domainSize);

    const compute = async (inputs: Int32Array): Promise<TokenDistribution[]> => {
        for (const x of inputs)
            if (!has(x))
                throw new Error(`token ${x} is not in the mechanism's domain`);
        const us = o.utilities ? await o.utilities(inputs) : Array.from(inputs, (x) => o.utility!(x));
        if (us.length !== inputs.length)
            throw new Error(`utilities() returned ${us.length} results for ${inputs.length} inputs`);
        return us.map((u, i) => {
            checkOutputs(inputs[i], u);
            return exponentialDistribution(inputs[i], u, epsilon, sensitivity);
        });
    };

    const mechanism: TokenMechanism = {
        name: o.name ?? "exponential",
        epsilon,
        sensitivity,
        guarantee: o.guarantee ?? genericGuarantee(epsilon, sensitivity),
        domain,
        has,
        async distribution(input) {
            return (await compute(Int32Array.of(input)))[0];
        },
        async distributions(inputs) {
            return compute(Int32Array.from(inputs));
        },
        async perturbTokens(tokens, rng) {
            // One uniform per token, drawn in sequence order; tokens are then grouped by input so
            // each distinct input's distribution is computed once per call, whatever the cache holds.
            const n = tokens.length;
            const draws = new Float64Array(n);
            for (let i = 0; i < n; i++) {
                if (!has(tokens[i]))
                    throw new Error(`token ${tokens[i]} at position ${i} is not in the mechanism's domain`);
                draws[i] = rng.nextDouble();
            }
            const {count, order, distinct} = groupByToken(tokens, domainSize);
            const out = new Int32Array(n);
            const sampleAll = (x: number, p: Prepared) => {
                const total = p.cdf[p.cdf.length - 1];
                for (let j = count[x]; j < count[x + 1]; j++) {
                    const i = order[j];
                    out[i] = p.outputs[searchCdf(p.cdf, draws[i] * total)];
                }
            };
            const missing: number[] = [];
            let entries = 0;
            const flush = async () => {
                if (missing.length === 0)
                    return;
                const ds = await compute(Int32Array.from(missing));
                for (const d of ds) {
                    const p = prepare(d);
                    sampleAll(d.input, p);
                    if (p.outputs.length <= capacity)
                        cache.set(d.input, p);
                }
                missing.length = 0;
                entries = 0;
            };
            for (const x of distinct) {
                const p = cache.get(x);
                if (p) {
                    sampleAll(x, p);
                    continue;
                }
                if (entries + maxOutputs > capacity)
                    await flush();
                missing.push(x);
                entries += maxOutputs;
            }
            await flush();
            return out;
        },
    };
    return mechanism;
}
