// SecureRoundHost in one process: phases advance on quorum and on deadlines, and a host rebuilt
// from its journal (with a line torn by a kill at its end) carries the round to the same result,
// which equals the plain layerwise aggregate within fixed-point error.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import type {LoraAdapter} from "../../../ts/train/adapter.js";
import {Random} from "../../../ts/random.js";
import {aggregate, initialGlobal} from "../../../ts/federated/prufed/aggregate.js";
import type {AdapterLayout} from "../../../ts/federated/prufed/align.js";
import {SecureClient, type MaskPlan, type SecureParticipant} from "../../../ts/federated/prufed/secure.js";
import {SecureRoundHost} from "../../../ts/federated/prufed/secure-host.js";
import {unmaskToWire} from "../../../ts/federated/prufed/http-protocol.js";
import {tempDir} from "../../helpers.js";

const modules = [{rest: "attn_q.weight", nIn: 16, nOut: 16}, {rest: "ffn_up.weight", nIn: 16, nOut: 24}];
const layout: AdapterLayout = {
    architecture: "llama", layers: 3,
    targets: Array.from({length: 3}, (_, l) => modules.map((m) => ({name: `blk.${l}.${m.rest}`, layer: l, rest: m.rest, nIn: m.nIn, nOut: m.nOut}))).flat(),
};

function participant(id: string, layerMap: number[], weight: number, seed: number): SecureParticipant {
    const rng = new Random(seed);
    const tensors = layerMap.flatMap((l) => modules.flatMap((m) => [
        {name: `blk.${l}.${m.rest}.lora_a`, shape: [m.nIn, 4] as [number, number], data: Float32Array.from({length: m.nIn * 4}, () => rng.nextDouble() - 0.5)},
        {name: `blk.${l}.${m.rest}.lora_b`, shape: [4, m.nOut] as [number, number], data: Float32Array.from({length: 4 * m.nOut}, () => rng.nextDouble() - 0.5)},
    ]));
    return {id, weight, layerMap, adapter: {architecture: "llama", alpha: 8, r: 4, tensors} as LoraAdapter};
}

