// acc, acc_norm and their standard errors as lm-evaluation-harness defines them, against the
// formulas written out here; item selection for --limit / --seed.
import test from "ava";
import {selectItems} from "../../ts/eval/evaluate.js";
import {argmax, charLength, choiceMetrics, mean, meanStderr, pooledAccuracy, sampleStddev, summarizeAccuracy} from "../../ts/eval/metrics.js";

test("mean, sample standard deviation and standard error of the mean", (t) => {
    const xs = [1, 0, 0, 1, 1, 1, 0, 1];
    // By hand: mean 5/8; squared deviations 5 * (3/8)^2 + 3 * (5/8)^2 = 120/64; / (n - 1) = 120/448.
    t.is(mean(xs), 0.625);
    t.true(Math.abs(sampleStddev(xs) - Math.sqrt(120 / 448)) < 1e-15);
    t.true(Math.abs(meanStderr(xs) - Math.sqrt(120 / 448) / Math.sqrt(8)) < 1e-15);
    t.true(Number.isNaN(meanStderr([1])), "one item has no standard error (the harness prints N/A)");
    const s = summarizeAccuracy([1, 0, 1, 1], [0, 0, 1, 1]);
    t.is(s.n, 4);
    t.is(s.acc, 0.75);
    t.is(s.acc_norm, 0.5);
    t.true(Math.abs(s.acc_stderr - Math.sqrt((3 * 0.0625 + 0.5625) / 3) / 2) < 1e-15);
    t.true(Math.abs(s.acc_norm_stderr - Math.sqrt(4 * 0.25 / 3) / 2) < 1e-15);
});

test("pooledAccuracy of several item sets equals summarizeAccuracy of their items together", (t) => {
    const sets = [[[1, 0, 1, 1], [0, 0, 1, 1]], [[0, 0, 1], [1, 0, 1]], [[1], [1]]];
    const pooled = pooledAccuracy(sets.map(([a, b]) => summarizeAccuracy(a, b)));
    const direct = summarizeAccuracy(sets.flatMap(([a]) => a), sets.flatMap(([, b]) => b));
    t.is(pooled.n, 8);
    for (const key of ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"] as const)
        t.true(Math.abs(pooled[key] - direct[key]) < 1e-15, `${key}: ${pooled[key]} vs ${direct[key]}`);
    t.true(Number.isNaN(pooledAccuracy([summarizeAccuracy([1], [0])]).acc_stderr));
});

test("acc takes the largest log-likelihood, acc_norm the largest per character of the choice", (t) => {
    // " a" (1 char) at -2.0 and " bcdef" (5 chars) at -5.0: acc picks a, acc_norm picks bcdef (-1.0 per char).
    const m = choiceMetrics([-2.0, -5.0, -9.0], ["a", "bcdef", "gh"], 1);
    t.deepEqual(m, {pred: 0, predNorm: 1, acc: 0, accNorm: 1});
    // The length is the choice without the target delimiter, in characters (code points), not bytes.
    t.is(charLength("café"), 4);
    t.is(charLength("𝔸b"), 2);
    const u = choiceMetrics([-4.0, -4.5], ["éé", "abc"], 0);  // -2.0 vs -1.5 per character
    t.is(u.predNorm, 1);
    // Ties go to the first choice, as np.argmax does.
    t.is(argmax([-1, -1, -2]), 0);
    t.is(choiceMetrics([-3, -3], ["x", "y"], 1).pred, 0);
});

test("selectItems: the first N, or a seeded sample of N in file order", (t) => {
    const items = Array.from({length: 100}, (_, i) => i);
    t.deepEqual(selectItems(items, {limit: 5}), [0, 1, 2, 3, 4]);
    t.deepEqual(selectItems(items, {}), items);
    t.deepEqual(selectItems(items, {limit: 500}), items);
    const a = selectItems(items, {limit: 10, seed: 1});
    t.deepEqual(selectItems(items, {limit: 10, seed: 1}), a, "same seed, same sample");
    t.notDeepEqual(selectItems(items, {limit: 10, seed: 2}), a, "another seed, another sample");
    t.is(new Set(a).size, 10);
    t.deepEqual([...a].sort((x, y) => x - y), a, "the sample keeps file order");
    t.notDeepEqual(a, items.slice(0, 10));
    t.throws(() => selectItems(items, {limit: 0}), {message: /limit must be a positive integer/});
    t.throws(() => selectItems(items, {limit: 2.5}), {message: /limit must be a positive integer/});
});
