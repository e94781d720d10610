// The independent reference of the Block Influence tests (CPU and GPU suites): per-layer means
// computed from fully dumped hidden states, in plain double precision.
import type {LoadedModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import type {TokenSequence} from "../../ts/prune/block-influence.js";

/** Reference: per-layer means from fully dumped hidden states, in plain double precision. */
export async function reference(model: LoadedModel, seqs: TokenSequence[]) {
    const nLayer = model.info.nLayer, nEmbd = model.info.nEmbd;
    const cos = new Float64Array(nLayer), ang = new Float64Array(nLayer), contrib = new Float64Array(nLayer);
    let counted = 0;
    for (const s of seqs) {
        const n = s.tokens.length;
        const h = await native().dumpHiddenStates(model.handle, s.tokens);
        if (h.length !== (nLayer + 1) * n * nEmbd)
            throw new Error(`dump has ${h.length} values, expected ${(nLayer + 1) * n * nEmbd}`);
        const at = (layer: number, t: number, k: number) => h[(layer * n + t) * nEmbd + k];
        for (let t = 0; t < n; t++) {
            if (s.mask && !s.mask[t])
                continue;
            counted++;
            for (let i = 0; i < nLayer; i++) {
                let xy = 0, xx = 0, yy = 0, dd = 0;
                for (let k = 0; k < nEmbd; k++) {
                    const x = at(i, t, k), y = at(i + 1, t, k);
                    xy += x * y; xx += x * x; yy += y * y; dd += (y - x) ** 2;
                }
                const c = Math.max(-1, Math.min(1, xy / Math.sqrt(xx * yy)));
                cos[i] += c;
                ang[i] += Math.acos(c) / Math.PI;
                contrib[i] += Math.sqrt(dd / xx);
            }
        }
    }
    return {
        tokens: counted,
        bi: [...cos].map((c) => 1 - c / counted),
        angular: [...ang].map((a) => a / counted),
        contribution: [...contrib].map((r) => r / counted),
    };
}
