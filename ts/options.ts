// Checking a stage function's options: one check per option, in the stage's own option resolution,
// and an error that names the options. The CLI rewrites it with its flags (ts/cli/options.ts), so
// `trainLora({r: 0})` says "r must be …" and `ppc-gpt train --r 0` says "--r must be …".

type Say = (names: readonly string[], got: string) => string;

/** Options outside their range or given together: `options` are the library's names (e.g. "loraDropout"). */
export class OptionError extends RangeError {
    override name = "OptionError";
    readonly #say: Say;

    constructor(readonly options: readonly string[], say: Say, readonly got?: unknown) {
        super(say(options, JSON.stringify(got)));
        this.#say = say;
    }

    /** The message with other names for the options (flags) and another rendering of the value given. */
    messageWith(names: readonly string[], got: string): string {
        return this.#say(names, got);
    }
}

export function checkOption(ok: boolean, option: string, expected: string, got: unknown): void {
    if (!ok)
        throw new OptionError([option], ([name], shown) => `${name} must be ${expected} (got ${shown})`, got);
}

/** Two options of which at most one may be given. */
export function checkExclusive(o: object, a: string, b: string): void {
    const v = o as Record<string, unknown>;
    if (v[a] !== undefined && v[b] !== undefined)
        throw new OptionError([a, b], ([x, y]) => `give ${x} or ${y}, not both`);
}

export const isInt = (x: unknown, lo: number, hi = Number.MAX_SAFE_INTEGER): x is number =>
    typeof x === "number" && Number.isInteger(x) && x >= lo && x <= hi;
export const isNum = (x: unknown, lo: number, hi: number): x is number => typeof x === "number" && Number.isFinite(x) && x >= lo && x <= hi;
