// Secure aggregation for PruFed's per-layer sums (after Bonawitz et al., CCS 2017), so the server
// learns each adapted matrix's weighted sum over its holders and never one client's update:
//   1. advertise: each client makes two X25519 key pairs (c: to encrypt shares, s: to agree masks);
//   2. share keys: each client Shamir-shares (threshold t) its s private key and one self-mask seed
//      b_{k,l} per mask group l (each base layer it holds, and one for the tensors outside any layer)
//      among the round's clients; each share travels through the server encrypted (AES-256-GCM under
//      a key agreed from the c keys), so the server sees only ciphertext;
//   3. masked input: for every matrix whose layer has ≥ 2 holders, client k sends
//        y_k = fix(p_k·x_k) + PRG(b_{k,l}) + Σ_{holders j ≠ k} ±PRG(s_kj)   (mod 2^32)
//      with p_k = w_k / Σ_holders w (weights pre-multiplied), fix(v) = round(v·2^scaleBits), the pair
//      masks + for k < j and - for k > j so they cancel in the sum; PRG = AES-256-CTR keyed by
//      HKDF-SHA256(seed, round, matrix). A matrix with one holder is not sent (its sum would be it);
//   4. unmask: for each client that sent y, the survivors give shares of its b_{k,l} for the layers l
//      left with at least two surviving holders; for each client that dropped after step 2, shares of
//      its s key, so the server recomputes the dropped client's pair masks in the survivors' inputs.
//      A layer left with one surviving holder keeps that holder's self mask secret (knowing the pair
//      masks, the server would otherwise read its update): it is not unmasked and keeps its value,
//      while every other layer is aggregated. Fewer than t survivors void the round.
// The sum mod 2^32 decodes to Σ_survivors p_k x_k; divided by Σ_survivors p_k it is layerwise's mean.
import {createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes,
    type KeyObject} from "node:crypto";
import type {LoraAdapter, LoraTensor} from "../../train/adapter.js";
import {parseLoraTensorName} from "./align.js";
import {strategyFor, type AggregationMethod, type TargetAggregation} from "./aggregate.js";
import {bytesToField, combineShares, fieldToBytes, splitSecret, type Share} from "./shamir.js";
import {secaggProtocol} from "./secure-checks.js";

export interface SecureParticipant {
    id: string;
    weight: number;
    layerMap: number[];
    /** Its adapter in base numbering (its layers only). */
    adapter: LoraAdapter;
}

export interface SecureRoundOptions {
    round: number;
    /** Shamir threshold (default: a majority, floor(n/2) + 1, at least 2 when n ≥ 2). */
    threshold?: number;
    /** Fixed-point fraction bits (default 20: resolution 2^-20, range ±2^11 for each p_k·x_k). */
    scaleBits?: number;
    /** Clients that go silent after sharing their keys (before sending their masked input). */
    dropAfterMasking?: string[];
    /** The aggregation method (default layerwise): one whose strategy sums factors; fedavg's also refuses clients of different depths. */
    method?: AggregationMethod;
    /** The plan carries the clients' metrics as masked coordinates (metricsTarget): the server learns only their weighted means. */
    maskedMetrics?: boolean;
}

/**
 * The masked metrics of a secure round, as one more matrix pair of the plan, held by every client
 * that shared keys, in the self-mask group of the tensors outside any layer (null):
 * lora_a = [train loss, 1 (has accuracy) or 0], lora_b = [accuracy, accuracy before] (0 without).
 * Summed with weights p_k like the matrices, they decode to weighted means over the survivors.
 */
export const metricsTarget = "ppc_gpt.metrics";
const metricsLength = 2;

/** A client's metrics as the two masked vectors of metricsTarget. */
export function metricsTensors(m: {trainLoss: number; accuracy?: number; accuracyBefore?: number}): LoraTensor[] {
    const has = m.accuracy !== undefined ? 1 : 0;
    return [{name: `${metricsTarget}.lora_a`, shape: [metricsLength, 1], data: new Float32Array([m.trainLoss, has])},
        {name: `${metricsTarget}.lora_b`, shape: [metricsLength, 1], data: new Float32Array([has ? m.accuracy! : 0, has ? m.accuracyBefore ?? 0 : 0])}];
}

/** The weighted means a secure round's masked metrics decode to (accuracy: over the survivors that measured it). */
export interface MaskedMetrics {
    trainLoss: number;
    accuracy?: number;
    accuracyBefore?: number;
}

/** The self-mask group of a matrix: its base layer, or null for the tensors outside any layer. */
export type MaskGroup = number | null;

/** The mask group of a target (a matrix's base name, "blk.3.attn_q.weight"). */
export const maskGroupOf = (target: string): MaskGroup => parseLoraTensorName(`${target}.lora_a`)?.layer ?? null;

