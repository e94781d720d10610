// Seeded randomness of training: adapter initialisation, data order, held-out split and the
// per-step dropout seeds. Every stream is derived from (seed, purpose, index) by SplitMix64, so a
// resumed run recomputes exactly what an uninterrupted run would have drawn.

const MASK64 = (1n << 64n) - 1n;

/** SplitMix64's output function of one 64-bit state. */
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
export class Random {
    private a: number;
    private b: number;
    private c: number;
    private d: number;

    constructor(seed: number) {
        if (!Number.isSafeInteger(seed) || seed < 0)
            throw new RangeError(`seed must be a non-negative integer below 2^53 (got ${seed})`);
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
        const hi = this.nextUint32() >>> 5, lo = this.nextUint32() >>> 6;
        return (hi * 67108864 + lo) / 9007199254740992;
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
