// The round state machine and the simulation on real files: a generated 4-layer llama, clients cut
// to 4, 3 and 2 layers with ts/prune, real local LoRA training. Checks: the same seed gives the same
// round files; every round file is recomputed from the previous one and the clients' own copies of
// their uploads; bad, late and unsampled uploads are refused and logged; quorum; resume after restart.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../../ts/gguf/synthetic.js";
import {readGguf} from "../../../ts/gguf/read.js";
import {planPruning} from "../../../ts/prune/plan.js";
import {removeLayers} from "../../../ts/prune/remove.js";
import {readLoraAdapter, writeLoraAdapter} from "../../../ts/train/adapter.js";
import {trainLora} from "../../../ts/train/train.js";
import {FederationServer, LateUpload, recomputeRound, roundFile} from "../../../ts/federated/prufed/rounds.js";
import {UploadRejected} from "../../../ts/federated/prufed/align.js";
import {simulate} from "../../../ts/federated/prufed/simulate.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {tempDir} from "../../helpers.js";

const modelOptions = {architecture: "llama" as const, layers: 4, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 5};
const items = copyTask(48, 3);
const train = {threads: 1, batchSize: 4, maxInputLength: 48};

async function baseModel(dir: string): Promise<string> {
    const file = path.join(dir, "base.gguf");
    await writeSyntheticModel(file, modelOptions);
    return file;
}

function bytesOf(file: string): Buffer {
    return fs.readFileSync(file);
}

test("simulate: the same seed gives byte-identical round files, and each round is recomputed from the clients' uploads", async (t) => {
    const dir = tempDir(t);
    const base = await baseModel(dir);
    const run = (out: string) => simulate({base, depths: [4, 3, 2], clients: 3, data: items, rounds: 2, seed: 7, aggregation: "layerwise",
        localSteps: 2, outDir: path.join(dir, out), r: 4, loraAlpha: 8, train});
    const a = await run("a"), b = await run("b");
    t.deepEqual(a.clients.map((c) => c.layerMap), [[0, 1, 2, 3], [0, 1, 2], [0, 1]], "top strategy: the deepest layers go");
    t.deepEqual(b.rounds.map((r) => r.clients.map((c) => c.trainLoss)), a.rounds.map((r) => r.clients.map((c) => c.trainLoss)));
    t.deepEqual(b.rounds.map((r) => r.evaluation), a.rounds.map((r) => r.evaluation));
    for (let n = 0; n <= 2; n++) {
        const fa = roundFile(path.join(dir, "a", "server"), n), fb = roundFile(path.join(dir, "b", "server"), n);
        t.true(bytesOf(fa).equals(bytesOf(fb)), `round ${n} files differ between two runs with one seed`);
    }
    t.false(bytesOf(roundFile(path.join(dir, "a", "server"), 1)).equals(bytesOf(roundFile(path.join(dir, "a", "server"), 2))), "rounds change the adapter");
    for (const n of [1, 2]) {
        const uploads = Object.fromEntries(a.clients.map((c) => [c.id, path.join(dir, "a", "clients", c.id, `round-${n}.gguf`)]));
        const again = await recomputeRound(path.join(dir, "a", "server"), n, uploads, "layerwise");
        const stored = await readLoraAdapter(roundFile(path.join(dir, "a", "server"), n));
        t.deepEqual(again.tensors.map((x) => x.name), stored.tensors.map((x) => x.name));
        again.tensors.forEach((x, i) => t.deepEqual(x.data, stored.tensors[i].data, `round ${n} ${x.name}`));
    }
    // base layer 3 is only in the depth-4 client: the global's layer 3 equals its upload, renumbered
    const up = await readLoraAdapter(path.join(dir, "a", "clients", "c0-d4", "round-1.gguf"));
    const g1 = await readLoraAdapter(roundFile(path.join(dir, "a", "server"), 1));
    t.deepEqual(g1.tensors.find((x) => x.name === "blk.3.attn_q.weight.lora_b")!.data, up.tensors.find((x) => x.name === "blk.3.attn_q.weight.lora_b")!.data);
    t.is(a.rounds.length, 2);
    t.true(a.rounds.every((r) => r.clients.every((c) => Number.isFinite(c.trainLoss) && c.bytesUp > 0 && c.bytesDown > 0)));
    t.true(a.rounds[0].clients.find((c) => c.id === "c2-d2")!.bytesUp < a.rounds[0].clients.find((c) => c.id === "c0-d4")!.bytesUp);
});

