// Uniform random numbers for the samplers. Unseeded runs draw from the operating system's CSPRNG
// (what a privacy mechanism needs); a seed gives a reproducible xoshiro128** stream, for tests
// and audits only: whoever knows the seed can recompute the noise.
import crypto from "node:crypto";

/** A source of uniform doubles in [0, 1) with 53 random bits each. */
export interface UniformSource {
    nextDouble(): number;
    /** "secure" (CSPRNG) or "seeded:<seed>". */
    readonly description: string;
}

const TWO_POW_26 = 67108864;
const TWO_POW_53 = 9007199254740992;

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
            const hi = pool[at++] >>> 5, lo = pool[at++] >>> 6;
            return (hi * TWO_POW_26 + lo) / TWO_POW_53;
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
            const a = next32() >>> 5, b = next32() >>> 6;
            return (a * TWO_POW_26 + b) / TWO_POW_53;
        },
    };
}

function rotl(x: number, k: number): number {
    return (x << k) | (x >>> (32 - k));
}
