// Secure aggregation for PruFed's per-layer sums (after Bonawitz et al., CCS 2017), so the server
// learns each adapted matrix's weighted sum over its holders and never one client's update:
//   1. advertise: each client makes two X25519 key pairs (c: to encrypt shares, s: to agree masks);
//   2. share keys: each client Shamir-shares (threshold t) its s private key and a self-mask seed b
//      among the round's clients; each share travels through the server encrypted (AES-256-GCM under
//      a key agreed from the c keys), so the server sees only ciphertext;
//   3. masked input: for every matrix whose layer has ≥ 2 holders, client k sends
//        y_k = fix(p_k·x_k) + PRG(b_k) + Σ_{holders j ≠ k} ±PRG(s_kj)   (mod 2^32)
//      with p_k = w_k / Σ_holders w (weights pre-multiplied), fix(v) = round(v·2^scaleBits), the pair
//      masks + for k < j and - for k > j so they cancel in the sum; PRG = AES-256-CTR keyed by
//      HKDF-SHA256(seed, round, matrix). A matrix with one holder is not sent (its sum would be it);
//   4. unmask: for each client that sent y, the survivors give shares of its b; for each that
//      dropped after step 2, shares of its s key, so the server recomputes the dropped client's pair
//      masks in the survivors' inputs. Clients refuse to unmask when a matrix would be left with one
//      surviving holder (the "sum" would be that client's update): the round is then not aggregated.
// The sum mod 2^32 decodes to Σ_survivors p_k x_k; divided by Σ_survivors p_k it is layerwise's mean.
import {createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes,
    type KeyObject} from "node:crypto";
import type {LoraAdapter, LoraTensor} from "../../train/adapter.js";
import {parseLoraTensorName} from "./align.js";
import type {TargetAggregation} from "./aggregate.js";
import {bytesToField, combineShares, fieldToBytes, splitSecret, type Share} from "./shamir.js";

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
    /** "fedavg" additionally refuses clients of different depths. */
    method?: "layerwise" | "fedavg";
}

export interface SecureRoundReport {
    clients: string[];
    dropped: string[];
    threshold: number;
    scaleBits: number;
    /** Matrices summed under masks, and those kept (fewer than two holders). */
    maskedTargets: number;
    keptTargets: number;
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
}

interface Advert {
    id: string;
    /** x coordinate of this client's shares (1-based position in the roster). */
    x: number;
    cPub: Buffer;
    sPub: Buffer;
}

interface SharedBox {
    from: string;
    to: string;
    box: Buffer;
}

/** Per matrix (target) the holders among the clients that shared keys, and their normalised weights. */
interface MaskPlan {
    targets: {target: string; holders: string[]; p: Map<string, number>}[];
}

const rawPublic = (k: KeyObject) => Buffer.from(k.export({format: "jwk"}).x!, "base64url");
const publicFromRaw = (raw: Buffer) => createPublicKey({key: {kty: "OKP", crv: "X25519", x: raw.toString("base64url")}, format: "jwk"});
const rawPrivate = (k: KeyObject) => Buffer.from(k.export({format: "jwk"}).d!, "base64url");
const privateFromRaw = (raw: Buffer, pub: Buffer) => createPrivateKey({key: {kty: "OKP", crv: "X25519", d: raw.toString("base64url"),
    x: pub.toString("base64url")}, format: "jwk"});

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

