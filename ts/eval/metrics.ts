// lm-evaluation-harness's multiple-choice metrics and their standard errors
// (lm_eval/api/metrics.py: mean, sample_stddev, mean_stderr; api/task.py: acc, acc_norm).

/** Arithmetic mean. */
export function mean(xs: ArrayLike<number>): number {
    let s = 0;
    for (let i = 0; i < xs.length; i++)
        s += xs[i];
    return s / xs.length;
}

/** Sample standard deviation (n - 1 in the denominator); NaN for fewer than two values. */
export function sampleStddev(xs: ArrayLike<number>): number {
    if (xs.length < 2)
        return NaN;
    const mu = mean(xs);
    let s = 0;
    for (let i = 0; i < xs.length; i++)
        s += (xs[i] - mu) ** 2;
    return Math.sqrt(s / (xs.length - 1));
}

/** Standard error of the mean: sample_stddev / sqrt(n) (the harness's acc_stderr). NaN ("N/A") for n < 2. */
export function meanStderr(xs: ArrayLike<number>): number {
    return sampleStddev(xs) / Math.sqrt(xs.length);
}

/** np.argmax: index of the first largest value (the first NaN if any). */
export function argmax(xs: ArrayLike<number>): number {
    let best = 0;
    for (let i = 0; i < xs.length; i++) {
        if (Number.isNaN(xs[i]))
            return i;
        if (xs[i] > xs[best])
            best = i;
    }
    return best;
}

/** Python's len(str): Unicode code points. */
export function charLength(s: string): number {
    let n = 0;
    for (const _ of s)
        n++;
    return n;
}

export interface ChoiceMetrics {
    /** argmax of the log-likelihoods. */
    pred: number;
    /** argmax of log-likelihood / len(choice). */
    predNorm: number;
    acc: number;
    accNorm: number;
}

/**
 * acc and acc_norm of one item. `choices` are the doc_to_choice strings (without the target
 * delimiter): acc_norm divides each log-likelihood by the choice's length in characters, as the
 * harness does (`completion_len = [float(len(i)) for i in choices]`).
 */
export function choiceMetrics(loglikelihoods: ArrayLike<number>, choices: string[], gold: number): ChoiceMetrics {
    const normed = Array.from(loglikelihoods, (ll, i) => ll / charLength(choices[i]));
    const pred = argmax(loglikelihoods);
    const predNorm = argmax(normed);
    return {pred, predNorm, acc: pred === gold ? 1 : 0, accNorm: predNorm === gold ? 1 : 0};
}

export interface AccuracySummary {
    n: number;
    acc: number;
    acc_stderr: number;
    acc_norm: number;
    acc_norm_stderr: number;
}

/** Aggregates per-item acc / acc_norm (0 or 1) into means and standard errors. */
export function summarizeAccuracy(acc: number[], accNorm: number[]): AccuracySummary {
    return {n: acc.length, acc: mean(acc), acc_stderr: meanStderr(acc), acc_norm: mean(accNorm), acc_norm_stderr: meanStderr(accNorm)};
}

/**
 * The summary of several item sets scored together (e.g. the clients of one depth on their own
 * items): acc and acc_norm are 0/1 per item, so the pooled mean is the n-weighted mean and the
 * pooled sample standard deviation follows from it (sqrt(N p (1 - p) / (N - 1))): the same numbers
 * summarizeAccuracy gives on the concatenated items.
 */
export function pooledAccuracy(parts: AccuracySummary[]): AccuracySummary {
    const n = parts.reduce((s, p) => s + p.n, 0);
    const pooled = (key: "acc" | "acc_norm") => {
        const p = parts.reduce((s, x) => s + x.n * x[key], 0) / n;
        return {p, stderr: n < 2 ? NaN : Math.sqrt(Math.max(0, p * (1 - p)) / (n - 1))};
    };
    const acc = pooled("acc"), norm = pooled("acc_norm");
    return {n, acc: acc.p, acc_stderr: acc.stderr, acc_norm: norm.p, acc_norm_stderr: norm.stderr};
}