/** What became of one mask group (layer) in a secure round: summed under masks, or kept and why. */
export interface SecureLayerOutcome {
    /** Base layer index; null: the tensors outside any layer. */
    layer: MaskGroup;
    /** Its matrices (base names). */
    targets: string[];
    /** Its holders among the clients that shared keys. */
    holders: string[];
    /** Holders whose masked input arrived. */
    survivors: string[];
    summed: boolean;
    /** Why the previous global value was kept. */
    reason?: string;
}

export interface SecureRoundReport {
    clients: string[];
    dropped: string[];
    threshold: number;
    scaleBits: number;
    /** Matrices sent under masks (≥ 2 holders), and those keeping their previous value (not summed). */
    maskedTargets: number;
    keptTargets: number;
    /** Per layer: summed, or kept and why. */
    layers: SecureLayerOutcome[];
    /** Everything the server received, in bytes (keys, encrypted shares, masked inputs, unmasking shares). */
    bytesReceived: number;
    aborted?: string;
}

export interface SecureRoundResult {
    adapter: LoraAdapter;
    targets: TargetAggregation[];
    /** Clients whose update is in the aggregate. */
    contributors: string[];
    report: SecureRoundReport;
    /** Every message the server received, as bytes (for audits and tests). */
    received: Buffer[];
    /** The unmasking messages, by sender (for audits and tests: which seeds were released). */
    unmasks: Map<string, UnmaskShares>;
}

export interface Advert {
    id: string;
    /** x coordinate of this client's shares (1-based position in the roster). */
    x: number;
    cPub: Buffer;
    sPub: Buffer;
}

export interface SharedBox {
    from: string;
    to: string;
    box: Buffer;
}

/** Per matrix (target) the holders among the clients that shared keys, and their normalised weights. */
export interface MaskPlan {
    targets: {target: string; holders: string[]; p: Map<string, number>}[];
}

const rawPublic = (k: KeyObject) => Buffer.from(k.export({format: "jwk"}).x!, "base64url");
const publicFromRaw = (raw: Buffer) => createPublicKey({key: {kty: "OKP", crv: "X25519", x: raw.toString("base64url")}, format: "jwk"});
const rawPrivate = (k: KeyObject) => Buffer.from(k.export({format: "jwk"}).d!, "base64url");
const privateFromRaw = (raw: Buffer, pub: Buffer) => createPrivateKey({key: {kty: "OKP", crv: "X25519", d: raw.toString("base64url"),
    x: pub.toString("base64url")}, format: "jwk"});

/** The X25519 public key of a raw private key: X25519(k, 9). */
function x25519Public(raw: Buffer): Buffer {
    const basePoint = Buffer.alloc(32);
    basePoint[0] = 9;
    const priv = createPrivateKey({key: {kty: "OKP", crv: "X25519", d: raw.toString("base64url"), x: basePoint.toString("base64url")}, format: "jwk"});
    return diffieHellman({privateKey: priv, publicKey: publicFromRaw(basePoint)});
}

/** The weighted means of the masked metrics (metricsTensors' layout), over the survivors that measured each. */
function decodeMetrics(a: Float32Array, b: Float32Array): MaskedMetrics {
    const has = a[1];
    return {trainLoss: a[0], ...(has > 1e-6 ? {accuracy: b[0] / has, accuracyBefore: b[1] / has} : {})};
}

function agree(priv: KeyObject, pubRaw: Buffer): Buffer {
    return diffieHellman({privateKey: priv, publicKey: publicFromRaw(pubRaw)});
}

/** The mask stream of `seed` for one matrix of one round: AES-256-CTR under an HKDF-derived key, as uint32 lanes (little-endian). */
export function maskStream(seed: Buffer, round: number, tensor: string, length: number): Uint32Array {
    const key = Buffer.from(hkdfSync("sha256", seed, `prufed-secagg-round-${round}`, tensor, 32));
    const cipher = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
    const bytes = cipher.update(Buffer.alloc(length * 4));
    return new Uint32Array(bytes.buffer, bytes.byteOffset, length).slice();
}

/**
 * fix(v) = round(v·2^bits) as a uint32 lane (two's complement). `summands`: how many such lanes are
 * added mod 2^32 (the holders of the matrix); each |fix| is bounded by (2^31 - 1) / summands so their
 * sum cannot wrap, and a value beyond that bound is an error, never a silent wrap.
 */
export function toFixedPoint(values: Float32Array | Float64Array, factor: number, bits: number, tensor: string, summands = 1): Uint32Array {
    const scale = 2 ** bits, limit = Math.floor((2 ** 31 - 1) / summands);
    const out = new Uint32Array(values.length);
    for (let i = 0; i < values.length; i++) {
        const q = Math.round(factor * values[i] * scale);
        if (!(Math.abs(q) <= limit))
            throw new RangeError(`${tensor}[${i}]: ${factor * values[i]} is beyond the fixed-point range ±${limit / scale} of a sum over ` +
                `${summands} holder(s) (fewer scaleBits would fit it)`);
        out[i] = q >>> 0;
    }
    return out;
}

