// Secure aggregation: the server's view (every byte it receives) never contains a client's update,
// and the unmasked per-layer sums equal the plain layerwise aggregate within fixed-point error, with
// and without dropouts after masking. Shamir sharing is checked on its own.
import {createPrivateKey, createPublicKey, diffieHellman} from "node:crypto";
import test from "ava";
import type {LoraAdapter} from "../../../ts/train/adapter.js";
import {Random} from "../../../ts/random.js";
import {aggregate, initialGlobal} from "../../../ts/federated/prufed/aggregate.js";
import type {AdapterLayout} from "../../../ts/federated/prufed/align.js";
import {maskStream, secureAggregateRound, toFixedPoint, type SecureParticipant} from "../../../ts/federated/prufed/secure.js";
import {combineShares, fieldToBytes, shamirPrime, splitSecret, type Share} from "../../../ts/federated/prufed/shamir.js";

const modules = [{rest: "attn_q.weight", nIn: 16, nOut: 16}, {rest: "ffn_up.weight", nIn: 16, nOut: 24}];
const layout: AdapterLayout = {
    architecture: "llama", layers: 4,
    targets: [...Array.from({length: 4}, (_, l) => modules.map((m) => ({name: `blk.${l}.${m.rest}`, layer: l as number | undefined, rest: m.rest,
        nIn: m.nIn, nOut: m.nOut}))).flat(),
    // one matrix outside any layer, held by every client: its own self-mask seed (group null)
    {name: "output.weight", layer: undefined, rest: "output.weight", nIn: 16, nOut: 8}],
};

/** A participant's adapter in base numbering with values uniform in ±0.5. */
function participant(id: string, layerMap: number[], weight: number, seed: number): SecureParticipant {
    const rng = new Random(seed);
    const tensors = [...layerMap.map((l) => modules.map((m) => ({name: `blk.${l}.${m.rest}`, ...m}))).flat(), {name: "output.weight", nIn: 16, nOut: 8}]
        .flatMap((m) => [
            {name: `${m.name}.lora_a`, shape: [m.nIn, 4] as [number, number], data: Float32Array.from({length: m.nIn * 4}, () => rng.nextDouble() - 0.5)},
            {name: `${m.name}.lora_b`, shape: [4, m.nOut] as [number, number], data: Float32Array.from({length: 4 * m.nOut}, () => rng.nextDouble() - 0.5)},
        ]);
    const adapter: LoraAdapter = {architecture: "llama", alpha: 8, r: 4, tensors};
    return {id, weight, layerMap, adapter};
}

const people = () => [
    participant("a-full", [0, 1, 2, 3], 40, 1),
    participant("b-three", [0, 1, 2], 25, 2),
    participant("c-two", [0, 1], 10, 3),
    participant("d-three", [0, 1, 2], 30, 4),
    participant("e-alt", [0, 2], 15, 5),
];

/** Fails when any 16-byte window of a client's plain encodings (fixed-point or float32) occurs in the server's bytes. */
function assertNoPlainUpdate(t: import("ava").ExecutionContext, received: Buffer[], ps: SecureParticipant[], holdersOf: (target: string) => SecureParticipant[]): void {
    const haystack = Buffer.concat(received);
    let windows = 0;
    for (const p of ps) {
        for (const tensor of p.adapter.tensors) {
            const target = tensor.name.replace(/\.lora_[ab]$/, "");
            const holders = holdersOf(target);
            const total = holders.reduce((s, h) => s + h.weight, 0);
            const fixed = toFixedPoint(tensor.data, p.weight / total, 20, tensor.name);
            for (const plain of [Buffer.from(fixed.buffer), Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength)]) {
                for (let off = 0; off + 16 <= plain.length; off += 16) {
                    windows++;
                    if (haystack.indexOf(plain.subarray(off, off + 16)) >= 0)
                        return void t.fail(`${p.id} ${tensor.name}: bytes ${off}..${off + 16} of its plain update reached the server`);
                }
            }
        }
    }
    t.true(windows > 100, `${windows} windows searched`);
}

function compareToPlain(t: import("ava").ExecutionContext, got: LoraAdapter, want: LoraAdapter, clients: number, skip: Set<string> = new Set()): void {
    let worst = 0;
    for (const w of want.tensors) {
        if (skip.has(w.name))
            continue;
        const g = got.tensors.find((x) => x.name === w.name)!;
        w.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(g.data[i] - v))));
    }
    // each client's p_k·x_k is rounded to 2^-21 at most; the sum of n over the weight share ≥ min p
    t.true(worst <= clients * 2 ** -20 + 1e-6, `max |secure - plain| = ${worst}`);
    t.true(worst > 0 || clients === 0, "fixed point rounds somewhere (the comparison is not vacuous)");
}

