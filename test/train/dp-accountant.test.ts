// The RDP accountant of the sampled Gaussian mechanism, checked three independent ways: the closed
// form α/(2σ²) at q = 1, a plain double-precision quadrature of the Rényi divergence between the
// mixture (1-q)N(0,σ²) + qN(1,σ²) and N(0,σ²), and the numbers TF-Privacy publishes for its MNIST
// tutorial (tutorials/README.md: δ = 1e-5, q = 256/60000, 234 steps per epoch, the classic
// conversion ε = min_α rdp(α) - log δ/(α-1) over orders 1.1…10.9, 12…63).
import test from "ava";
import {computeRdp, dpSgdEpsilon, noiseMultiplierFor, rdpToEpsilon, subsampledGaussianRdp} from "../../ts/train/dp-accountant.js";

/** log E_{z~N(0,σ²)}[((1-q) + q·exp((2z-1)/(2σ²)))^α] by composite Simpson's rule in log space. */
function logAByQuadrature(q: number, sigma: number, alpha: number): number {
    const lo = -40 * sigma, hi = alpha + 40 * sigma, n = 400000, h = (hi - lo) / n;
    const logf = (z: number) => {
        const logPhi = -z * z / (2 * sigma * sigma) - Math.log(sigma * Math.sqrt(2 * Math.PI));
        const x = (2 * z - 1) / (2 * sigma * sigma);
        // log((1-q) + q e^x), stably
        const m = Math.max(Math.log(1 - q), Math.log(q) + x);
        const mix = m + Math.log(Math.exp(Math.log(1 - q) - m) + Math.exp(Math.log(q) + x - m));
        return logPhi + alpha * mix;
    };
    const logs: number[] = [];
    let max = -Infinity;
    for (let k = 0; k <= n; k++) {
        const w = k === 0 || k === n ? 1 : k % 2 === 1 ? 4 : 2;
        const v = Math.log(w) + logf(lo + k * h);
        logs.push(v);
        if (v > max)
            max = v;
    }
    let sum = 0;
    for (const v of logs)
        sum += Math.exp(v - max);
    return max + Math.log(sum * h / 3);
}

test("q = 1: the Gaussian mechanism's RDP is α/(2σ²); as q → 1 the subsampled sums approach it", (t) => {
    for (const [sigma, alpha] of [[1, 2], [0.7, 5], [2.5, 32], [1.3, 3.7]]) {
        t.is(subsampledGaussianRdp(1, sigma, alpha), alpha / (2 * sigma * sigma));
        const near = subsampledGaussianRdp(1 - 1e-9, sigma, alpha);
        t.true(Math.abs(near - alpha / (2 * sigma * sigma)) < 1e-6 * alpha / (2 * sigma * sigma) + 1e-8, `σ ${sigma} α ${alpha}: ${near}`);
    }
    t.is(subsampledGaussianRdp(0, 1, 2), 0);
    t.is(subsampledGaussianRdp(0.1, 0, 2), Infinity);
    t.deepEqual(computeRdp(0.5, 1, 10, [2, 3]), [2, 3].map((a) => 10 * subsampledGaussianRdp(0.5, 1, a)));
});

test("q < 1: the RDP equals a direct quadrature of the Rényi divergence (integer and fractional orders)", (t) => {
    const cases: [number, number, number][] = [
        [0.01, 1.1, 2], [0.01, 1.1, 2.5], [0.1, 0.8, 7.3], [256 / 60000, 1.12, 9.1], [0.3, 2, 32], [0.05, 0.7, 1.5], [0.2, 1, 12], [0.5, 3, 3.25],
    ];
    for (const [q, sigma, alpha] of cases) {
        const want = logAByQuadrature(q, sigma, alpha) / (alpha - 1);
        const got = subsampledGaussianRdp(q, sigma, alpha);
        t.true(Math.abs(got - want) <= 1e-7 * Math.abs(want) + 1e-12, `q ${q} σ ${sigma} α ${alpha}: accountant ${got}, quadrature ${want}`);
    }
});

test("TF-Privacy's published MNIST tutorial epsilons are reproduced (classic conversion)", (t) => {
    const orders = [...Array.from({length: 99}, (_, x) => 1 + (x + 1) / 10), ...Array.from({length: 52}, (_, i) => 12 + i)];
    const published: [number, number, number][] = [[1.12, 60, 2.92], [0.6, 30, 9.74], [1.2, 10, 1.20]];
    for (const [sigma, epochs, eps] of published) {
        const r = dpSgdEpsilon({noiseMultiplier: sigma, sampleRate: 256 / 60000, steps: epochs * Math.floor(60000 / 256), delta: 1e-5,
            conversion: "classic", orders});
        t.log(`σ ${sigma}, ${epochs} epochs: ε ${r.epsilon.toFixed(4)} (published ${eps}), at order ${r.order}`);
        // the table prints two decimals
        t.true(Math.abs(r.epsilon - eps) < 0.01, `σ ${sigma}: ${r.epsilon} vs ${eps}`);
        // the improved conversion (Balle et al. 2020) is never looser
        const improved = dpSgdEpsilon({noiseMultiplier: sigma, sampleRate: 256 / 60000, steps: epochs * 234, delta: 1e-5, orders});
        t.true(improved.epsilon < r.epsilon);
    }
});

test("conversion formulas and the noise multiplier that reaches a target ε", (t) => {
    // single order, written out: classic rdp - log δ/(α-1); improved rdp + log(1-1/α) - (log δ + log α)/(α-1)
    t.true(Math.abs(rdpToEpsilon([3], [0.5], 1e-5, "classic").epsilon - (0.5 - Math.log(1e-5) / 2)) < 1e-12);
    t.true(Math.abs(rdpToEpsilon([3], [0.5], 1e-5).epsilon - (0.5 + Math.log(2 / 3) - (Math.log(1e-5) + Math.log(3)) / 2)) < 1e-12);
    const setting = {sampleRate: 16 / 500, steps: 200, delta: 1e-5};
    for (const target of [1, 3, 8]) {
        const sigma = noiseMultiplierFor(target, setting);
        t.true(dpSgdEpsilon({...setting, noiseMultiplier: sigma}).epsilon <= target);
        t.true(dpSgdEpsilon({...setting, noiseMultiplier: sigma - 2e-3}).epsilon > target);
    }
    t.throws(() => noiseMultiplierFor(0, setting), {message: /positive/});
    t.throws(() => subsampledGaussianRdp(1.5, 1, 2), {message: /sampling rate/});
});