function addInto(acc: Uint32Array, x: Uint32Array, sign: 1 | -1): void {
    for (let i = 0; i < acc.length; i++)
        acc[i] = (sign === 1 ? acc[i] + x[i] : acc[i] - x[i]) >>> 0;
}

function seal(key: Buffer, plain: Buffer): Buffer {
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", key, iv);
    const body = Buffer.concat([c.update(plain), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), body]);
}

function open(key: Buffer, box: Buffer): Buffer {
    const d = createDecipheriv("aes-256-gcm", key, box.subarray(0, 12));
    d.setAuthTag(box.subarray(12, 28));
    return Buffer.concat([d.update(box.subarray(28)), d.final()]);
}

const shareKey = (secret: Buffer, a: string, b: string) =>
    Buffer.from(hkdfSync("sha256", secret, "prufed-secagg-shares", [a, b].sort().join("|"), 32));

/** Self-mask shares as they travel: [layer (null: outside any layer), y hex]; x is the recipient's. */
type WireSeedShares = [MaskGroup, string][];

/** One client of the protocol: holds its keys, its update and the shares others gave it. */
export class SecureClient {
    private readonly c = generateKeyPairSync("x25519");
    private readonly s = generateKeyPairSync("x25519");
    /** One self-mask seed per mask group it holds, so that one layer's seed can be revealed without the others. */
    private readonly b = new Map<MaskGroup, Buffer>();
    private readonly held = new Map<string, {s: Share; b: Map<MaskGroup, Share>}>();
    private roster: Advert[] = [];
    /** Mask seeds agreed with each other client (X25519 of the s keys), computed once per round. */
    private readonly pairSeeds = new Map<string, Buffer>();

    /**
     * `metrics`: this client's metrics, sent as masked coordinates when the plan has metricsTarget
     * (its self-mask seed is the one of the tensors outside any layer).
     */
    constructor(readonly participant: SecureParticipant, readonly round: number, readonly scaleBits: number,
        metrics?: {trainLoss: number; accuracy?: number; accuracyBefore?: number}) {
        if (metrics)
            this.participant = {...participant, adapter: {...participant.adapter, tensors: [...participant.adapter.tensors, ...metricsTensors(metrics)]}};
        for (const t of this.participant.adapter.tensors) {
            const group = maskGroupOf(parseLoraTensorName(t.name)?.target ?? t.name);
            if (!this.b.has(group))
                this.b.set(group, randomBytes(32));
        }
    }

    get id(): string { return this.participant.id; }

    /** Its public keys (the server assigns the share coordinate x in the roster). */
    advertise(): Omit<Advert, "x"> {
        return {id: this.id, cPub: rawPublic(this.c.publicKey), sPub: rawPublic(this.s.publicKey)};
    }

    /** Shares of its s key and of each self-mask seed for every other client, each sealed for its recipient. */
    shareKeys(roster: Advert[], threshold: number): SharedBox[] {
        this.roster = roster;
        const sShares = splitSecret(bytesToField(rawPrivate(this.s.privateKey)), roster.length, threshold);
        const bShares = [...this.b].map(([group, seed]) => [group, splitSecret(bytesToField(seed), roster.length, threshold)] as const);
        const me = roster.find((a) => a.id === this.id)!;
        this.held.set(this.id, {s: sShares[me.x - 1], b: new Map(bShares.map(([g, sh]) => [g, sh[me.x - 1]]))});
        return roster.filter((a) => a.id !== this.id).map((a) => {
            const b: WireSeedShares = bShares.map(([g, sh]) => [g, sh[a.x - 1].y.toString(16)]);
            const plain = Buffer.from(JSON.stringify({v: secaggProtocol, from: this.id, to: a.id, round: this.round, x: a.x, s: sShares[a.x - 1].y.toString(16), b}));
            return {from: this.id, to: a.id, box: seal(shareKey(agree(this.c.privateKey, a.cPub), this.id, a.id), plain)};
        });
    }

