// Shamir secret sharing over the prime field GF(p), p = 2^521 - 1 (a Mersenne prime), so a 32-byte
// secret is one field element. A secret is the constant term of a random polynomial of degree t-1;
// share i is the polynomial at x = i (i = 1..n); any t shares give it back by Lagrange interpolation
// at 0, fewer reveal nothing. Used by secure aggregation to recover the mask seeds of dropped clients.
import {randomBytes} from "node:crypto";

export const shamirPrime = (1n << 521n) - 1n;

export interface Share {
    /** Evaluation point, 1..n. */
    x: number;
    y: bigint;
}

const mod = (a: bigint) => ((a % shamirPrime) + shamirPrime) % shamirPrime;

function randomFieldElement(): bigint {
    return mod(BigInt("0x" + randomBytes(66).toString("hex")));
}

function power(base: bigint, exp: bigint): bigint {
    let result = 1n;
    base = mod(base);
    while (exp > 0n) {
        if (exp & 1n)
            result = (result * base) % shamirPrime;
        base = (base * base) % shamirPrime;
        exp >>= 1n;
    }
    return result;
}

/** Inverse by Fermat's little theorem (p is prime). */
const inverse = (a: bigint) => power(a, shamirPrime - 2n);

export function bytesToField(bytes: Uint8Array): bigint {
    if (bytes.length > 64)
        throw new RangeError(`a Shamir secret holds at most 64 bytes (got ${bytes.length})`);
    return BigInt("0x" + (Buffer.from(bytes).toString("hex") || "0"));
}

export function fieldToBytes(x: bigint, length: number): Buffer {
    const hex = x.toString(16).padStart(length * 2, "0");
    if (hex.length > length * 2)
        throw new RangeError(`the reconstructed value does not fit ${length} bytes: too few or inconsistent shares`);
    return Buffer.from(hex, "hex");
}

/** n shares of `secret`, any `threshold` of which reconstruct it. */
export function splitSecret(secret: bigint, n: number, threshold: number): Share[] {
    if (!Number.isInteger(threshold) || threshold < 1 || threshold > n)
        throw new RangeError(`threshold must be in [1, ${n}] (got ${threshold})`);
    if (secret < 0n || secret >= shamirPrime)
        throw new RangeError("the secret must be a field element");
    const coef = [secret, ...Array.from({length: threshold - 1}, randomFieldElement)];
    return Array.from({length: n}, (_, i) => {
        const x = BigInt(i + 1);
        let y = 0n;
        for (let k = coef.length - 1; k >= 0; k--)
            y = (y * x + coef[k]) % shamirPrime;
        return {x: i + 1, y};
    });
}

/** The secret from at least `threshold` distinct shares (Lagrange at 0). */
export function combineShares(shares: Share[], threshold: number): bigint {
    const distinct = new Map(shares.map((s) => [s.x, s]));
    if (distinct.size < threshold)
        throw new Error(`${distinct.size} distinct share(s), fewer than the threshold ${threshold}`);
    const use = [...distinct.values()].slice(0, threshold);
    let secret = 0n;
    for (const si of use) {
        let num = 1n, den = 1n;
        for (const sj of use) {
            if (sj.x === si.x)
                continue;
            num = (num * BigInt(-sj.x)) % shamirPrime;
            den = (den * BigInt(si.x - sj.x)) % shamirPrime;
        }
        secret = mod(secret + si.y * mod(num) % shamirPrime * inverse(mod(den)));
    }
    return secret;
}