test("masked sums equal the plain layerwise aggregate and the server never sees an update", (t) => {
    const ps = people();
    const previous = initialGlobal(layout, "layerwise", 4, 8, 9);
    const res = secureAggregateRound(previous, ps, {round: 1});
    t.is(res.report.aborted, undefined);
    const plain = aggregate(previous, ps.map((p) => ({client: p.id, weight: p.weight, layerMap: p.layerMap, adapter: p.adapter})), {method: "layerwise"});
    // base layer 3 is held by a-full alone: it is never sent (its "sum" would be the update) and keeps its value
    const only = new Set(previous.tensors.filter((x) => x.name.startsWith("blk.3.")).map((x) => x.name));
    for (const name of only)
        t.deepEqual(res.adapter.tensors.find((x) => x.name === name)!.data, previous.tensors.find((x) => x.name === name)!.data);
    compareToPlain(t, res.adapter, plain.adapter, ps.length, only);
    assertNoPlainUpdate(t, res.received, ps, (target) => ps.filter((p) => p.adapter.tensors.some((x) => x.name === `${target}.lora_a`)));
    t.is(res.report.maskedTargets, 3 * modules.length + 1);
    t.is(res.report.keptTargets, modules.length);
    t.deepEqual(res.contributors.sort(), ps.map((p) => p.id).sort());
});

test("clients that drop after masking are recovered from Shamir shares; the sum is over the survivors", (t) => {
    const ps = people();
    const previous = initialGlobal(layout, "layerwise", 4, 8, 10);
    const res = secureAggregateRound(previous, ps, {round: 2, threshold: 3, dropAfterMasking: ["d-three", "e-alt"]});
    t.is(res.report.aborted, undefined);
    t.deepEqual(res.report.dropped, ["d-three", "e-alt"]);
    const survivors = ps.filter((p) => !["d-three", "e-alt"].includes(p.id));
    const plain = aggregate(previous, survivors.map((p) => ({client: p.id, weight: p.weight, layerMap: p.layerMap, adapter: p.adapter})), {method: "layerwise"});
    const only = new Set(previous.tensors.filter((x) => x.name.startsWith("blk.3.")).map((x) => x.name));
    compareToPlain(t, res.adapter, plain.adapter, survivors.length, only);
    // base layer 2: a-full and b-three survive, d-three and e-alt dropped: their masks are removed
    t.deepEqual(res.targets.find((x) => x.target === "blk.2.attn_q.weight")!.holders, ["a-full", "b-three"]);
    assertNoPlainUpdate(t, res.received, ps, (target) => ps.filter((p) => p.adapter.tensors.some((x) => x.name === `${target}.lora_a`)));
});

test("a layer left with one surviving holder keeps its value and its holder's seed; the other layers are aggregated", (t) => {
    const ps = people();
    const previous = initialGlobal(layout, "layerwise", 4, 8, 11);
    // base layer 2 held by a-full, b-three, d-three, e-alt: drop three of them -> a-full alone; layers 0, 1 keep a-full and c-two
    const gone = ["b-three", "d-three", "e-alt"];
    const lone = secureAggregateRound(previous, ps, {round: 3, threshold: 2, dropAfterMasking: gone});
    t.is(lone.report.aborted, undefined);
    const survivors = ps.filter((p) => !gone.includes(p.id));
    t.deepEqual(lone.contributors, ["a-full", "c-two"]);
    // layers 0 and 1 equal the plain layerwise aggregate over the contributors; layers 2 (one survivor) and 3 (one holder) are kept bit for bit
    const plain = aggregate(previous, survivors.map((p) => ({client: p.id, weight: p.weight, layerMap: p.layerMap, adapter: p.adapter})), {method: "layerwise"});
    const kept = new Set(previous.tensors.filter((x) => /^blk\.[23]\./.test(x.name)).map((x) => x.name));
    for (const name of kept)
        t.deepEqual(lone.adapter.tensors.find((x) => x.name === name)!.data, previous.tensors.find((x) => x.name === name)!.data, name);
    compareToPlain(t, lone.adapter, plain.adapter, survivors.length, kept);
    t.deepEqual(lone.targets.map((x) => x.target).sort(), previous.tensors.filter((x) => /^(blk\.[01]\.|output).*lora_a$/.test(x.name))
        .map((x) => x.name.replace(/\.lora_a$/, "")).sort());
    t.is(lone.report.maskedTargets, 3 * modules.length + 1);
    t.is(lone.report.keptTargets, 2 * modules.length);
    const byLayer = new Map(lone.report.layers.map((l) => [l.layer, l]));
    t.like(byLayer.get(null), {summed: true, targets: ["output.weight"], survivors: ["a-full", "c-two"]});
    t.like(byLayer.get(0), {summed: true, survivors: ["a-full", "c-two"]});
    t.like(byLayer.get(1), {summed: true, survivors: ["a-full", "c-two"]});
    t.like(byLayer.get(2), {summed: false, holders: ["a-full", "b-three", "d-three", "e-alt"], survivors: ["a-full"]});
    t.regex(byLayer.get(2)!.reason!, /one surviving holder \(a-full\)/);
    t.like(byLayer.get(3), {summed: false, holders: ["a-full"]});
    t.regex(byLayer.get(3)!.reason!, /1 holder\(s\)/);
    // the unmasking messages: seeds of the survivors for layers 0, 1 and the non-layer matrix only, never a-full's layer-2 seed;
    // keys of the three dropped
    t.deepEqual([...lone.unmasks.keys()].sort(), ["a-full", "c-two"]);
    for (const [from, u] of lone.unmasks) {
        t.deepEqual(u.b.map((x) => `${x.id}:${x.layer}`).sort(), ["a-full:0", "a-full:1", "a-full:null", "c-two:0", "c-two:1", "c-two:null"], from);
        t.deepEqual(u.s.map((x) => x.id).sort(), gone, from);
    }
    assertNoPlainUpdate(t, lone.received, ps, (target) => ps.filter((p) => p.adapter.tensors.some((x) => x.name === `${target}.lora_a`)));
    // below the threshold the round is not aggregated at all
    const few = secureAggregateRound(previous, ps, {round: 4, threshold: 4, dropAfterMasking: ["c-two", "e-alt"]});
    t.regex(few.report.aborted ?? "", /fewer than the threshold 4/);
    t.is(few.adapter, previous);
    t.true(few.report.layers.every((l) => !l.summed && /round not unmasked/.test(l.reason!)));
});