    acceptShares(boxes: SharedBox[]): void {
        for (const m of boxes) {
            const sender = this.roster.find((a) => a.id === m.from);
            if (!sender || m.to !== this.id)
                throw new Error(`client ${this.id}: a share box from ${m.from} to ${m.to} is not for it`);
            const msg = JSON.parse(open(shareKey(agree(this.c.privateKey, sender.cPub), m.from, this.id), m.box).toString()) as
                {v?: string; from: string; to: string; round: number; x: number; s: string; b: WireSeedShares};
            if (msg.v !== secaggProtocol)
                throw new Error(`client ${this.id}: a share box from ${m.from} speaks ${JSON.stringify(msg.v ?? null)}, not ${secaggProtocol}`);
            const me = this.roster.find((a) => a.id === this.id)!;
            if (msg.from !== m.from || msg.to !== this.id || msg.round !== this.round || msg.x !== me.x)
                throw new Error(`client ${this.id}: a share box's contents do not match its envelope`);
            this.held.set(m.from, {s: {x: msg.x, y: BigInt("0x" + msg.s)}, b: new Map(msg.b.map(([g, y]) => [g, {x: msg.x, y: BigInt("0x" + y)}]))});
        }
    }

    /** y for every matrix of the plan this client holds (tensor name -> uint32 lanes). */
    maskedInput(plan: MaskPlan): Map<string, Uint32Array> {
        const mine = new Map(this.participant.adapter.tensors.map((t) => [t.name, t]));
        const out = new Map<string, Uint32Array>();
        for (const target of plan.targets) {
            if (!target.holders.includes(this.id))
                continue;
            const p = target.p.get(this.id)!;
            for (const part of ["a", "b"]) {
                const name = `${target.target}.lora_${part}`;
                const t = mine.get(name);
                if (!t)
                    throw new Error(`client ${this.id}: the plan lists it as a holder of ${name}, which it lacks`);
                const y = toFixedPoint(t.data, p, this.scaleBits, name, target.holders.length);
                addInto(y, maskStream(this.b.get(maskGroupOf(target.target))!, this.round, name, y.length), 1);
                for (const j of target.holders) {
                    if (j === this.id)
                        continue;
                    addInto(y, maskStream(this.pairSeed(j), this.round, name, y.length), this.id < j ? 1 : -1);
                }
                out.set(name, y);
            }
        }
        return out;
    }

    private pairSeed(peer: string): Buffer {
        let seed = this.pairSeeds.get(peer);
        if (!seed) {
            seed = agree(this.s.privateKey, this.roster.find((a) => a.id === peer)!.sPub);
            this.pairSeeds.set(peer, seed);
        }
        return seed;
    }

    /**
     * Shares the server needs: of each survivor's self-mask seed for the layers left with at least two
     * surviving holders (never for a layer with one: with the dropped clients' keys the server knows
     * its pair masks, so its self mask is all that hides that holder's update), and of the keys of
     * the clients that dropped.
     */
    unmaskShares(plan: MaskPlan, survivors: string[], dropped: string[]): UnmaskShares {
        const overlap = survivors.filter((x) => dropped.includes(x));
        if (overlap.length)
            throw new Error(`client ${this.id} refuses to unmask: ${overlap.join(", ")} listed as both alive and dropped`);
        const open = unmaskableGroups(plan, survivors);
        return {
            b: survivors.filter((id) => this.held.has(id)).flatMap((id) => [...this.held.get(id)!.b]
                .filter(([g]) => open.get(g)?.includes(id)).map(([layer, share]) => ({id, layer, share}))),
            s: dropped.filter((id) => this.held.has(id)).map((id) => ({id, share: this.held.get(id)!.s})),
        };
    }
}

/**
 * The mask groups (layers) of a plan whose every matrix keeps at least two holders among the
 * survivors, each with those surviving holders: the groups whose self masks may be removed.
 */
export function unmaskableGroups(plan: MaskPlan, survivors: string[]): Map<MaskGroup, string[]> {
    const alive = new Set(survivors);
    const out = new Map<MaskGroup, string[]>();
    const closed = new Set<MaskGroup>();
    for (const t of plan.targets) {
        const g = maskGroupOf(t.target);
        const left = t.holders.filter((h) => alive.has(h));
        if (left.length < 2 || closed.has(g) || (out.has(g) && out.get(g)!.join() !== left.join())) {
            closed.add(g);
            out.delete(g);
            continue;
        }
        out.set(g, left);
    }
    return out;
}

function shareBytes(r: UnmaskShares): Buffer {
    return Buffer.from(JSON.stringify({b: r.b.map((x) => [x.id, x.layer, x.share.x, x.share.y.toString(16)]), s: r.s.map((x) => [x.id, x.share.x, x.share.y.toString(16)])}));
}

export type UnmaskShares = {b: {id: string; layer: MaskGroup; share: Share}[]; s: {id: string; share: Share}[]};

/** A round's participant as the server knows it: declared layers and weight, never its update. */
export interface SecureMember {
    id: string;
    weight: number;
    layerMap: number[];
}

/**
 * The server's side of one secure round as a state machine, one method per message, so a transport
 * only routes: advertise -> roster -> submitShares / sharesFor -> plan -> submitMasked ->
 * unmaskRequest -> submitUnmask -> result. It never holds an update: holders follow from the declared
 * layer maps, and `received` records every byte it was given.
 */
