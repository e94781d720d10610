// `ppc-gpt fl simulate` as a process: JSON result and plot, usage errors (exit 2), secure
// aggregation through the simulation compared with the plain run's first round.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../../ts/gguf/synthetic.js";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {readLoraAdapter} from "../../../ts/train/adapter.js";
import {recomputeRound, roundFile} from "../../../ts/federated/prufed/rounds.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {runCli, tempDir} from "../../helpers.js";

async function setup(dir: string): Promise<{base: string; data: string}> {
    const base = path.join(dir, "base.gguf"), data = path.join(dir, "items.jsonl");
    await writeSyntheticModel(base, {architecture: "llama", layers: 3, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 2});
    await writeJsonlAtomic(data, copyTask(36, 5));
    return {base, data};
}

const common = (base: string, data: string, out: string) => ["fl", "simulate", "--base", base, "--depths", "3,2", "--clients", "3", "--data", data,
    "--rounds", "2", "--local-steps", "1", "--seed", "3", "--r", "4", "--lora-alpha", "8", "--batch", "4", "--threads", "1", "--out", out];

test("fl simulate --json writes a result, round files and an accuracy plot per depth; secure aggregation matches the plain run", async (t) => {
    const dir = tempDir(t);
    const {base, data} = await setup(dir);
    const plain = await runCli([...common(base, data, path.join(dir, "plain")), "--json", "--plot", path.join(dir, "rounds.svg")]);
    t.is(plain.code, 0, plain.stderr);
    const result = JSON.parse(plain.stdout);
    t.is(result.aggregation, "layerwise");
    t.is(result.rounds.length, 2);
    t.deepEqual(result.clients.map((c: {id: string}) => c.id), ["c0-d3", "c1-d2", "c2-d3"]);
    t.true(result.rounds.every((r: {evaluation: {accuracy: number}[]}) => r.evaluation.every((e) => e.accuracy >= 0 && e.accuracy <= 1)));
    const events = plain.stderr.trim().split("\n").map((l) => JSON.parse(l));
    t.is(events.filter((e) => e.event === "client").length, 6);
    const svg = fs.readFileSync(path.join(dir, "rounds.svg"), "utf8");
    t.regex(svg, /^<svg/);
    t.regex(svg, /depth 3/);
    t.regex(svg, /depth 2/);
    t.is((svg.match(/<polyline/g) ?? []).length, 2);

    const secure = await runCli([...common(base, data, path.join(dir, "secure")), "--json", "--secure-aggregation", "--drop-after-masking", "c1-d2"]);
    t.is(secure.code, 0, secure.stderr);
    const sres = JSON.parse(secure.stdout);
    t.deepEqual(sres.rounds[0].secure.dropped, ["c1-d2"]);
    t.is(sres.rounds[0].secure.aborted, undefined);
    // the secure round 1 equals the plain mean of the two survivors' uploads (c0-d3, c2-d3) within fixed-point error
    const prev = await readLoraAdapter(roundFile(path.join(dir, "secure", "server"), 0));
    const g1 = await readLoraAdapter(roundFile(path.join(dir, "secure", "server"), 1));
    const u0 = await readLoraAdapter(path.join(dir, "secure", "clients", "c0-d3", "round-1.gguf"));
    const u1 = await readLoraAdapter(path.join(dir, "secure", "clients", "c2-d3", "round-1.gguf"));
    const w0 = sres.clients[0].items, w1 = sres.clients[2].items;
    let worst = 0;
    for (const g of g1.tensors) {
        const x0 = u0.tensors.find((x) => x.name === g.name)!.data, x1 = u1.tensors.find((x) => x.name === g.name)!.data;
        t.notDeepEqual(g.data, prev.tensors.find((x) => x.name === g.name)!.data);
        g.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - (w0 * x0[i] + w1 * x1[i]) / (w0 + w1)))));
    }
    t.true(worst < 1e-5, `secure round 1 vs plain mean of the survivors: ${worst}`);
    // round-1.json records the secure round, so recomputeRound over the contributors' uploads agrees too
    const again = await recomputeRound(path.join(dir, "secure", "server"), 1, {"c0-d3": path.join(dir, "secure", "clients", "c0-d3", "round-1.gguf"),
        "c2-d3": path.join(dir, "secure", "clients", "c2-d3", "round-1.gguf")}, "layerwise");
    const summary1 = JSON.parse(fs.readFileSync(roundFile(path.join(dir, "secure", "server"), 1).replace(/\.gguf$/, ".json"), "utf8"));
    t.deepEqual(summary1.secure.dropped, ["c1-d2"]);
    let worstAgain = 0;
    for (const g of g1.tensors)
        g.data.forEach((v, i) => (worstAgain = Math.max(worstAgain, Math.abs(v - again.tensors.find((x) => x.name === g.name)!.data[i]))));
    t.true(worstAgain < 1e-5, `secure round 1 vs recomputeRound: ${worstAgain}`);

    // nothing the server stored holds a client's update: every 16-byte window of each upload that the
    // server did not already have (round 0, the initial adapter it sent) is absent from its folder;
    // the same search finds the uploads in the plain run's server folder
    const secureScan = await scanServerFolder(path.join(dir, "secure"));
    t.true(secureScan.searched > 50, `${secureScan.searched} windows searched`);
    t.deepEqual(secureScan.found, []);
    const plainScan = await scanServerFolder(path.join(dir, "plain"));
    t.true(plainScan.found.length > 0, "the plain server keeps the uploads, and the search sees them");
});