/** fix(v) = round(v·2^bits) as a uint32 lane (two's complement); refuses values beyond the range. */
export function toFixedPoint(values: Float32Array | Float64Array, factor: number, bits: number, tensor: string): Uint32Array {
    const scale = 2 ** bits, limit = 2 ** 31 - 1;
    const out = new Uint32Array(values.length);
    for (let i = 0; i < values.length; i++) {
        const q = Math.round(factor * values[i] * scale);
        if (!(Math.abs(q) <= limit))
            throw new RangeError(`${tensor}[${i}]: ${factor * values[i]} is beyond the fixed-point range ±${limit / scale} (fewer scaleBits would fit it)`);
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

/** One client of the protocol: holds its keys, its update and the shares others gave it. */
export class SecureClient {
    private readonly c = generateKeyPairSync("x25519");
    private readonly s = generateKeyPairSync("x25519");
    private readonly b = randomBytes(32);
    private readonly held = new Map<string, {s: Share; b: Share}>();
    private roster: Advert[] = [];
    /** Mask seeds agreed with each other client (X25519 of the s keys), computed once per round. */
    private readonly pairSeeds = new Map<string, Buffer>();

    constructor(readonly participant: SecureParticipant, readonly round: number, readonly scaleBits: number) {}

    get id(): string { return this.participant.id; }

    advertise(x: number): Advert {
        return {id: this.id, x, cPub: rawPublic(this.c.publicKey), sPub: rawPublic(this.s.publicKey)};
    }

    /** Shares of its s key and b seed for every other client, each sealed for its recipient. */
    shareKeys(roster: Advert[], threshold: number): SharedBox[] {
        this.roster = roster;
        const sShares = splitSecret(bytesToField(rawPrivate(this.s.privateKey)), roster.length, threshold);
        const bShares = splitSecret(bytesToField(this.b), roster.length, threshold);
        const me = roster.find((a) => a.id === this.id)!;
        this.held.set(this.id, {s: sShares[me.x - 1], b: bShares[me.x - 1]});
        return roster.filter((a) => a.id !== this.id).map((a) => {
            const plain = Buffer.from(JSON.stringify({from: this.id, to: a.id, round: this.round,
                s: {x: a.x, y: sShares[a.x - 1].y.toString(16)}, b: {x: a.x, y: bShares[a.x - 1].y.toString(16)}}));
            return {from: this.id, to: a.id, box: seal(shareKey(agree(this.c.privateKey, a.cPub), this.id, a.id), plain)};
        });
    }

    acceptShares(boxes: SharedBox[]): void {
        for (const m of boxes) {
            const sender = this.roster.find((a) => a.id === m.from);
            if (!sender || m.to !== this.id)
                throw new Error(`client ${this.id}: a share box from ${m.from} to ${m.to} is not for it`);
            const msg = JSON.parse(open(shareKey(agree(this.c.privateKey, sender.cPub), m.from, this.id), m.box).toString()) as
                {from: string; to: string; round: number; s: {x: number; y: string}; b: {x: number; y: string}};
            if (msg.from !== m.from || msg.to !== this.id || msg.round !== this.round)
                throw new Error(`client ${this.id}: a share box's contents do not match its envelope`);
            this.held.set(m.from, {s: {x: msg.s.x, y: BigInt("0x" + msg.s.y)}, b: {x: msg.b.x, y: BigInt("0x" + msg.b.y)}});
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
                const y = toFixedPoint(t.data, p, this.scaleBits, name);
                addInto(y, maskStream(this.b, this.round, name, y.length), 1);
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

    /** Shares the server needs: b of the clients that sent input, s keys of those that dropped. */
    unmaskShares(plan: MaskPlan, survivors: string[], dropped: string[]): {b: {id: string; share: Share}[]; s: {id: string; share: Share}[]} {
        const alive = new Set(survivors);
        for (const t of plan.targets) {
            const left = t.holders.filter((h) => alive.has(h)).length;
            if (left === 1)
                throw new Error(`client ${this.id} refuses to unmask: ${t.target} would be left with one surviving holder, whose update the sum would reveal`);
        }
        const overlap = survivors.filter((x) => dropped.includes(x));
        if (overlap.length)
            throw new Error(`client ${this.id} refuses to unmask: ${overlap.join(", ")} listed as both alive and dropped`);
        return {
            b: survivors.filter((id) => this.held.has(id)).map((id) => ({id, share: this.held.get(id)!.b})),
            s: dropped.filter((id) => this.held.has(id)).map((id) => ({id, share: this.held.get(id)!.s})),
        };
    }
}

function shareBytes(r: {b: {id: string; share: Share}[]; s: {id: string; share: Share}[]}): Buffer {
    return Buffer.from(JSON.stringify({b: r.b.map((x) => [x.id, x.share.x, x.share.y.toString(16)]), s: r.s.map((x) => [x.id, x.share.x, x.share.y.toString(16)])}));
}

/**
 * One round of secure layerwise aggregation among `participants`, in one process: the clients and
 * the server exchange exactly the messages a networked deployment would, and `received` records
 * every byte the server got. The new global keeps `previous` where a matrix had fewer than two holders.
 */
export function secureAggregateRound(previous: LoraAdapter, participants: SecureParticipant[], options: SecureRoundOptions): SecureRoundResult {
    const n = participants.length;
    const scaleBits = options.scaleBits ?? 20;
    if (!Number.isInteger(scaleBits) || scaleBits < 1 || scaleBits > 30)
        throw new RangeError(`scaleBits must be an integer in [1, 30] (got ${scaleBits})`);
    const threshold = options.threshold ?? Math.max(Math.min(2, n), Math.floor(n / 2) + 1);
    if (!Number.isInteger(threshold) || threshold < 1 || threshold > n)
        throw new RangeError(`threshold must be in [1, ${n}] (got ${threshold})`);
    if (options.method === "fedavg" && new Set(participants.map((p) => p.layerMap.join(","))).size > 1)
        throw new Error("fedavg is the homogeneous baseline: the round's clients hold different layers; use layerwise");
    const received: Buffer[] = [];
    const clients = [...participants].sort((a, b) => (a.id < b.id ? -1 : 1)).map((p) => new SecureClient(p, options.round, scaleBits));

    // 1. advertise keys
    const roster = clients.map((c, i) => c.advertise(i + 1));
    for (const a of roster)
        received.push(Buffer.concat([Buffer.from(a.id), a.cPub, a.sPub]));
    // 2. share keys, routed (sealed) through the server
    const boxes = clients.flatMap((c) => c.shareKeys(roster, threshold));
    for (const b of boxes)
        received.push(b.box);
    for (const c of clients)
        c.acceptShares(boxes.filter((b) => b.to === c.id));

    // the plan: per matrix, the holders and their normalised weights
    const weight = new Map(participants.map((p) => [p.id, p.weight]));
    const holdersOf = new Map<string, string[]>();
    for (const p of participants)
        for (const t of p.adapter.tensors) {
            const parsed = parseLoraTensorName(t.name);
            if (parsed?.part !== "a")
                continue;
            holdersOf.set(parsed.target, [...(holdersOf.get(parsed.target) ?? []), p.id]);
        }
    const plan: MaskPlan = {targets: []};
    for (const [target, holders] of holdersOf) {
        if (holders.length < 2)
            continue;
        const total = holders.reduce((s, h) => s + weight.get(h)!, 0);
        plan.targets.push({target, holders: holders.sort(), p: new Map(holders.map((h) => [h, weight.get(h)! / total]))});
    }

    // 3. masked inputs; clients in dropAfterMasking go silent here
    const dropped = clients.map((c) => c.id).filter((id) => options.dropAfterMasking?.includes(id));
    const inputs = new Map<string, Map<string, Uint32Array>>();
    for (const c of clients) {
        if (dropped.includes(c.id))
            continue;
        const y = c.maskedInput(plan);
        inputs.set(c.id, y);
        for (const v of y.values())
            received.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    }
    const survivors = [...inputs.keys()];
    const report: SecureRoundReport = {clients: clients.map((c) => c.id), dropped, threshold, scaleBits, maskedTargets: plan.targets.length,
        keptTargets: 0, bytesReceived: 0};
    const keep = (reason: string): SecureRoundResult => {
        report.aborted = reason;
        report.bytesReceived = received.reduce((s, b) => s + b.length, 0);
        return {adapter: previous, targets: [], contributors: [], report, received};
    };
    if (survivors.length < threshold)
        return keep(`${survivors.length} client(s) sent masked input, fewer than the threshold ${threshold}`);

    // 4. unmasking shares from the survivors
    const bShares = new Map<string, Share[]>(), sShares = new Map<string, Share[]>();
    for (const c of clients.filter((x) => survivors.includes(x.id))) {
        let r;
        try {
            r = c.unmaskShares(plan, survivors, dropped);
        } catch (err) {
            return keep((err as Error).message);
        }
        received.push(shareBytes(r));
        for (const x of r.b)
            bShares.set(x.id, [...(bShares.get(x.id) ?? []), x.share]);
        for (const x of r.s)
            sShares.set(x.id, [...(sShares.get(x.id) ?? []), x.share]);
    }
    const bSeed = new Map(survivors.map((id) => [id, fieldToBytes(combineShares(bShares.get(id) ?? [], threshold), 32)]));
    const sKey = new Map(dropped.map((id) => {
        const adv = roster.find((a) => a.id === id)!;
        return [id, privateFromRaw(fieldToBytes(combineShares(sShares.get(id) ?? [], threshold), 32), adv.sPub)];
    }));

    // the server's sums, unmasked and decoded
    const pairSeeds = new Map<string, Buffer>();
    const droppedPairSeed = (k: string, j: string): Buffer => {
        let seed = pairSeeds.get(`${k}|${j}`);
        if (!seed) {
            seed = diffieHellman({privateKey: sKey.get(k)!, publicKey: publicFromRaw(roster.find((a) => a.id === j)!.sPub)});
            pairSeeds.set(`${k}|${j}`, seed);
        }
        return seed;
    };
    const prevByName = new Map(previous.tensors.map((t) => [t.name, t]));
    const out = new Map<string, LoraTensor>();
    const targets: TargetAggregation[] = [];
    for (const t of plan.targets) {
        const alive = t.holders.filter((h) => survivors.includes(h));
        const gone = t.holders.filter((h) => dropped.includes(h));
        const pSum = alive.reduce((s, h) => s + t.p.get(h)!, 0);
        for (const part of ["a", "b"]) {
            const name = `${t.target}.lora_${part}`;
            const prev = prevByName.get(name);
            if (!prev)
                throw new Error(`global adapter: no tensor ${name}`);
            const acc = new Uint32Array(prev.data.length);
            for (const h of alive) {
                const y = inputs.get(h)!.get(name)!;
                if (y.length !== acc.length)
                    throw new Error(`client ${h}: masked ${name} has ${y.length} values, expected ${acc.length}`);
                addInto(acc, y, 1);
                addInto(acc, maskStream(bSeed.get(h)!, options.round, name, acc.length), -1);
            }
            for (const k of gone)
                for (const j of alive) {
                    // j added +PRG(s_jk) when j < k, -PRG otherwise: remove it
                    addInto(acc, maskStream(droppedPairSeed(k, j), options.round, name, acc.length), j < k ? -1 : 1);
                }
            const data = new Float32Array(acc.length);
            const scale = 2 ** scaleBits;
            for (let i = 0; i < acc.length; i++)
                data[i] = (acc[i] | 0) / scale / pSum;
            out.set(name, {name, shape: prev.shape, data});
        }
        const parsed = parseLoraTensorName(`${t.target}.lora_a`)!;
        targets.push({target: t.target, layer: parsed.layer ?? null, holders: alive, weight: alive.reduce((s, h) => s + weight.get(h)!, 0)});
    }
    report.keptTargets = [...new Set(previous.tensors.map((x) => parseLoraTensorName(x.name)!.target))].length - plan.targets.length;
    report.bytesReceived = received.reduce((s, b) => s + b.length, 0);
    const contributors = survivors.filter((id) => plan.targets.some((t) => t.holders.includes(id)));
    return {adapter: {...previous, tensors: previous.tensors.map((t) => out.get(t.name) ?? t)}, targets, contributors, report, received};
}