export class SecureAggregationServer {
    readonly received: Buffer[] = [];
    readonly threshold: number;
    readonly scaleBits: number;
    private readonly adverts = new Map<string, Advert>();
    private rosterList: Advert[] | undefined;
    private readonly boxes = new Map<string, SharedBox[]>();
    private planned: MaskPlan | undefined;
    private readonly masked = new Map<string, Map<string, Uint32Array>>();
    private unmaskList: {survivors: string[]; dropped: string[]} | undefined;
    private readonly unmasks = new Map<string, UnmaskShares>();

    constructor(readonly previous: LoraAdapter, readonly members: SecureMember[], readonly options: SecureRoundOptions) {
        const n = members.length;
        this.scaleBits = options.scaleBits ?? 20;
        if (!Number.isInteger(this.scaleBits) || this.scaleBits < 1 || this.scaleBits > 30)
            throw new RangeError(`scaleBits must be an integer in [1, 30] (got ${this.scaleBits})`);
        this.threshold = options.threshold ?? Math.max(Math.min(2, n), Math.floor(n / 2) + 1);
        if (!Number.isInteger(this.threshold) || this.threshold < 1 || this.threshold > n)
            throw new RangeError(`threshold must be in [1, ${n}] (got ${this.threshold})`);
        if (new Set(members.map((m) => m.id)).size !== n)
            throw new Error("a client appears twice in the secure round");
        const strategy = strategyFor(options.method ?? "layerwise");
        if (!strategy.secureAggregation)
            throw new RangeError(`secure aggregation sums per-layer factors: use it with layerwise or fedavg, not ${strategy.name}`);
        if (strategy.sameLayers && new Set(members.map((m) => m.layerMap.join(","))).size > 1)
            throw new Error(`${strategy.name} is the homogeneous baseline: the round's clients hold different layers; use layerwise`);
    }

    private member(id: string): SecureMember {
        const m = this.members.find((x) => x.id === id);
        if (!m)
            throw new Error(`client ${id} is not in this secure round`);
        return m;
    }

    /** Whether a client sent keys / shares / masked input / unmasking shares (for a transport's phase deadlines). */
    advertised(id: string): boolean { return this.adverts.has(id); }
    sharers(): string[] { return [...this.boxes.keys()].sort(); }
    maskedFrom(id: string): boolean { return this.masked.has(id); }
    unmaskers(): string[] { return [...this.unmasks.keys()].sort(); }

    /** Step 1: a client's public keys. */
    advertise(advert: Omit<Advert, "x">): void {
        this.member(advert.id);
        if (this.rosterList)
            throw new Error(`client ${advert.id}: keys arrive after the roster was fixed`);
        this.received.push(Buffer.concat([Buffer.from(advert.id), advert.cPub, advert.sPub]));
        this.adverts.set(advert.id, {...advert, x: 0});
    }

    /** The clients that advertised, in id order, each with its share coordinate x. */
    roster(): Advert[] {
        if (!this.rosterList) {
            const ids = [...this.adverts.keys()].sort();
            if (ids.length < this.threshold)
                throw new Error(`${ids.length} client(s) advertised keys, fewer than the threshold ${this.threshold}`);
            this.rosterList = ids.map((id, i) => ({...this.adverts.get(id)!, x: i + 1}));
        }
        return this.rosterList;
    }

    /** Step 2: a client's sealed shares, one per other roster member. */
    submitShares(from: string, boxes: SharedBox[]): void {
        const roster = this.roster();
        if (!roster.some((a) => a.id === from) || boxes.some((b) => b.from !== from || !roster.some((a) => a.id === b.to)))
            throw new Error(`client ${from}: share boxes from or to clients outside the roster`);
        if (this.planned)
            throw new Error(`client ${from}: shares arrive after the masking plan was fixed`);
        for (const b of boxes)
            this.received.push(b.box);
        this.boxes.set(from, boxes);
    }

    /** The boxes addressed to a client (from every client that shared). */
    sharesFor(id: string): SharedBox[] {
        return [...this.boxes.values()].flat().filter((b) => b.to === id);
    }