/** Windows of the clients' round-1 uploads (not in round 0, not all zero) found in the server's folder. */
async function scanServerFolder(out: string): Promise<{searched: number; found: string[]}> {
    const serverDir = path.join(out, "server");
    const stored = Buffer.concat(fs.readdirSync(serverDir, {recursive: true, withFileTypes: true}).filter((e) => e.isFile())
        .map((e) => fs.readFileSync(path.join(e.parentPath, e.name))));
    const known = fs.readFileSync(roundFile(serverDir, 0));
    let searched = 0;
    const found: string[] = [];
    for (const id of ["c0-d3", "c1-d2", "c2-d3"]) {
        const up = await readLoraAdapter(path.join(out, "clients", id, "round-1.gguf"));
        for (const x of up.tensors) {
            const bytes = Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength);
            for (let off = 0; off + 16 <= bytes.length; off += 16) {
                const w = bytes.subarray(off, off + 16);
                if (known.indexOf(w) >= 0 || w.every((b) => b === 0))
                    continue;
                searched++;
                if (stored.indexOf(w) >= 0)
                    found.push(`${id} ${x.name} bytes ${off}..${off + 16}`);
            }
        }
    }
    return {searched, found};
}

test("fl simulate --eval-data scores one set for every client, as `ppc-gpt eval` scores it, with standard errors in the JSON and the plot", async (t) => {
    const dir = tempDir(t);
    const {base, data} = await setup(dir);
    const evalData = path.join(dir, "eval.jsonl");
    await writeJsonlAtomic(evalData, copyTask(15, 9));
    const out = path.join(dir, "e"), plot = path.join(dir, "eval.svg");
    const run = await runCli([...common(base, data, out), "--json", "--eval-data", evalData, "--plot", plot]);
    t.is(run.code, 0, run.stderr);
    const result = JSON.parse(run.stdout);
    t.deepEqual(result.evalSet, {data: evalData, items: 15});
    for (const x of [...result.initial, ...result.rounds.flatMap((r: {evaluation: unknown[]}) => r.evaluation)]) {
        t.is(x.evalSet.n, 15, "every client scores the same 15 items");
        t.is(x.heldOut.n, result.clients.find((c: {id: string}) => c.id === x.id).heldOut);
        t.true(x.evalSet.acc_stderr > 0 && x.evalSet.acc_stderr < 0.2 && Number.isFinite(x.evalSet.acc_norm_stderr), JSON.stringify(x.evalSet));
        t.is(x.accuracy, x.heldOut.acc);
    }
    // round 0 is the base model (B = 0): the same numbers `ppc-gpt eval` gives on the client's cut model, under the training prefix
    const d2 = result.clients.find((c: {id: string}) => c.id === "c1-d2");
    const ev = await runCli(["eval", d2.model, "--task", "mc", "--data", evalData, "--prompt-prefix", "[label] ", "--json"]);
    t.is(ev.code, 0, ev.stderr);
    const e = JSON.parse(ev.stdout);
    const sim = result.initial.find((x: {id: string}) => x.id === "c1-d2").evalSet;
    for (const key of ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"])
        t.true(Math.abs(sim[key] - e[key]) < 1e-12, `${key}: simulation ${sim[key]}, eval ${e[key]}`);
    const svg = fs.readFileSync(plot, "utf8");
    t.regex(svg, /accuracy on 15 shared items/);
    t.true((svg.match(/class="stderr"/g) ?? []).length >= 4, "± 1 standard error at the points");
    const missing = await runCli([...common(base, data, path.join(dir, "m")), "--eval-data", path.join(dir, "nope.jsonl")]);
    t.is(missing.code, 2);
    t.regex(missing.stderr, /--eval-data .*nope\.jsonl does not exist/);
    t.false(fs.existsSync(path.join(dir, "m")));
});

test("fl simulate: usage errors exit 2 with a message", async (t) => {
    const dir = tempDir(t);
    const {base, data} = await setup(dir);
    const bad = await runCli(["fl", "simulate", "--base", base, "--depths", "3,x", "--clients", "2", "--data", data, "--out", path.join(dir, "o")]);
    t.is(bad.code, 2);
    t.regex(bad.stderr, /--depths/);
    const missing = await runCli(["fl", "simulate", "--base", base, "--clients", "2", "--data", data, "--out", path.join(dir, "o")]);
    t.is(missing.code, 2);
    t.regex(missing.stderr, /--depths/);
    const deep = await runCli(["fl", "simulate", "--base", base, "--depths", "4", "--clients", "2", "--data", data, "--out", path.join(dir, "o2")]);
    t.is(deep.code, 1);
    t.regex(deep.stderr, /depths must be integers in \[1, 3\]/);
    const help = await runCli(["fl", "simulate", "--help"]);
    t.is(help.code, 0);
    t.regex(help.stdout, /Examples:/);
});