test("the server refuses bad, late and unsampled uploads, logs them, keeps the global without quorum, and resumes after a restart", async (t) => {
    const dir = tempDir(t);
    const base = await baseModel(dir);
    const pruned = path.join(dir, "d2.gguf");
    await removeLayers(base, pruned, (await planPruning(base, {strategy: "odd", count: 2})).removed);
    const layerMap = (await readGguf(pruned)).originalLayers;
    t.deepEqual(layerMap, [0, 2]);
    const data = path.join(dir, "server");
    let server = await FederationServer.create(data, {base, aggregation: "layerwise", rounds: 3, seed: 1, r: 4, loraAlpha: 8,
        minClients: 2, roundTimeout: 60, clientsPerRound: 2});
    await server.register({id: "p", layerMap, weight: 10, r: 4, loraAlpha: 8});
    await server.register({id: "q", layerMap, weight: 20, r: 4, loraAlpha: 8});
    await server.register({id: "full", layerMap: [0, 1, 2, 3], weight: 5, r: 4, loraAlpha: 8});
    await t.throwsAsync(server.register({id: "p", layerMap: [0, 1], weight: 10, r: 4, loraAlpha: 8}), {message: /another declaration/});
    await t.throwsAsync(server.register({id: "bad", layerMap: [0, 9], weight: 1, r: 4, loraAlpha: 8}), {message: /outside the base model's 4 layers/});
    await t.throwsAsync(server.register({id: "rank", layerMap, weight: 1, r: 2, loraAlpha: 8}), {message: /flexlora allows other ranks/});

    const t0 = 1_000_000;
    const round = await server.startRound(t0);
    t.is(round.sampled.length, 2);
    const sampledPruned = round.sampled.filter((id) => id !== "full");
    const outsider = ["p", "q", "full"].find((id) => !round.sampled.includes(id))!;
    // a real local round for one sampled pruned client
    const id = sampledPruned[0];
    const start = path.join(dir, "start.gguf"), upload = path.join(dir, "upload.gguf");
    await writeLoraAdapter(start, server.assignment(id));
    await trainLora({model: pruned, data: items.slice(0, 12), output: upload, initAdapter: start, steps: 1, task: "label", ...train, seed: 1});
    // NaN in an otherwise valid upload
    const poisoned = await readLoraAdapter(upload);
    poisoned.tensors[1].data[0] = NaN;
    const nanFile = path.join(dir, "nan.gguf");
    await writeLoraAdapter(nanFile, poisoned);
    await t.throwsAsync(server.submit(id, nanFile, {}, t0 + 1000), {instanceOf: UploadRejected, message: /is NaN/});
    // a wrong shape: the adapter of another rank
    const wrong = {...poisoned, r: 2, tensors: poisoned.tensors.map((x) => ({...x, shape: (x.name.endsWith("lora_a") ? [x.shape[0], 2] : [2, x.shape[1]]) as [number, number],
        data: new Float32Array(x.name.endsWith("lora_a") ? x.shape[0] * 2 : 2 * x.shape[1])}))};
    const wrongFile = path.join(dir, "wrong.gguf");
    await writeLoraAdapter(wrongFile, wrong);
    await t.throwsAsync(server.submit(id, wrongFile, {}, t0 + 1000), {instanceOf: UploadRejected, message: /rank 2/});
    await t.throwsAsync(server.submit(outsider, upload, {}, t0 + 1000), {message: /not sampled/});
    // a truncated file
    const truncated = path.join(dir, "truncated.gguf");
    fs.writeFileSync(truncated, fs.readFileSync(upload).subarray(0, 200));
    await t.throwsAsync(server.submit(id, truncated, {}, t0 + 1000), {instanceOf: UploadRejected, message: /truncated\.gguf/});
    await server.submit(id, upload, {trainLoss: 1}, t0 + 2000);
    t.false(server.readyToClose(t0 + 3000));

    // restart mid-round: the accepted upload and the rejections survive
    server = await FederationServer.open(data);
    t.is(server.current?.round, 1);
    t.deepEqual(server.current?.accepted.map((a) => a.client), [id]);
    t.deepEqual(server.current?.rejected.map((r) => r.reason), ["nonfinite", "rank", "not-sampled", "format"]);
    const other = round.sampled.find((x) => x !== id)!;
    await t.throwsAsync(server.submit(other, upload, {}, t0 + 61_000), {instanceOf: LateUpload});
    t.true(server.readyToClose(t0 + 61_000));
    const before = bytesOf(roundFile(data, 0));
    const summary = await server.closeRound();
    t.false(summary.aggregated, "one accepted upload, minClients 2");
    t.regex(summary.note!, /fewer than minClients = 2/);
    t.deepEqual(summary.missing.sort(), [other].sort());
    const g0 = await readLoraAdapter(roundFile(data, 0)), g1 = await readLoraAdapter(roundFile(data, 1));
    g0.tensors.forEach((x, i) => t.deepEqual(x.data, g1.tensors[i].data));
    t.true(bytesOf(roundFile(data, 0)).equals(before), "round-0 is never rewritten");
    const json = JSON.parse(fs.readFileSync(roundFile(data, 1).replace(/gguf$/, "json"), "utf8"));
    t.is(json.rejected.length, 5);

    // restart between rounds: the next round starts where the last ended
    server = await FederationServer.open(data);
    t.is(server.completed, 1);
    const r2 = await server.startRound(t0 + 100_000);
    t.is(r2.round, 2);
});

test("trainLora starts from a given adapter and refuses one of another rank", async (t) => {
    const dir = tempDir(t);
    const base = await baseModel(dir);
    const server = await FederationServer.create(path.join(dir, "s"), {base, aggregation: "layerwise", rounds: 1, seed: 1, r: 4, loraAlpha: 8});
    await server.register({id: "x", layerMap: [0, 1, 2, 3], weight: 1, r: 4, loraAlpha: 8});
    await server.startRound();
    const start = server.assignment("x");
    // make B nonzero so that the start is not the base model
    for (const x of start.tensors)
        if (x.name.endsWith("lora_b"))
            x.data.fill(0.01);
    const file = path.join(dir, "start.gguf");
    await writeLoraAdapter(file, start);
    const out = path.join(dir, "out.gguf");
    await trainLora({model: base, data: items.slice(0, 8), output: out, initAdapter: file, steps: 1, task: "label", learningRate: 1e-9, ...train});
    const got = await readLoraAdapter(out);
    t.is(got.r, 4);
    t.is(got.alpha, 8);
    for (const x of start.tensors) {
        const y = got.tensors.find((z) => z.name === x.name)!;
        let diff = 0;
        x.data.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - y.data[i]))));
        t.true(diff < 1e-6, `${x.name}: moved ${diff} with lr 1e-9`);
    }
    await t.throwsAsync(trainLora({model: base, data: items.slice(0, 8), output: out, initAdapter: file, steps: 1, r: 8, task: "label", ...train}), {message: /rank 4/});
});