    /** Step 3's plan: per matrix, its holders among the clients that shared keys and their weights p_k. */
    plan(): MaskPlan {
        if (this.planned)
            return this.planned;
        const shared = new Set(this.boxes.keys());
        const held = new Map<string, string[]>();
        for (const t of this.previous.tensors) {
            const parsed = parseLoraTensorName(t.name);
            if (parsed?.part !== "a")
                continue;
            const holders = this.members.filter((m) => shared.has(m.id) && (parsed.layer === undefined || m.layerMap.includes(parsed.layer)))
                .map((m) => m.id).sort();
            held.set(parsed.target, holders);
        }
        this.planned = {targets: []};
        for (const [target, holders] of held) {
            if (holders.length < 2)
                continue;
            const total = holders.reduce((s, h) => s + this.member(h).weight, 0);
            this.planned.targets.push({target, holders, p: new Map(holders.map((h) => [h, this.member(h).weight / total]))});
        }
        const sharers = this.members.filter((m) => shared.has(m.id)).map((m) => m.id).sort();
        if (this.options.maskedMetrics && sharers.length >= 2) {
            const total = sharers.reduce((s, h) => s + this.member(h).weight, 0);
            this.planned.targets.push({target: metricsTarget, holders: sharers, p: new Map(sharers.map((h) => [h, this.member(h).weight / total]))});
        }
        return this.planned;
    }

    /** Values of a matrix of the plan (a base matrix of the previous global, or the masked metrics). */
    lengthOf(name: string): number {
        if (name.startsWith(`${metricsTarget}.`))
            return metricsLength;
        return this.previous.tensors.find((x) => x.name === name)!.data.length;
    }

    /** Step 3: a client's masked matrices. */
    submitMasked(id: string, inputs: Map<string, Uint32Array>): void {
        const plan = this.plan();
        if (this.unmaskList)
            throw new Error(`client ${id}: masked input after the unmasking request (too late)`);
        for (const t of plan.targets) {
            if (!t.holders.includes(id))
                continue;
            for (const part of ["a", "b"]) {
                const name = `${t.target}.lora_${part}`;
                const want = this.lengthOf(name);
                if (inputs.get(name)?.length !== want)
                    throw new Error(`client ${id}: masked ${name} missing or not ${want} values`);
            }
        }
        for (const v of inputs.values())
            this.received.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
        this.masked.set(id, inputs);
    }

    /** Step 4's request: who sent masked input (survivors) and who shared keys but did not (dropped). */
    unmaskRequest(): {survivors: string[]; dropped: string[]} {
        if (!this.unmaskList) {
            const survivors = [...this.masked.keys()].sort();
            this.unmaskList = {survivors, dropped: [...this.boxes.keys()].filter((id) => !this.masked.has(id)).sort()};
        }
        return this.unmaskList;
    }

    /** The layers whose self masks may be removed (at least two surviving holders), with those holders. */
    unmaskable(): Map<MaskGroup, string[]> {
        return unmaskableGroups(this.plan(), this.unmaskRequest().survivors);
    }

    /**
     * Step 4: a survivor's shares; a self-mask share is accepted only for a holder of an unmaskable
     * layer. Each share is the sender's own (x = its roster position) and each secret is shared once
     * per sender: otherwise one client could stand in for several and rebuild a secret alone.
     */
    submitUnmask(id: string, shares: UnmaskShares): void {
        this.checkUnmask(id, shares);
        this.received.push(shareBytes(shares));
        this.unmasks.set(id, shares);
    }

    /** Whether `shares` are exactly what `id` already sent (a retried message). */
    sameUnmask(id: string, shares: UnmaskShares): boolean {
        const had = this.unmasks.get(id);
        return had !== undefined && shareBytes(had).equals(shareBytes(shares));
    }

    /** submitUnmask's checks, without storing anything. */
    checkUnmask(id: string, shares: UnmaskShares): void {
        const {survivors, dropped} = this.unmaskRequest();
        if (!survivors.includes(id))
            throw new Error(`client ${id} is not a survivor of this round`);
        if (this.unmasks.has(id))
            throw new Error(`client ${id} already sent its unmasking shares`);
        const x = this.roster().find((a) => a.id === id)!.x;
        const secrets = [...shares.b.map((b) => `b:${b.id}:${b.layer}`), ...shares.s.map((k) => `s:${k.id}`)];
        const dup = secrets.find((k, i) => secrets.indexOf(k) !== i);
        if (dup)
            throw new Error(`client ${id}: two shares of one secret (${dup})`);
        const misplaced = [...shares.b, ...shares.s].find((v) => v.share.x !== x);
        if (misplaced)
            throw new Error(`client ${id}: a share with x = ${misplaced.share.x} of ${misplaced.id}; its shares have x = ${x}, its roster position`);
        const open = this.unmaskable();
        for (const x of shares.b)
            if (!open.get(x.layer)?.includes(x.id))
                throw new Error(`client ${id}: a self-mask share of ${x.id} for ${x.layer === null ? "the non-layer tensors" : `layer ${x.layer}`}, ` +
                    "which is not a surviving holder of a layer with at least two");
        for (const x of shares.s)
            if (!dropped.includes(x.id))
                throw new Error(`client ${id}: a key share of ${x.id}, which did not drop`);
    }

