// Every random number ppc-gpt draws comes from here. Unseeded draws for privacy come from the
// operating system's CSPRNG; seeded streams are for reproducibility (tests, audits, training runs),
// and whoever knows a seed can recompute them. The seeded generators differ by purpose, and each
// stream is frozen: a changed generator would change every perturbation, adapter initialisation,
// data order and synthetic model made from a seed, so a new need gets a stream derived with
// deriveSeed, never a change to one below.
//   - secureUniform / seededUniform (xoshiro128**): the samplers of the privacy mechanisms.
//   - Random (sfc32) with deriveSeed (SplitMix64 over (seed, purpose, index)): training,
//     federated rounds, experiments; a resumed run recomputes what an uninterrupted one drew.
//   - mulberry32: evaluation's seeded item sample, and synthetic models' weights.
import crypto from "node:crypto";

const TWO_POW_26 = 67108864;
const TWO_POW_53 = 9007199254740992;
const MASK64 = (1n << 64n) - 1n;

/** A source of uniform doubles in [0, 1) with 53 random bits each. */
export interface UniformSource {
    nextDouble(): number;
    /** "secure" (CSPRNG) or "seeded:<seed>". */
    readonly description: string;
}

/** A double in [0, 1) from the top 27 bits of `a` and the top 26 bits of `b` (two 32-bit draws). */
function double53(a: number, b: number): number {
    return ((a >>> 5) * TWO_POW_26 + (b >>> 6)) / TWO_POW_53;
}

/** 53-bit doubles from the OS CSPRNG (crypto.randomFillSync), buffered. */
export function secureUniform(): UniformSource {
    const pool = new Uint32Array(2048);
    let at = pool.length;
    return {
        description: "secure",
        nextDouble() {
            if (at >= pool.length) {
                crypto.randomFillSync(pool);
                at = 0;
            }
            const hi = pool[at++], lo = pool[at++];
            return double53(hi, lo);
        },
    };
}

/** Parses a seed: a non-negative safe integer, given as a number or a decimal string. */
export function parseSeed(seed: number | string): number {
    const n = typeof seed === "number" ? seed : /^\d+$/.test(seed.trim()) ? Number(seed.trim()) : NaN;
    if (!Number.isSafeInteger(n) || n < 0)
        throw new RangeError(`seed must be a non-negative integer below 2^53 (got ${JSON.stringify(seed)})`);
    return n;
}

/** xoshiro128** (Blackman & Vigna) seeded through splitmix32 from both 32-bit halves of the seed. */
export function seededUniform(seed: number | string): UniformSource {
    const n = parseSeed(seed);
    let sm = (n % 0x100000000) >>> 0;
    let hi = Math.floor(n / 0x100000000) >>> 0;
    const splitmix32 = () => {
        sm = (sm + 0x9e3779b9 + hi) | 0;
        hi = Math.imul(hi ^ (hi >>> 16), 0x85ebca6b) >>> 0;
        let z = sm;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
        return (z ^ (z >>> 16)) >>> 0;
    };
    let s0 = splitmix32(), s1 = splitmix32(), s2 = splitmix32(), s3 = splitmix32();
    if ((s0 | s1 | s2 | s3) === 0)
        s0 = 1;
    const next32 = () => {
        const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
        const t = s1 << 9;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = rotl(s3, 11);
        return r;
    };
    return {
        description: `seeded:${n}`,
        nextDouble() {
            const a = next32(), b = next32();
            return double53(a, b);
        },
    };
}

function rotl(x: number, k: number): number {
    return (x << k) | (x >>> (32 - k));
}

/** SplitMix64's output function of one 64-bit state (the state advanced by its increment, mixed). */
export function splitmix64(x: bigint): bigint {
    let z = (x + 0x9e3779b97f4a7c15n) & MASK64;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
}

/** A 53-bit integer derived from a seed and a path of labels/indices (a fresh, independent stream). */
export function deriveSeed(seed: number, ...path: (string | number)[]): number {
    let h = splitmix64(BigInt(seed));
    for (const part of path) {
        if (typeof part === "number") {
            h = splitmix64(h ^ BigInt(part));
        } else {
            for (const byte of Buffer.from(part, "utf8"))
                h = splitmix64(h ^ BigInt(byte));
        }
    }
    return Number(h >> 11n);
}

/** sfc32 generator: fast, 32-bit, seeded from a 53-bit integer. */
export class Random implements UniformSource {
    private a: number;
    private b: number;
    private c: number;
    private d: number;
    readonly description: string;

    constructor(seed: number) {
        if (!Number.isSafeInteger(seed) || seed < 0)
            throw new RangeError(`seed must be a non-negative integer below 2^53 (got ${seed})`);
        this.description = `seeded:${seed}`;
        const s0 = splitmix64(BigInt(seed)), s1 = splitmix64(s0);
        this.a = Number(s0 & 0xffffffffn) | 0;
        this.b = Number(s0 >> 32n) | 0;
        this.c = Number(s1 & 0xffffffffn) | 0;
        this.d = 1;
        for (let i = 0; i < 12; i++)
            this.nextUint32();
    }

    nextUint32(): number {
        const t = (((this.a + this.b) | 0) + this.d) | 0;
        this.d = (this.d + 1) | 0;
        this.a = this.b ^ (this.b >>> 9);
        this.b = (this.c + (this.c << 3)) | 0;
        this.c = (this.c << 21) | (this.c >>> 11);
        this.c = (this.c + t) | 0;
        return t >>> 0;
    }

    /** Uniform in [0, 1) with 53 random bits. */
    nextDouble(): number {
        const hi = this.nextUint32(), lo = this.nextUint32();
        return double53(hi, lo);
    }

    /** Uniform integer in [0, n). */
    nextInt(n: number): number {
        return Math.floor(this.nextDouble() * n);
    }

    /** Fisher-Yates shuffle in place. */
    shuffle<T>(a: T[]): T[] {
        for (let i = a.length - 1; i > 0; i--) {
            const j = this.nextInt(i + 1);
            [a[i], a[j]] = [a[j], a[i]];
        }
        return a;
    }
}

/** Mulberry32: a small 32-bit generator of doubles in [0, 1) with 32 random bits each. */
export function mulberry32(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6D2B79F5) | 0;
        let t = Math.imul(a ^ (a >>> 15), 1 | a);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