test("the server refuses a self-mask share of a layer with one surviving holder, and without it cannot read that holder's update", async (t) => {
    const {SecureAggregationServer, SecureClient} = await import("../../../ts/federated/prufed/secure.js");
    const ps = people().slice(0, 3); // a-full [0..3], b-three [0, 1, 2], c-two [0, 1]
    const previous = initialGlobal(layout, "layerwise", 4, 8, 13);
    const server = new SecureAggregationServer(previous, ps.map((p) => ({id: p.id, weight: p.weight, layerMap: p.layerMap})), {round: 6, threshold: 2});
    const clients = ps.map((p) => new SecureClient(p, 6, server.scaleBits));
    for (const c of clients)
        server.advertise(c.advertise());
    for (const c of clients)
        server.submitShares(c.id, c.shareKeys(server.roster(), server.threshold));
    for (const c of clients)
        c.acceptShares(server.sharesFor(c.id));
    const plan = server.plan();
    // b-three drops: layer 2 is left with a-full alone
    for (const c of [clients[0], clients[2]])
        server.submitMasked(c.id, c.maskedInput(plan));
    const {survivors, dropped} = server.unmaskRequest();
    t.deepEqual(dropped, ["b-three"]);
    const honest = clients[2].unmaskShares(plan, survivors, dropped);
    t.false(honest.b.some((x) => x.layer === 2), "an honest client never releases a layer-2 seed share");
    // a client that would release a-full's layer-2 seed share (here: a copy of its layer-0 share relabelled) is refused
    const leak = {...honest, b: [...honest.b, {...honest.b.find((x) => x.id === "a-full")!, layer: 2}]};
    t.throws(() => server.submitUnmask("c-two", leak), {message: /a-full for layer 2/});
    const fromA = clients[0].unmaskShares(plan, survivors, dropped);
    server.submitUnmask("c-two", honest);
    server.submitUnmask("a-full", fromA);
    const res = server.result();
    t.deepEqual(res.layers.map((l) => [l.layer, l.summed]), [[null, true], [0, true], [1, true], [2, false], [3, false]]);

    // A curious server with everything it was given: b-three's key from the two answers gives the pair mask a-full put on
    // its layer-2 input; removing it leaves fix(p·x) + PRG(b_{a,2}), nothing like a-full's update. Positive control: had
    // the two survivors released their shares of a-full's layer-2 seed (read here from their private state, as a leaking
    // client would), the same server would read a-full's update exactly; so a lone survivor's seed must stay secret.
    const name = "blk.2.attn_q.weight.lora_a";
    const masked = clients[0].maskedInput(plan).get(name)!;
    const roster = server.roster();
    const x25519 = (d: Buffer, x: Buffer) => createPrivateKey({key: {kty: "OKP", crv: "X25519", d: d.toString("base64url"), x: x.toString("base64url")}, format: "jwk"});
    const pubOf = (id: string) => createPublicKey({key: {kty: "OKP", crv: "X25519", x: roster.find((a) => a.id === id)!.sPub.toString("base64url")}, format: "jwk"});
    const sB = fieldToBytes(combineShares([...honest.s, ...fromA.s].filter((x) => x.id === "b-three").map((x) => x.share), 2), 32);
    const pair = diffieHellman({privateKey: x25519(sB, roster.find((a) => a.id === "b-three")!.sPub), publicKey: pubOf("a-full")});
    const peeled = Uint32Array.from(masked);
    const stream = maskStream(pair, 6, name, peeled.length);
    for (let i = 0; i < peeled.length; i++)
        peeled[i] = (peeled[i] - stream[i]) >>> 0; // a-full < b-three: it added the pair mask
    const p = plan.targets.find((x) => x.target === "blk.2.attn_q.weight")!.p.get("a-full")!;
    const plainA = toFixedPoint(ps[0].adapter.tensors.find((x) => x.name === name)!.data, p, 20, name);
    const equal = peeled.filter((v, i) => v === plainA[i]).length;
    t.true(equal <= 2, `${equal} of ${peeled.length} lanes equal a-full's update after removing the pair mask`);
    type Held = {held: Map<string, {b: Map<number | null, Share>}>};
    const leaked = [clients[0], clients[2]].map((c) => (c as unknown as Held).held.get("a-full")!.b.get(2)!);
    const seed = fieldToBytes(combineShares(leaked, 2), 32);
    const self = maskStream(seed, 6, name, peeled.length);
    t.deepEqual(peeled.map((v, i) => (v - self[i]) >>> 0), plainA, "with the seed leaked, the update is read exactly");
});