    /**
     * Per mask group (layer) of the previous adapter: its holders, survivors, and whether it is summed
     * (or why it keeps its previous value). `aborted`: the round is not unmasked at all.
     */
    layerOutcomes(aborted?: string): SecureLayerOutcome[] {
        const shared = new Set(this.boxes.keys());
        const request = this.unmaskList;
        const open = this.planned && request ? this.unmaskable() : new Map<MaskGroup, string[]>();
        const groups = new Map<MaskGroup, string[]>();
        for (const t of this.previous.tensors) {
            const parsed = parseLoraTensorName(t.name);
            if (parsed?.part !== "a")
                continue;
            const g = parsed.layer ?? null;
            groups.set(g, [...(groups.get(g) ?? []), parsed.target]);
        }
        return [...groups].sort(([a], [b]) => (a ?? -1) - (b ?? -1)).map(([layer, targets]) => {
            const holders = this.members.filter((m) => shared.has(m.id) && (layer === null || m.layerMap.includes(layer))).map((m) => m.id).sort();
            const survivors = request ? holders.filter((h) => request.survivors.includes(h)) : [];
            const summed = !aborted && open.has(layer);
            const reason = summed ? undefined
                : aborted ? `round not unmasked: ${aborted}`
                : !this.planned || holders.length < 2 ? `${holders.length} holder(s) among the clients that shared keys: never sent (its sum would be an update)`
                : !request ? "no masked input yet"
                : survivors.length === 1 ? `one surviving holder (${survivors[0]}): its self-mask seed stays secret, so its update stays hidden`
                : survivors.length === 0 ? "no surviving holder"
                : `${survivors.length} surviving holders, but not unmaskable`;
            return {layer, targets, holders, survivors, summed, ...(reason ? {reason} : {})};
        });
    }

    /**
     * The unmasked, decoded per-matrix means of the layers with at least two surviving holders (the
     * others keep their previous value); throws when fewer than `threshold` survivors answered.
     */
    result(): {adapter: LoraAdapter; targets: TargetAggregation[]; contributors: string[]; layers: SecureLayerOutcome[]; metrics?: MaskedMetrics} {
        const plan = this.plan();
        const {dropped} = this.unmaskRequest();
        const answered = [...this.unmasks.keys()];
        if (answered.length < this.threshold)
            throw new Error(`${answered.length} survivor(s) sent unmasking shares, fewer than the threshold ${this.threshold}`);
        const open = this.unmaskable();
        const roster = this.roster();
        const seeds = new Map<string, Buffer>();
        const bSeed = (id: string, layer: MaskGroup): Buffer => {
            const key = `${id}|${layer}`;
            let seed = seeds.get(key);
            if (!seed) {
                const shares = [...this.unmasks.values()].flatMap((u) => u.b.filter((x) => x.id === id && x.layer === layer).map((x) => x.share));
                try {
                    seed = fieldToBytes(combineShares(shares, this.threshold), 32);
                } catch (err) {
                    throw new Error(`the self-mask seed of ${id} for layer ${layer}: ${(err as Error).message}`);
                }
                seeds.set(key, seed);
            }
            return seed;
        };
        const sKey = new Map(dropped.map((id) => {
            const adv = roster.find((a) => a.id === id)!;
            const shares = [...this.unmasks.values()].flatMap((u) => u.s.filter((x) => x.id === id).map((x) => x.share));
            const raw = fieldToBytes(combineShares(shares, this.threshold), 32);
            // a forged or wrong share rebuilds another key: its public key tells (X25519(k, 9) is the published s_pub)
            if (!x25519Public(raw).equals(adv.sPub))
                throw new Error(`the rebuilt mask key of ${id} does not match its published public key (a wrong or forged share)`);
            return [id, privateFromRaw(raw, adv.sPub)];
        }));
        const pairSeeds = new Map<string, Buffer>();
        const droppedPairSeed = (k: string, j: string): Buffer => {
            let seed = pairSeeds.get(`${k}|${j}`);
            if (!seed) {
                seed = diffieHellman({privateKey: sKey.get(k)!, publicKey: publicFromRaw(roster.find((a) => a.id === j)!.sPub)});
                pairSeeds.set(`${k}|${j}`, seed);
            }
            return seed;
        };
        const round = this.options.round;
        const prevByName = new Map(this.previous.tensors.map((t) => [t.name, t]));
        const out = new Map<string, LoraTensor>();
        const targets: TargetAggregation[] = [];
        let metrics: MaskedMetrics | undefined;
        for (const t of plan.targets) {
            const group = maskGroupOf(t.target);
            const alive = open.get(group);
            if (!alive)
                continue; // one surviving holder (or none): its self mask stays on, the previous value is kept
            const gone = t.holders.filter((h) => dropped.includes(h));
            const pSum = alive.reduce((s, h) => s + t.p.get(h)!, 0);
            for (const part of ["a", "b"]) {
                const name = `${t.target}.lora_${part}`;
                const acc = new Uint32Array(this.lengthOf(name));
                for (const h of alive) {
                    addInto(acc, this.masked.get(h)!.get(name)!, 1);
                    addInto(acc, maskStream(bSeed(h, group), round, name, acc.length), -1);
                }
                for (const k of gone)
                    for (const j of alive)
                        // j added +PRG(s_jk) when j < k, -PRG otherwise: remove it
                        addInto(acc, maskStream(droppedPairSeed(k, j), round, name, acc.length), j < k ? -1 : 1);
                const data = new Float32Array(acc.length);
                const scale = 2 ** this.scaleBits;
                for (let i = 0; i < acc.length; i++)
                    data[i] = (acc[i] | 0) / scale / pSum;
                out.set(name, {name, shape: prevByName.get(name)?.shape ?? [metricsLength, 1], data});
            }
            if (t.target === metricsTarget) {
                metrics = decodeMetrics(out.get(`${metricsTarget}.lora_a`)!.data, out.get(`${metricsTarget}.lora_b`)!.data);
                continue;
            }
            const parsed = parseLoraTensorName(`${t.target}.lora_a`)!;
            targets.push({target: t.target, layer: parsed.layer ?? null, holders: alive, weight: alive.reduce((s, h) => s + this.member(h).weight, 0)});
        }
        const contributors = [...new Set(targets.flatMap((t) => t.holders))].sort();
        return {adapter: {...this.previous, tensors: this.previous.tensors.map((t) => out.get(t.name) ?? t)}, targets, contributors,
            layers: this.layerOutcomes(), ...(metrics ? {metrics} : {})};
    }
}

