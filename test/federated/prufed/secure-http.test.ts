// Secure aggregation over HTTP with real processes on loopback: three `fl client` processes of
// depths 4, 3, 2 run two secure rounds against `fl server --secure-aggregation`, each through its own
// recording TCP proxy. Round 1: client b is killed after it sent its shares, before its masked input
// (its pair masks are removed with the others' Shamir shares of its key), and the server is killed
// -9 and restarted mid-round (it replays its journal); layer 3, held by a and b, is left with a alone:
// it keeps its value and a's layer-3 self-mask seed is never released, while layers 0 and 2 are
// aggregated over a and c. Round 2: c is killed after its masked input, before unmasking (its self
// masks are removed with shares of its seeds; its update is in the sum).
// Every byte each client sent or received and every file the server wrote (sampled while it runs)
// is searched for every 16-byte window of each client's plain updates; the round files equal the
// plain layerwise aggregate of the contributors' own W/round-N.gguf within fixed-point error.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {readLoraAdapter} from "../../../ts/train/adapter.js";
import {toBaseNumbering} from "../../../ts/federated/prufed/align.js";
import {recomputeRound, roundFile, type RoundSummary} from "../../../ts/federated/prufed/rounds.js";
import {toFixedPoint} from "../../../ts/federated/prufed/secure.js";
import {secaggProtocol, secaggVersionHeader, type UnmaskBody} from "../../../ts/federated/prufed/http-protocol.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {makeToken} from "../server-process.js";
import {decodeHttpMessages, RecordingProxy} from "../client-helpers.js";
import {tempDir} from "../../helpers.js";
import {clientTokens, models, spawnCli, startServer, type Proc} from "./http-process.js";

/** Every file under dir, read now (a file removed meanwhile is skipped). */
function filesOf(dir: string): Buffer[] {
    const out: Buffer[] = [];
    for (const e of fs.readdirSync(dir, {recursive: true, withFileTypes: true}))
        if (e.isFile())
            try {
                out.push(fs.readFileSync(path.join(e.parentPath, e.name)));
            } catch {
                // removed between listing and reading
            }
    return out;
}

/** 16-byte needles indexed by their first 4 bytes, so one pass over the haystack finds any of them. */
class WindowSearch {
    private readonly byPrefix = new Map<number, {bytes: Buffer; what: string}[]>();
    count = 0;
    add(bytes: Buffer, what: string): void {
        const key = bytes.readUInt32LE(0);
        const list = this.byPrefix.get(key) ?? [];
        list.push({bytes, what});
        this.byPrefix.set(key, list);
        this.count++;
    }
    /** The first needle found in `hay`, at any byte offset. */
    find(hay: Buffer): string | undefined {
        for (let i = 0; i + 16 <= hay.length; i++) {
            const list = this.byPrefix.get(hay.readUInt32LE(i));
            if (list)
                for (const n of list)
                    if (hay.compare(n.bytes, 0, 16, i, i + 16) === 0)
                        return `${n.what} at offset ${i}`;
        }
        return undefined;
    }
}