test("Shamir: any t shares give the secret back, t-1 do not", (t) => {
    const secret = 0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdefn;
    const shares = splitSecret(secret, 6, 4);
    t.is(combineShares([shares[5], shares[0], shares[3], shares[2]], 4), secret);
    t.is(combineShares(shares.slice(1, 5), 4), secret);
    t.throws(() => combineShares(shares.slice(0, 3), 4), {message: /fewer than the threshold/});
    // interpolating only 3 points as if the threshold were 3 gives an unrelated value
    t.not(combineShares(shares.slice(0, 3), 3), secret);
    t.true(shares.every((s) => s.y >= 0n && s.y < shamirPrime));
});

test("the server state machine refuses out-of-order and malformed messages", async (t) => {
    const {SecureAggregationServer, SecureClient} = await import("../../../ts/federated/prufed/secure.js");
    const ps = people().slice(0, 3);
    const previous = initialGlobal(layout, "layerwise", 4, 8, 12);
    const server = new SecureAggregationServer(previous, ps.map((p) => ({id: p.id, weight: p.weight, layerMap: p.layerMap})), {round: 5, threshold: 2});
    const clients = ps.map((p) => new SecureClient(p, 5, server.scaleBits));
    t.throws(() => server.advertise({...clients[0].advertise(), id: "stranger"}), {message: /not in this secure round/});
    for (const c of clients)
        server.advertise(c.advertise());
    const roster = server.roster();
    t.deepEqual(roster.map((a) => a.x), [1, 2, 3]);
    t.throws(() => server.advertise(clients[0].advertise()), {message: /after the roster was fixed/});
    for (const c of clients)
        server.submitShares(c.id, c.shareKeys(roster, server.threshold));
    for (const c of clients)
        c.acceptShares(server.sharesFor(c.id));
    const plan = server.plan();
    const partial = clients[0].maskedInput(plan);
    partial.delete([...partial.keys()][0]);
    t.throws(() => server.submitMasked(clients[0].id, partial), {message: /missing or not/});
    for (const c of clients)
        server.submitMasked(c.id, c.maskedInput(plan));
    t.throws(() => server.result(), {message: /fewer than the threshold 2/});
    const {survivors, dropped} = server.unmaskRequest();
    t.deepEqual(dropped, []);
    t.throws(() => server.submitMasked(clients[0].id, clients[0].maskedInput(plan)), {message: /too late/});
    for (const c of clients)
        server.submitUnmask(c.id, c.unmaskShares(plan, survivors, dropped));
    const res = server.result();
    const plain = aggregate(previous, ps.map((p) => ({client: p.id, weight: p.weight, layerMap: p.layerMap, adapter: p.adapter})), {method: "layerwise"});
    const only = new Set(previous.tensors.filter((x) => x.name.startsWith("blk.3.")).map((x) => x.name));
    compareToPlain(t, res.adapter, plain.adapter, ps.length, only);
});
