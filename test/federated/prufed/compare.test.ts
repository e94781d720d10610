// `fl simulate --compare`: the paper's comparison (layerwise vs FedAvg at each depth vs alone, over
// seeds) as a cached, resumable run. A tiny config on a generated model: the table has a row per
// depth and set-up with one final accuracy per seed; a comparison killed -9 after some simulations
// resumes with them cached and ends with the rows of an uninterrupted run; a rerun runs nothing.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../../ts/gguf/synthetic.js";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {runCli, tempDir} from "../../helpers.js";
import {spawnCli} from "./http-process.js";

const doneStages = (out: string) => fs.existsSync(path.join(out, "stages"))
    ? fs.readdirSync(path.join(out, "stages")).filter((d) => fs.existsSync(path.join(out, "stages", d, "result.json"))).length : 0;

const runEvents = (stderr: string) => stderr.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((e) => e.event === "run");

test("fl simulate --compare: a row per depth and set-up over the seeds, cached; killed -9 it resumes to the uninterrupted result", async (t) => {
    const dir = tempDir(t);
    const base = path.join(dir, "base.gguf"), data = path.join(dir, "items.jsonl"), evalData = path.join(dir, "eval.jsonl");
    await writeSyntheticModel(base, {architecture: "llama", layers: 3, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 2});
    await writeJsonlAtomic(data, copyTask(24, 5));
    await writeJsonlAtomic(evalData, copyTask(8, 6));
    const args = (out: string) => ["fl", "simulate", "--base", base, "--depths", "3,2", "--clients", "2", "--data", data, "--eval-data", evalData,
        "--rounds", "2", "--local-steps", "1", "--r", "4", "--lora-alpha", "8", "--batch", "4", "--threads", "1", "--compare", "--seeds", "1,2",
        "--out", out, "--json"];

    const whole = await runCli([...args(path.join(dir, "whole")), "--plot", path.join(dir, "cmp.svg")]);
    t.is(whole.code, 0, whole.stderr);
    const ref = JSON.parse(whole.stdout);
    t.is(ref.scored, "evalSet");
    // layerwise, fedavg-d3, fedavg-d2, alone for each of two seeds
    t.deepEqual(runEvents(whole.stderr).map((e) => `${e.setup}/${e.seed}/${e.cached}`),
        ["layerwise/1/false", "fedavg-d3/1/false", "fedavg-d2/1/false", "alone/1/false", "layerwise/2/false", "fedavg-d3/2/false", "fedavg-d2/2/false", "alone/2/false"]);
    t.deepEqual(ref.rows.map((r: {depth: number; setup: string}) => `${r.depth} ${r.setup}`),
        ["3 layerwise", "3 fedavg-d3", "3 alone", "2 layerwise", "2 fedavg-d2", "2 alone"]);
    for (const r of ref.rows) {
        t.is(r.final.length, 2);
        t.true(Math.abs(r.mean - (r.final[0] + r.final[1]) / 2) < 1e-12);
        t.is(r.byRound.length, 3, "rounds 0, 1, 2");
    }
    t.true(ref.timing.every((x: {overhead: number}) => x.overhead > 0));
    const md = fs.readFileSync(path.join(dir, "whole", "compare.md"), "utf8");
    t.regex(md, /\| 2 \| fedavg-d2 \|/);
    t.is((fs.readFileSync(path.join(dir, "cmp.svg"), "utf8").match(/<polyline/g) ?? []).length, 6);

    // killed -9 once two simulations are done, then run again: those two come from the cache
    const out = path.join(dir, "killed");
    const proc = spawnCli(t, args(out));
    const deadline = Date.now() + 120_000;
    while (doneStages(out) < 2 && Date.now() < deadline && proc.child.exitCode === null)
        await new Promise((r) => setTimeout(r, 50));
    await proc.kill9();
    const done = doneStages(out);
    t.true(done >= 2 && done < 8, `${done} simulations done at the kill`);
    const resumed = await runCli(args(out));
    t.is(resumed.code, 0, resumed.stderr);
    t.is(runEvents(resumed.stderr).filter((e) => e.cached).length, done);
    t.deepEqual(JSON.parse(resumed.stdout).rows, ref.rows, "same seeds, same accuracies as the uninterrupted run");
    const again = await runCli(args(out));
    t.true(runEvents(again.stderr).every((e) => e.cached));
    t.deepEqual(JSON.parse(again.stdout).rows, ref.rows);

    const bad = await runCli([...args(path.join(dir, "bad")), "--aggregation", "fedavg"]);
    t.is(bad.code, 2);
    t.regex(bad.stderr, /--compare chooses .* --aggregation/);
    const noSeeds = await runCli(args(path.join(dir, "bad")).filter((a) => a !== "--seeds" && a !== "1,2"));
    t.is(noSeeds.code, 2);
    t.regex(noSeeds.stderr, /--compare needs --seeds/);
});