test.serial("secure rounds over HTTP: masks recovered after kills before and after masking, a server restart, a layer with one survivor kept, no update on the wire or disk", async (t) => {
    const dir = tempDir(t);
    const {base, cut} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const ids = ["a-d4", "b-d3", "c-d2"];
    const tokens = await clientTokens(dataDir, ids);
    const common = ["--rounds", "2", "--clients-per-round", "3", "--min-clients", "2", "--round-timeout", "120", "--secure-aggregation",
        "--secagg-phase-timeout", "5"];
    let server = await startServer(t, base, dataDir, common);
    const port = new URL(server.url).port;
    // what the server stored, sampled while it runs (journals and masked inputs live only during a round)
    const stored = new Map<string, Buffer>();
    const sample = () => {
        for (const b of filesOf(dataDir))
            stored.set(`${b.length}:${b.subarray(0, 64).toString("hex")}:${b.subarray(-64).toString("hex")}`, b);
    };
    const sampler = setInterval(sample, 150);
    t.teardown(() => clearInterval(sampler));
    const proxies: RecordingProxy[] = [];
    const proxyFor = async (hold?: RegExp) => {
        const p = await RecordingProxy.start(server.url);
        p.hold = hold;
        proxies.push(p);
        t.teardown(() => p.close());
        return p;
    };
    const startClient = async (i: number, id: string, hold?: RegExp) => spawnCli(t, ["fl", "client", "--server", (await proxyFor(hold)).url,
        "--model", cut[id.split("-")[1]], "--data", path.join(dir, `${id}.jsonl`), "--work-dir", path.join(dir, id), "--local-steps", "1",
        "--r", "4", "--lora-alpha", "8", "--batch", "4", "--threads", "1", "--seed", String(i + 1), "--json"], {PPC_GPT_TOKEN: tokens[id]});
    const clients: Proc[] = [];
    for (const [i, id] of ids.entries()) {
        await writeJsonlAtomic(path.join(dir, `${id}.jsonl`), copyTask(16, 10 + i));
        // b's request for the others' shares never reaches the server: it stalls after sending its own shares;
        // c stalls in round 2 before unmasking
        clients.push(await startClient(i, id, id === "b-d3" ? /GET \/v1\/fl\/rounds\/1\/secagg\/shares/
            : id === "c-d2" ? /GET \/v1\/fl\/rounds\/2\/secagg\/unmask/ : undefined));
    }
    const received = (round: number, client: string, step: string) => (e: Record<string, any>) =>
        e.event === "secagg_received" && e.round === round && e.client === client && e.step === step;

    // round 1: b dies after sharing its keys, before its masked input; then the server dies and comes back
    await server.proc.waitFor(received(1, "b-d3", "shares"), "b's shares in round 1");
    await clients[1].kill9();
    sample();
    await server.proc.kill9();
    sample();
    server = await startServer(t, base, dataDir, [...common, "--port", port]);
    const resumed = server.proc.events.find((e) => e.event === "listening")!;
    t.is(resumed.resumed_round, 1, "the restarted server resumes round 1");
    // b's shares were accepted, so the roster was fixed: the journal brings the round back past its keys phase
    t.true(["shares", "masked", "unmask"].includes(resumed.secure_phase), `resumed in phase ${resumed.secure_phase}`);
    // b comes back (its keys are gone: it waits for round 2)
    clients[1] = await startClient(1, "b-d3");
    const r1 = await server.proc.waitFor((e) => e.event === "round_closed" && e.round === 1, "round 1 closed", 90_000);
    t.true(r1.aggregated, r1.note);
    // round 2: c dies after its masked input, before its unmasking shares
    await server.proc.waitFor(received(2, "c-d2", "masked"), "c's masked input in round 2", 90_000);
    await clients[2].kill9();
    await server.proc.waitFor((e) => e.event === "finished", "finished", 90_000);
    t.is(await server.proc.exited, 0, server.proc.stderr());
    for (const c of clients.slice(0, 2))
        t.is(await c.exited, 0, c.stderr());
    clearInterval(sampler);
    sample();

    const summaries = [1, 2].map((n) => JSON.parse(fs.readFileSync(roundFile(dataDir, n).replace(/\.gguf$/, ".json"), "utf8")) as RoundSummary);
    // (c) who took part: b dropped before masking in round 1, c's input included in round 2 without its unmasking shares
    t.deepEqual(summaries[0].secure!.roster, ids);
    t.deepEqual(summaries[0].secure!.dropped, ["b-d3"]);
    t.deepEqual(summaries[0].secure!.contributors, ["a-d4", "c-d2"]);
    t.deepEqual(summaries[0].clients.map((c) => c.id), ["a-d4", "c-d2"]);
    // round 1 per layer: 0 and 2 summed over a and c; 1 held by a alone (never sent); 3 left with a alone after b dropped
    t.deepEqual(summaries[0].secure!.layers!.map((l) => [l.layer, l.summed, l.survivors]),
        [[0, true, ["a-d4", "c-d2"]], [1, false, ["a-d4"]], [2, true, ["a-d4", "c-d2"]], [3, false, ["a-d4"]]]);
    t.regex(summaries[0].secure!.layers![3].reason!, /one surviving holder \(a-d4\)/);
    t.deepEqual(summaries[1].secure!.layers!.map((l) => [l.layer, l.summed]), [[0, true], [1, false], [2, true], [3, true]]);
    t.deepEqual(summaries[1].secure!.dropped, []);
    t.deepEqual(summaries[1].secure!.contributors, ids);
    t.deepEqual(summaries[1].secure!.unmasked, ["a-d4", "b-d3"]);
    for (const s of summaries) {
        t.true(s.aggregated, s.note);
        t.is(s.secure!.threshold, 2);
        // per-client loss and accuracy never travel in the clear: the server learns their weighted means over the contributors
        t.true(s.clients.every((c) => c.metrics.accuracy === undefined && c.metrics.trainLoss === undefined && c.metrics.bytesUp! > 0));
        const local = s.secure!.contributors.map((id) => JSON.parse(fs.readFileSync(path.join(dir, id, `round-${s.round}.done.json`), "utf8")) as
            {trainLoss: number; accuracy: number; accuracyBefore: number});
        const mean = (f: (m: typeof local[number]) => number) => local.reduce((x, m) => x + f(m), 0) / local.length;
        t.true(Math.abs(s.secure!.maskedMetrics!.trainLoss - mean((m) => m.trainLoss)) < 1e-5, JSON.stringify(s.secure!.maskedMetrics));
        t.true(Math.abs(s.secure!.maskedMetrics!.accuracy! - mean((m) => m.accuracy)) < 1e-5);
        t.true(Math.abs(s.secure!.maskedMetrics!.accuracyBefore! - mean((m) => m.accuracyBefore)) < 1e-5);
    }
    t.false(fs.existsSync(path.join(dataDir, "uploads")), "a secure round stores no upload");
    t.deepEqual(fs.existsSync(path.join(dataDir, "secagg")) ? fs.readdirSync(path.join(dataDir, "secagg")) : [], [], "journals are removed when a round closes");

    // (b) the round files equal the plain layerwise aggregate of the contributors' own uploads. Each
    // client sends round(p_k·x·2^20): at most 2^-21 off; the sum of n such, divided by the survivors'
    // share of the weight (Σ p ≥ 2/3 here: equal weights, at most one of three dropped), is at most
    // n·2^-21·3/2 = 3·2^-21·1.5 off, plus float32 rounding of the result (< 1e-7 at these magnitudes).
    const tolerance = 3 * 2 ** -21 * 1.5 + 1e-7;
    for (const [i, s] of summaries.entries()) {
        const n = i + 1;
        const uploads = Object.fromEntries(s.clients.map((c) => [c.id, path.join(dir, c.id, `round-${n}.gguf`)]));
        const plain = await recomputeRound(dataDir, n, uploads, "layerwise");
        const got = await readLoraAdapter(roundFile(dataDir, n));
        const previous = await readLoraAdapter(roundFile(dataDir, n - 1));
        let worst = 0, moved = 0;
        for (const g of got.tensors) {
            const p = plain.tensors.find((x) => x.name === g.name)!;
            const before = previous.tensors.find((x) => x.name === g.name)!;
            g.data.forEach((v, k) => {
                worst = Math.max(worst, Math.abs(v - p.data[k]));
                moved = Math.max(moved, Math.abs(v - before.data[k]));
            });
            // blk.1 is held by the depth-4 client alone: never sent, kept bit for bit; so is blk.3 in round 1 (one survivor)
            if (g.name.startsWith("blk.1.") || (n === 1 && g.name.startsWith("blk.3.")))
                t.deepEqual(g.data, before.data, `round ${n} ${g.name}`);
        }
        t.true(worst <= tolerance, `round ${n}: max |secure - plain| = ${worst} > ${tolerance}`);
        t.true(worst > 0, "fixed point rounds somewhere (the comparison is not vacuous)");
        t.true(moved > 1e-4, `round ${n} changed the global adapter`);
    }

    // (a) no 16-byte window of any client's plain update (float32, or fixed point with its weight
    // share p or p = 1) is in any byte a client exchanged with the server or any file the server wrote.
    // Windows that are all zero, or also in what the server sent the client (its start adapter), tell nothing and are skipped.
    const search = new WindowSearch();
    let skipped = 0;
    const layerMaps: Record<string, number[]> = {"a-d4": [0, 1, 2, 3], "b-d3": [0, 2, 3], "c-d2": [0, 2]};
    for (const n of [1, 2]) {
        for (const id of ids) {
            const file = path.join(dir, id, `round-${n}.gguf`);
            if (!fs.existsSync(file))
                continue;
            const update = toBaseNumbering(await readLoraAdapter(file), layerMaps[id]);
            const start = toBaseNumbering(await readLoraAdapter(path.join(dir, id, `round-${n}-start.gguf`)), layerMaps[id]);
            for (const tensor of update.tensors) {
                const layer = Number(/^blk\.(\d+)\./.exec(tensor.name)![1]);
                const holders = ids.filter((h) => layerMaps[h].includes(layer));
                const sent = Buffer.from(start.tensors.find((x) => x.name === tensor.name)!.data.buffer);
                const encodings = [Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength),
                    ...[1, 1 / holders.length, 1 / Math.max(1, holders.length - 1)].map((p) => Buffer.from(toFixedPoint(tensor.data, p, 20, tensor.name).buffer))];
                for (const plain of encodings)
                    for (let off = 0; off + 16 <= plain.length; off += 16) {
                        const w = plain.subarray(off, off + 16);
                        if (w.every((x) => x === 0) || sent.indexOf(w) >= 0) {
                            skipped++;
                            continue;
                        }
                        search.add(Buffer.from(w), `${id} round ${n} ${tensor.name} bytes ${off}..${off + 16}`);
                    }
            }
        }
    }
    t.true(search.count > 2000 && skipped < search.count / 10, `${search.count} windows searched, ${skipped} skipped`);
    const wire = proxies.flatMap((p) => p.connections.flatMap((c) => [Buffer.concat(c.up), Buffer.concat(c.down),
        ...decodeHttpMessages(Buffer.concat(c.up)), ...decodeHttpMessages(Buffer.concat(c.down))]));
    const wireBytes = wire.reduce((s, b) => s + b.length, 0);
    const masked = proxies.flatMap((p) => p.connections).map((c) => Buffer.concat(c.up).toString("latin1").match(/PUT \/v1\/fl\/rounds\/\d\/secagg\/masked /g)?.length ?? 0)
        .reduce((x, y) => x + y, 0);
    t.true(masked >= 5, `the masked inputs are in the recorded streams (${masked} requests: 2 in round 1, 3 in round 2)`);
    t.true(wireBytes > 100_000, `${wireBytes} bytes recorded`);
    t.true([...stored.values()].some((b) => b.includes("\"op\":\"masked\"")), "a journal with masked input was sampled from the server's folder");
    for (const hay of [...wire, ...stored.values()]) {
        const found = search.find(hay);
        t.is(found, undefined, `a plain update window reached the server: ${found}`);
        if (found)
            break;
    }
    // the search finds what is there: one client's own upload file contains its windows
    t.truthy(search.find(fs.readFileSync(path.join(dir, "a-d4", "round-2.gguf"))));

    // (d) the unmasking messages as sent: in round 1 the survivors a and c release their seeds for layers 0 and 2
    // and b's key, never a seed for layer 3 (a alone) or layer 1 (never sent); in round 2 layer 3 has a and b
    const unmaskBodies = (n: number) => proxies.flatMap((p) => p.connections.flatMap((c) => {
        const msgs = decodeHttpMessages(Buffer.concat(c.up));
        return msgs.flatMap((m, i) => m.toString("latin1").startsWith(`POST /v1/fl/rounds/${n}/secagg/unmask `) ? [JSON.parse(msgs[i + 1].toString()) as UnmaskBody] : []);
    }));
    const round1 = unmaskBodies(1);
    t.is(round1.length, 2, "a and c sent their unmasking shares in round 1");
    for (const u of round1) {
        // null: the group of the masked metrics, held by every sharer
        t.deepEqual(u.b.map((x) => `${x.id}:${x.layer}`).sort(), ["a-d4:0", "a-d4:2", "a-d4:null", "c-d2:0", "c-d2:2", "c-d2:null"]);
        t.deepEqual(u.s.map((x) => x.id), ["b-d3"]);
    }
    const round2 = unmaskBodies(2);
    t.is(round2.length, 2, "a and b sent their unmasking shares in round 2");
    for (const u of round2)
        t.deepEqual(u.b.map((x) => `${x.id}:${x.layer}`).sort(), ["a-d4:0", "a-d4:2", "a-d4:3", "a-d4:null", "b-d3:0", "b-d3:2", "b-d3:3",
            "b-d3:null", "c-d2:0", "c-d2:2", "c-d2:null"]);
});

