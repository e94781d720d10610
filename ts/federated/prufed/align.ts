// Adapter alignment for PruFed: a client's model keeps a subset of the base model's layers,
// renumbered 0..k-1, and its LoRA adapter names tensors by that client numbering. The server works
// in base numbering (the pruned GGUF's `ppc_gpt.pruning.original_layers` maps one to the other), so
// a layer's updates from clients of different depths line up. Uploads are validated here: shapes
// against the client's declared layers and rank, finite values, size, so that a bad upload is
// rejected with a reason and never aggregated.
import fs from "node:fs";
import type {GgufModelFile} from "../../gguf/read.js";
import {loraTargets, readLoraAdapter, type LoraAdapter, type LoraTensor} from "../../train/adapter.js";

const loraTensorName = /^(.+)\.lora_([ab])$/;
const blockName = /^blk\.(\d+)\.(.+)$/;

/** The parts of a LoRA tensor name: "blk.3.attn_q.weight.lora_a" -> layer 3, target "blk.3.attn_q.weight", part "a". */
export interface LoraTensorName {
    /** The adapted base tensor ("blk.N.<module>.weight", or a non-layer tensor name). */
    target: string;
    part: "a" | "b";
    /** Block index in the numbering of the adapter's file; undefined for non-layer tensors. */
    layer: number | undefined;
    /** Name after "blk.N." (e.g. "attn_q.weight"), or the whole target for non-layer tensors. */
    rest: string;
}

export function parseLoraTensorName(name: string): LoraTensorName | undefined {
    const m = loraTensorName.exec(name);
    if (!m)
        return undefined;
    const b = blockName.exec(m[1]);
    return {target: m[1], part: m[2] as "a" | "b", layer: b ? Number(b[1]) : undefined, rest: b ? b[2] : m[1]};
}

/** One adapted matrix of the base model: W is [nIn, nOut] in ggml order (nOut rows of nIn). */
export interface LayoutTarget {
    /** Base tensor name in base numbering ("blk.7.attn_q.weight"). */
    name: string;
    /** Base layer index, undefined for non-layer tensors. */
    layer: number | undefined;
    /** Name after "blk.N." (or the whole name). */
    rest: string;
    nIn: number;
    nOut: number;
}

/** What every adapter of one federation adapts, in base numbering: the common reference for validation. */
export interface AdapterLayout {
    architecture: string;
    /** Layers of the base model. */
    layers: number;
    targets: LayoutTarget[];
}

/** The layout of LoRA on `targetModules` of a (full-depth) base model. */
export function layoutOfBase(base: GgufModelFile, targetModules: readonly string[], explicit = true): AdapterLayout {
    const targets = loraTargets(base, targetModules, explicit).map((t) => ({
        name: t.name, layer: t.layer, rest: t.name.slice(`blk.${t.layer}.`.length), nIn: t.nIn, nOut: t.nOut,
    }));
    return {architecture: base.architecture, layers: base.blockCount, targets};
}

/** The layout an adapter in base numbering covers (e.g. a global round file). */
export function layoutOfAdapter(adapter: LoraAdapter, layers: number): AdapterLayout {
    const targets = new Map<string, LayoutTarget>();
    for (const t of adapter.tensors) {
        const p = parseLoraTensorName(t.name);
        if (!p)
            throw new Error(`tensor ${t.name} is not a LoRA matrix (.lora_a / .lora_b)`);
        const entry = targets.get(p.target) ?? {name: p.target, layer: p.layer, rest: p.rest, nIn: 0, nOut: 0};
        if (p.part === "a")
            entry.nIn = t.shape[0];
        else
            entry.nOut = t.shape[1];
        targets.set(p.target, entry);
    }
    return {architecture: adapter.architecture, layers, targets: [...targets.values()]};
}

/**
 * The layer map of a client's model: index k of the result is the base layer the client's layer k
 * was cut from. Checked against the base's depth: strictly increasing, in range.
 */
export function clientLayerMap(model: GgufModelFile, baseLayers: number): number[] {
    const map = model.originalLayers;
    checkLayerMap(map, baseLayers, model.path);
    return map;
}

export function checkLayerMap(map: number[], baseLayers: number, source = "client"): void {
    if (map.length === 0)
        throw new Error(`${source}: the model has no layers`);
    for (let i = 0; i < map.length; i++) {
        if (!Number.isInteger(map[i]) || map[i] < 0 || map[i] >= baseLayers)
            throw new Error(`${source}: layer ${i} maps to base layer ${map[i]}, outside the base model's ${baseLayers} layers`);
        if (i > 0 && map[i] <= map[i - 1])
            throw new Error(`${source}: original_layers must be strictly increasing (layer ${i}: ${map[i]} after ${map[i - 1]})`);
    }
}

