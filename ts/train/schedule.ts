// Learning-rate schedules as Hugging Face transformers defines them (get_scheduler): a linear
// warmup from 0, then constant, linear decay to 0, or a half-cosine to 0. `step` is the 0-based
// index of the optimizer step about to be taken, as in transformers' LambdaLR.

export const lrSchedulers = ["linear", "cosine", "constant"] as const;
export type LrScheduler = typeof lrSchedulers[number];

export interface LrSchedule {
    learningRate: number;
    scheduler: LrScheduler;
    warmupSteps: number;
    totalSteps: number;
}

export function learningRateAt(s: LrSchedule, step: number): number {
    if (step < s.warmupSteps)
        return s.learningRate * step / Math.max(1, s.warmupSteps);
    if (s.scheduler === "constant")
        return s.learningRate;
    const decaySteps = Math.max(1, s.totalSteps - s.warmupSteps);
    const progress = (step - s.warmupSteps) / decaySteps;
    if (s.scheduler === "linear")
        return s.learningRate * Math.max(0, 1 - progress);
    return s.learningRate * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