test("simulate flexlora: clients train at their own rank and the round file is recomputed from their uploads", async (t) => {
    const dir = tempDir(t);
    const base = await baseModel(dir);
    const res = await simulate({base, depths: [4, 2], clients: 2, data: items, rounds: 1, seed: 2, aggregation: "flexlora", localSteps: 1,
        outDir: path.join(dir, "f"), r: 4, loraAlpha: 8, ranks: [4, 2], train});
    const ups = Object.fromEntries(res.clients.map((c) => [c.id, path.join(dir, "f", "clients", c.id, "round-1.gguf")]));
    t.is((await readLoraAdapter(ups["c0-d4"])).r, 4);
    const small = await readLoraAdapter(ups["c1-d2"]);
    t.is(small.r, 2);
    t.is(small.alpha, 4, "alpha scales with the rank");
    const again = await recomputeRound(path.join(dir, "f", "server"), 1, ups, "flexlora");
    const stored = await readLoraAdapter(roundFile(path.join(dir, "f", "server"), 1));
    t.is(stored.r, 4);
    again.tensors.forEach((x, i) => t.deepEqual(x.data, stored.tensors[i].data, x.name));
    await t.throwsAsync(simulate({base, depths: [4, 2], clients: 2, data: items, rounds: 1, seed: 2, aggregation: "fedavg", localSteps: 1,
        outDir: path.join(dir, "g"), train}), {message: /homogeneous baseline/});
});