test.serial("secure rounds refuse plain uploads, late keys and malformed shares; a round below the threshold is closed unaggregated", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const tokens = {x: await makeToken(dataDir, "x"), y: await makeToken(dataDir, "y"), z: await makeToken(dataDir, "z")};
    const server = await startServer(t, base, dataDir, ["--rounds", "1", "--clients-per-round", "3", "--round-timeout", "3", "--secure-aggregation",
        "--secagg-phase-timeout", "2"]);
    const call = (who: keyof typeof tokens, route: string, init: RequestInit = {}) =>
        fetch(`${server.url}${route}`, {...init, headers: {authorization: `Bearer ${tokens[who]}`, "content-type": "application/json",
            [secaggVersionHeader]: secaggProtocol, ...(init.headers as Record<string, string> ?? {})}});
    for (const who of ["x", "y", "z"] as const)
        t.is((await call(who, "/v1/fl/clients", {method: "POST", body: JSON.stringify({original_layers: [0, 2], weight: 10, r: 4, lora_alpha: 8})})).status, 201);
    const cur = await (await call("x", "/v1/fl/rounds/current?wait=10")).json() as Record<string, any>;
    t.is(cur.round, 1);
    t.true(cur.secure_aggregation);
    t.like(cur.secure, {phase: "keys", joined: false, threshold: 2, scale_bits: 20});
    const plain = await call("x", "/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream"}, body: Buffer.alloc(64)});
    t.is(plain.status, 409);
    t.is((await plain.json() as {code: string}).code, "secure_round");
    const key = () => Buffer.from(Array.from({length: 32}, (_, i) => i + 1)).toString("base64");
    t.is((await call("x", "/v1/fl/rounds/1/secagg/keys", {method: "POST", body: JSON.stringify({c_pub: "short", s_pub: key()})})).status, 400);
    for (const who of ["x", "y"] as const)
        t.is((await call(who, "/v1/fl/rounds/1/secagg/keys", {method: "POST", body: JSON.stringify({c_pub: key(), s_pub: key()})})).status, 201);
    // a secure message without the protocol version is refused
    const unversioned = await call("x", "/v1/fl/rounds/1/secagg/roster", {headers: {[secaggVersionHeader]: "prufed-secagg/0"}});
    t.is(unversioned.status, 400);
    t.is((await unversioned.json() as {code: string}).code, "protocol_version");
    const early = await (await call("x", "/v1/fl/rounds/1/secagg/roster")).json() as Record<string, any>;
    t.like(early, {ready: false, phase: "keys"});
    // the keys phase ends at the round deadline: z is not in the roster and is refused from then on
    const roster = await (await call("x", "/v1/fl/rounds/1/secagg/roster?wait=20")).json() as Record<string, any>;
    t.true(roster.ready);
    t.deepEqual(roster.roster.map((a: {id: string; x: number}) => [a.id, a.x]), [["x", 1], ["y", 2]]);
    const late = await call("z", "/v1/fl/rounds/1/secagg/keys", {method: "POST", body: JSON.stringify({c_pub: key(), s_pub: key()})});
    t.is(late.status, 409);
    t.is((await late.json() as {code: string}).code, "dropped");
    t.is((await call("z", "/v1/fl/rounds/1/secagg/roster")).status, 409);
    const wrongTo = await call("x", "/v1/fl/rounds/1/secagg/shares", {method: "POST", body: JSON.stringify({boxes: [{to: "z", box: "AAAA"}]})});
    t.is(wrongTo.status, 422);
    t.regex((await wrongTo.json() as {error: string}).error, /each other roster member \(y\)/);
    const masked = await call("x", "/v1/fl/rounds/1/secagg/masked", {method: "PUT", headers: {"content-type": "application/octet-stream"}, body: Buffer.alloc(8)});
    t.is(masked.status, 409, "masked input before the plan");
    // nobody shares: the round closes unaggregated, the global kept
    const closed = await server.proc.waitFor((e) => e.event === "round_closed", "round closed", 30_000);
    t.false(closed.aggregated);
    t.regex(closed.note, /0 client\(s\) sent shares in time, fewer than the threshold 2/);
    t.deepEqual(closed.secure.roster, ["x", "y"]);
    t.is(await server.proc.exited, 0);
    t.deepEqual((await readLoraAdapter(roundFile(dataDir, 1))).tensors, (await readLoraAdapter(roundFile(dataDir, 0))).tensors, "the global is kept");
});