/**
 * The shapes of a client model's layer matrices, named in base numbering ("blk.<base layer>.attn_q.weight"
 * -> [nIn, nOut]): what a client declares at registration so that a model not cut from the federation's
 * base is refused there, not at its first adapter load.
 */
export function modelLayerShapes(model: GgufModelFile): Record<string, [number, number]> {
    const map = model.originalLayers;
    const shapes: Record<string, [number, number]> = {};
    for (const t of model.tensors) {
        const m = /^blk\.(\d+)\.(.+)$/.exec(t.name);
        if (!m || t.shape.length < 2 || t.shape.slice(2).some((d) => d !== 1))
            continue;
        const base = map[Number(m[1])];
        if (base !== undefined)
            shapes[`blk.${base}.${m[2]}`] = [t.shape[0], t.shape[1]];
    }
    return shapes;
}

/** Every adapted matrix of the declared layers must exist in the client's model with the base's shape. */
export function checkModelShapes(layout: AdapterLayout, layers: readonly number[], shapes: Record<string, readonly number[]>,
    source = "client"): void {
    const kept = new Set(layers);
    for (const t of layout.targets) {
        if (t.layer === undefined || !kept.has(t.layer))
            continue;
        const got = shapes[t.name];
        if (!got)
            throw new RangeError(`${source}: its model has no ${t.name}, which the federation adapts: was it cut from this base model?`);
        if (got[0] !== t.nIn || got[1] !== t.nOut)
            throw new RangeError(`${source}: its model's ${t.name} is [${got.join(", ")}], the base model's is [${t.nIn}, ${t.nOut}]: ` +
                "the model was not cut from this federation's base");
    }
}

function renameLayer(name: string, from: number, to: number): string {
    return `blk.${to}.` + name.slice(`blk.${from}.`.length);
}

/** A client adapter (client numbering) renamed to base numbering through the client's layer map. */
export function toBaseNumbering(adapter: LoraAdapter, layerMap: number[]): LoraAdapter {
    return {
        ...adapter,
        tensors: adapter.tensors.map((t) => {
            const p = parseLoraTensorName(t.name);
            if (p?.layer === undefined)
                return t;
            if (p.layer >= layerMap.length)
                throw new Error(`tensor ${t.name}: layer ${p.layer} is not one of the client's ${layerMap.length} layers`);
            return {...t, name: renameLayer(t.name, p.layer, layerMap[p.layer])};
        }),
    };
}

/**
 * The part of a base-numbered adapter (e.g. the global one) for a client: the tensors of the base
 * layers it kept, renamed to its numbering, plus every non-layer tensor. Data is shared, not copied.
 */
export function toClientNumbering(adapter: LoraAdapter, layerMap: number[]): LoraAdapter {
    const clientOf = new Map(layerMap.map((base, k) => [base, k]));
    const tensors: LoraTensor[] = [];
    for (const t of adapter.tensors) {
        const p = parseLoraTensorName(t.name);
        if (p?.layer === undefined) {
            tensors.push(t);
            continue;
        }
        const k = clientOf.get(p.layer);
        if (k !== undefined)
            tensors.push({...t, name: renameLayer(t.name, p.layer, k)});
    }
    return {...adapter, tensors};
}

/** Why an upload was refused; `reason` is a short machine-readable code. */
export class UploadRejected extends Error {
    override name = "UploadRejected";
    constructor(readonly reason: "size" | "format" | "architecture" | "rank" | "alpha" | "layer" | "tensor" | "shape" | "missing" | "nonfinite" | "magnitude",
        message: string) {
        super(message);
    }
}

export interface UploadLimits {
    /** Largest upload accepted, in bytes (default 1 GiB). */
    maxBytes?: number;
    /** Largest |value| accepted in any matrix (default 1e4): a diverged client is refused, not averaged in. */
    maxAbsValue?: number;
}

export interface ClientDeclaration {
    /** Base layer of each of the client's layers (its model's original_layers). */
    layerMap: number[];
    /** LoRA rank the client trains at. */
    r: number;
    /** Its lora_alpha, when the federation fixes it (checked against the upload's adapter.lora.alpha). */
    loraAlpha?: number;
}

/** Bytes an adapter's matrices take (F32). */
export function adapterBytes(adapter: LoraAdapter): number {
    return adapter.tensors.reduce((s, t) => s + t.data.byteLength, 0);
}