test("a host rebuilt from its journal (torn last line cut) finishes the round; a silent client is dropped at the phase deadline", async (t) => {
    const dir = tempDir(t);
    const ps = [participant("a", [0, 1, 2], 30, 1), participant("b", [0, 1], 20, 2), participant("c", [0, 1], 10, 3), participant("d", [0, 1, 2], 15, 4)];
    const previous = initialGlobal(layout, "layerwise", 4, 8, 7);
    const members = ps.map((p) => ({id: p.id, layerMap: p.layerMap, weight: p.weight, r: 4, loraAlpha: 8}));
    let now = 1_000_000;
    const open = () => SecureRoundHost.open({dataDir: dir, round: 3, sampled: ps.map((p) => p.id), previous, members, keysDeadline: now + 10_000,
        phaseTimeoutMs: 5_000, method: "layerwise", now});
    let host = await open();
    const clients = ps.map((p) => new SecureClient(p, 3, host.scaleBits));
    for (const c of clients) {
        const k = c.advertise();
        await host.advertise(c.id, k.cPub, k.sPub, now);
    }
    t.is(host.phase, "keys");
    t.deepEqual((await host.advance(now)).events.map((e) => e.event === "secagg_phase" && e.phase), ["shares"]);
    const roster = host.rosterView("a")!.roster.map((a) => ({id: a.id, x: a.x, cPub: Buffer.from(a.c_pub, "base64"), sPub: Buffer.from(a.s_pub, "base64")}));
    for (const c of clients)
        await host.submitShares(c.id, c.shareKeys(roster, host.threshold), now);
    await host.advance(now);
    t.is(host.phase, "masked");
    const plan = (id: string): MaskPlan => ({targets: host.sharesView(id)!.targets.map((x) => ({target: x.target, holders: x.holders,
        p: new Map(x.holders.map((h, i) => [h, x.p[i]]))}))});
    for (const c of clients)
        c.acceptShares(host.sharesView(c.id)!.boxes.map((b) => ({from: b.from, to: c.id, box: Buffer.from(b.box, "base64")})));
    const body = (c: SecureClient) => {
        const m = c.maskedInput(plan(c.id));
        return Buffer.concat(host.maskedLayout(c.id).map(({name}) => Buffer.from(m.get(name)!.buffer)));
    };
    // a and b send masked input; the server is killed while writing the next journal line
    for (const c of clients.slice(0, 2))
        await host.submitMasked(c.id, body(c), {accuracy: 0.5}, now);
    const journal = path.join(host.dir, "journal.jsonl");
    fs.appendFileSync(journal, '{"op":"masked","id":"c","fi');
    now += 60_000; // it was down for a minute
    host = await open();
    t.is(host.phase, "masked", "the journal brings the round back to its masked phase");
    t.true(host.phaseDeadline >= now + 5_000, "a restarted phase gets its full timeout again");
    t.true(fs.readFileSync(journal, "utf8").endsWith("\n"), "the torn line is cut off");
    await t.throwsAsync(host.submitMasked("c", Buffer.alloc(12), {}, now), {message: /must be \d+ bytes/});
    await host.submitMasked("c", body(clients[2]), {accuracy: 0.25}, now);
    // a retry of an accepted message is accepted again
    await host.submitMasked("a", body(clients[0]), {accuracy: 0.5}, now);
    // d stays silent: the masked phase ends at its deadline, d is dropped
    t.is((await host.advance(now + 1_000)).outcome, undefined);
    t.is(host.phase, "masked");
    await host.advance(now + 6_000);
    t.is(host.phase, "unmask");
    const req = host.unmaskView("a")!;
    t.deepEqual(req, {survivors: ["a", "b", "c"], dropped: ["d"]});
    await t.throwsAsync(host.submitMasked("d", body(clients[3]), {}, now + 6_000), {message: /masked phase is over/});
    // layer 2 (a and d) is left with a alone: no client releases a's layer-2 seed, and the host refuses a share of it
    const answers = clients.slice(0, 3).map((c) => unmaskToWire(c.unmaskShares(plan(c.id), req.survivors, req.dropped)));
    t.false(answers.some((w) => w.b.some((x) => x.layer === 2)));
    const forged = answers[1].b.find((x) => x.id === "a")!;
    await t.throwsAsync(host.submitUnmask("b", [...answers[1].b, {...forged, layer: 2}], answers[1].s, now + 6_000),
        {message: /a self-mask share of a for layer 2/});
    for (const [i, c] of clients.slice(0, 3).entries())
        await host.submitUnmask(c.id, answers[i].b, answers[i].s, now + 6_000);
    const {outcome} = await host.advance(now + 6_000);
    t.truthy(outcome?.result, outcome?.record.aborted);
    t.deepEqual(outcome!.record.dropped, ["d"]);
    t.deepEqual(outcome!.result!.contributors, ["a", "b", "c"]);
    t.deepEqual(outcome!.metrics, {a: {accuracy: 0.5}, b: {accuracy: 0.5}, c: {accuracy: 0.25}});
    t.like(outcome!.record.layers!.find((l) => l.layer === 2), {summed: false, holders: ["a", "d"], survivors: ["a"]});
    t.is(outcome!.record.keptTargets, modules.length);
    // against the plain layerwise mean over a, b, c; layer 2 (a alone after d dropped) keeps its value
    const plain = aggregate(previous, ps.slice(0, 3).map((p) => ({client: p.id, weight: p.weight, layerMap: p.layerMap, adapter: p.adapter})),
        {method: "layerwise"});
    for (const g of outcome!.result!.adapter.tensors.filter((x) => x.name.startsWith("blk.2.")))
        t.deepEqual(g.data, previous.tensors.find((x) => x.name === g.name)!.data);
    let worst = 0;
    for (const g of outcome!.result!.adapter.tensors.filter((x) => !x.name.startsWith("blk.2."))) {
        const w = plain.adapter.tensors.find((x) => x.name === g.name)!;
        g.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - w.data[i]))));
    }
    // three survivors, each p·x rounded to 2^-21, divided by their weight share (a, b, c of all four: 60 / 75)
    t.true(worst > 0 && worst <= 3 * 2 ** -21 / (60 / 75) + 1e-7, `max |secure - plain| = ${worst}`);
});