/**
 * One round of secure layerwise aggregation among `participants`, in one process: SecureClient and
 * SecureAggregationServer exchange exactly the messages a networked deployment would, and
 * `received` is every byte the server got. The new global keeps `previous` where a layer had fewer
 * than two holders or fewer than two surviving holders, and entirely when the round cannot be
 * unmasked (fewer than the threshold survivors).
 */
export function secureAggregateRound(previous: LoraAdapter, participants: SecureParticipant[], options: SecureRoundOptions): SecureRoundResult {
    const server = new SecureAggregationServer(previous, participants.map((p) => ({id: p.id, weight: p.weight, layerMap: p.layerMap})), options);
    const clients = [...participants].sort((a, b) => (a.id < b.id ? -1 : 1)).map((p) => new SecureClient(p, options.round, server.scaleBits));
    // 1. advertise keys; 2. share keys, routed (sealed) through the server
    for (const c of clients)
        server.advertise(c.advertise());
    const roster = server.roster();
    for (const c of clients)
        server.submitShares(c.id, c.shareKeys(roster, server.threshold));
    for (const c of clients)
        c.acceptShares(server.sharesFor(c.id));
    // 3. masked inputs; clients in dropAfterMasking go silent here
    const plan = server.plan();
    const dropped = clients.map((c) => c.id).filter((id) => options.dropAfterMasking?.includes(id));
    for (const c of clients)
        if (!dropped.includes(c.id))
            server.submitMasked(c.id, c.maskedInput(plan));
    const request = server.unmaskRequest();
    const unmasks = new Map<string, UnmaskShares>();
    const allTargets = new Set(previous.tensors.map((x) => parseLoraTensorName(x.name)!.target)).size;
    const report: SecureRoundReport = {clients: clients.map((c) => c.id), dropped: request.dropped, threshold: server.threshold,
        scaleBits: server.scaleBits, maskedTargets: plan.targets.length, keptTargets: allTargets, layers: [], bytesReceived: 0};
    const keep = (reason: string): SecureRoundResult => {
        report.aborted = reason;
        report.layers = server.layerOutcomes(reason);
        report.bytesReceived = server.received.reduce((s, b) => s + b.length, 0);
        return {adapter: previous, targets: [], contributors: [], report, received: server.received, unmasks};
    };
    if (request.survivors.length < server.threshold)
        return keep(`${request.survivors.length} client(s) sent masked input, fewer than the threshold ${server.threshold}`);
    // 4. unmasking shares from the survivors
    for (const c of clients.filter((x) => request.survivors.includes(x.id))) {
        try {
            const shares = c.unmaskShares(plan, request.survivors, request.dropped);
            unmasks.set(c.id, shares);
            server.submitUnmask(c.id, shares);
        } catch (err) {
            return keep((err as Error).message);
        }
    }
    const {layers, ...res} = server.result();
    report.layers = layers;
    report.keptTargets = allTargets - res.targets.length;
    report.bytesReceived = server.received.reduce((s, b) => s + b.length, 0);
    return {...res, report, received: server.received, unmasks};
}