/**
 * Checks a client's adapter (client numbering) against the layout and what the client declared,
 * and returns it in base numbering, tensors in layout order. Throws UploadRejected naming the
 * tensor and what is wrong.
 */
export function validateUpload(adapter: LoraAdapter, layout: AdapterLayout, client: ClientDeclaration, limits: UploadLimits = {}): LoraAdapter {
    const maxAbs = limits.maxAbsValue ?? 1e4;
    checkLayerMap(client.layerMap, layout.layers);
    if (adapter.architecture !== layout.architecture)
        throw new UploadRejected("architecture", `the adapter is for "${adapter.architecture}", the federation's base is "${layout.architecture}"`);
    if (adapter.r !== client.r)
        throw new UploadRejected("rank", `the adapter has rank ${adapter.r}; the client declared r = ${client.r}`);
    if (client.loraAlpha !== undefined && adapter.alpha !== client.loraAlpha)
        throw new UploadRejected("alpha", `the adapter has lora_alpha ${adapter.alpha}; the client declared ${client.loraAlpha}`);
    if (limits.maxBytes !== undefined && adapterBytes(adapter) > limits.maxBytes)
        throw new UploadRejected("size", `the adapter's matrices take ${adapterBytes(adapter)} bytes, more than the limit of ${limits.maxBytes}`);
    const targets = new Map(layout.targets.map((t) => [t.name, t]));
    const seen = new Map<string, LoraTensor>();
    for (const t of adapter.tensors) {
        const p = parseLoraTensorName(t.name);
        if (!p)
            throw new UploadRejected("tensor", `tensor ${t.name} is not a LoRA matrix (.lora_a / .lora_b)`);
        let baseName = t.name;
        if (p.layer !== undefined) {
            if (p.layer >= client.layerMap.length)
                throw new UploadRejected("layer", `tensor ${t.name}: layer ${p.layer} is not held by this client (it declared ${client.layerMap.length} layers)`);
            baseName = renameLayer(t.name, p.layer, client.layerMap[p.layer]);
        }
        const target = targets.get(parseLoraTensorName(baseName)!.target);
        if (!target)
            throw new UploadRejected("tensor", `tensor ${t.name} (base ${baseName}) is not adapted in this federation`);
        if (seen.has(baseName))
            throw new UploadRejected("tensor", `tensor ${t.name} appears twice`);
        const want: [number, number] = p.part === "a" ? [target.nIn, client.r] : [client.r, target.nOut];
        if (t.shape[0] !== want[0] || t.shape[1] !== want[1] || t.data.length !== want[0] * want[1])
            throw new UploadRejected("shape", `tensor ${t.name}: shape [${t.shape.join(", ")}], expected [${want.join(", ")}]`);
        for (let i = 0; i < t.data.length; i++) {
            const v = t.data[i];
            if (!Number.isFinite(v))
                throw new UploadRejected("nonfinite", `tensor ${t.name}: element ${i} is ${v}`);
            if (Math.abs(v) > maxAbs)
                throw new UploadRejected("magnitude", `tensor ${t.name}: element ${i} is ${v}, beyond ±${maxAbs}`);
        }
        seen.set(baseName, {...t, name: baseName});
    }
    const held = new Set(client.layerMap);
    const tensors: LoraTensor[] = [];
    for (const target of layout.targets) {
        if (target.layer !== undefined && !held.has(target.layer))
            continue;
        for (const part of ["a", "b"]) {
            const t = seen.get(`${target.name}.lora_${part}`);
            if (!t)
                throw new UploadRejected("missing", `tensor ${target.name}.lora_${part} (base numbering) is missing from the upload`);
            tensors.push(t);
        }
    }
    return {architecture: adapter.architecture, alpha: adapter.alpha, r: adapter.r, tensors};
}

/** Reads an uploaded adapter file and validates it; the file size is checked before it is parsed. */
export async function readUpload(file: string, layout: AdapterLayout, client: ClientDeclaration, limits: UploadLimits = {}): Promise<LoraAdapter> {
    const maxBytes = limits.maxBytes ?? 1 << 30;
    const size = (await fs.promises.stat(file)).size;
    if (size > maxBytes)
        throw new UploadRejected("size", `${file}: ${size} bytes, more than the limit of ${maxBytes}`);
    let adapter: LoraAdapter;
    try {
        adapter = await readLoraAdapter(file);
    } catch (err) {
        throw new UploadRejected("format", `${file}: ${(err as Error).message}`);
    }
    return validateUpload(adapter, layout, client, {...limits, maxBytes});
}
