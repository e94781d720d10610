// DP-SGD for the LoRA engine (Abadi et al. 2016, as Opacus implements it): each step draws its
// batch by Poisson sampling (every item independently with probability q), computes each item's
// gradient of the LoRA parameters separately (one engine call per item: its label and rationale
// examples together are one privacy unit), clips it to L2 norm C over all tensors, sums, adds
// Gaussian noise N(0, σ²C²) to every coordinate, and divides by the expected batch size q·N.
// AdamW then runs on the host with the same arithmetic as the engine's (native/lora/trainer.cpp).
import type {NativeMicroBatch} from "../native.js";
import {Random, secureUniform, type UniformSource} from "../random.js";
import type {LoraTrainer, TrainerState} from "./trainer.js";

/** Standard normal draws: from the OS's cryptographic generator, or seeded (reproducible, NOT private). */
export class GaussianNoise {
    private spare: number | undefined;
    private readonly source: UniformSource;

    constructor(seed?: number) {
        this.source = seed !== undefined ? new Random(seed) : secureUniform();
    }

    private uniform(): number {
        return this.source.nextDouble();
    }

    /** One N(0, 1) draw (Box-Muller; the second value of each pair is kept for the next call). */
    next(): number {
        if (this.spare !== undefined) {
            const s = this.spare;
            this.spare = undefined;
            return s;
        }
        let u = 0;
        while (u === 0)
            u = this.uniform();
        const v = this.uniform();
        const r = Math.sqrt(-2 * Math.log(u));
        this.spare = r * Math.sin(2 * Math.PI * v);
        return r * Math.cos(2 * Math.PI * v);
    }
}

/** Items of one step by Poisson sampling: each of `n` items with probability `q`, seeded. */
export function poissonSample(n: number, q: number, seed: number): number[] {
    const rng = new Random(seed);
    const out: number[] = [];
    for (let i = 0; i < n; i++)
        if (rng.nextDouble() < q)
            out.push(i);
    return out;
}

export interface PrivatizeOptions {
    /** C: each example's gradient is scaled to L2 norm at most C (over all LoRA tensors together). */
    maxPerExampleGradNorm: number;
    /** σ: the noise added to the clipped sum has standard deviation σ·C per coordinate. */
    noiseMultiplier: number;
    /** The clipped, noised sum is divided by this (the expected batch size q·N). */
    expectedBatchSize: number;
    noise: GaussianNoise;
    dropout?: number;
    /** Dropout seed of example i. */
    dropoutSeed?: (example: number) => number;
    signal?: AbortSignal;
}

export interface PrivateGradient {
    /** (Σ_i clip_C(g_i) + N(0, σ²C²)) / expected batch size, one array per tensor (info.tensors order). */
    gradients: Float64Array[];
    /** Each example's gradient norm before clipping. */
    norms: number[];
    /** Sum over the examples of each one's loss. */
    loss: number;
    targets: number;
}

/**
 * The DP-SGD gradient of one step: `examples[i]` are the micro-batches of example i (its loss
 * weights make that example's loss); each example's gradient is computed by its own engine call.
 */
export async function privateGradient(trainer: LoraTrainer, examples: NativeMicroBatch[][], o: PrivatizeOptions): Promise<PrivateGradient> {
    const shapes = trainer.info.tensors.map((t) => t.shape[0] * t.shape[1]);
    const sum = shapes.map((n) => new Float64Array(n));
    const norms: number[] = [];
    let loss = 0, targets = 0;
    for (let i = 0; i < examples.length; i++) {
        if (o.signal?.aborted)
            throw new Error("training was cancelled");
        const r = await trainer.gradients(examples[i], {dropout: o.dropout ?? 0, dropoutSeed: o.dropoutSeed?.(i) ?? 0});
        if (!Number.isFinite(r.loss))
            throw new Error(`the loss of example ${i} is not finite (${r.loss}); the adapter was not updated`);
        let sq = 0;
        for (const g of r.gradients)
            for (let k = 0; k < g.length; k++)
                sq += g[k] * g[k];
        const norm = Math.sqrt(sq);
        if (!Number.isFinite(norm))
            throw new Error(`the gradient of example ${i} is not finite; the adapter was not updated`);
        const scale = norm > o.maxPerExampleGradNorm ? o.maxPerExampleGradNorm / norm : 1;
        r.gradients.forEach((g, t) => {
            const s = sum[t];
            for (let k = 0; k < g.length; k++)
                s[k] += scale * g[k];
        });
        norms.push(norm);
        loss += r.loss;
        targets += r.targets;
    }
    const std = o.noiseMultiplier * o.maxPerExampleGradNorm;
    for (const s of sum)
        for (let k = 0; k < s.length; k++)
            s[k] = (s[k] + (std > 0 ? std * o.noise.next() : 0)) / o.expectedBatchSize;
    return {gradients: sum, norms, loss, targets};
}

export interface AdamWOptions {
    lr: number;
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
}

/**
 * One AdamW update of the trainer's adapter with a given gradient (torch.optim.AdamW, in float32
 * like the engine): p *= 1 - lr·wd; p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps).
 */
export function applyAdamW(trainer: LoraTrainer, gradients: ArrayLike<number>[], o: AdamWOptions): void {
    const state: TrainerState = trainer.state();
    const step = state.step + 1;
    const f = Math.fround;
    const bc1 = 1 - Math.pow(o.beta1, step), bc2 = 1 - Math.pow(o.beta2, step);
    const stepSize = f(o.lr / bc1), sqrtBc2 = f(Math.sqrt(bc2)), decay = f(1 - f(o.lr) * f(o.weightDecay));
    const b1 = f(o.beta1), b2 = f(o.beta2), ob1 = f(1 - b1), ob2 = f(1 - b2), eps = f(o.eps);
    state.tensors.forEach((t, i) => {
        const g = gradients[i];
        if (g.length !== t.value.length)
            throw new Error(`gradient ${i} has ${g.length} values, tensor ${t.name} ${t.value.length}`);
        for (let k = 0; k < t.value.length; k++) {
            const gk = f(g[k]);
            t.m[k] = f(b1 * t.m[k]) + f(ob1 * gk);
            t.v[k] = f(b2 * t.v[k]) + f(f(ob2 * gk) * gk);
            t.value[k] = f(t.value[k] * decay);
            t.value[k] -= f(stepSize * t.m[k]) / f(f(Math.sqrt(t.v[k]) / sqrtBc2) + eps);
        }
    });
    trainer.setState({step, tensors: state.tensors});
}
