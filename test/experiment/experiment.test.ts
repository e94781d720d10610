// `ppc-gpt experiment`: the grid, the cache keys, the tables' statistics (against a plain
// computation), and a real run of a reduced config through the CLI that resumes from its cache.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {canonicalJson, hashKey, StageCache} from "../../ts/experiment/cache.js";
import {checkConfig, loadExperimentConfig, smallConfig, type ExperimentConfig} from "../../ts/experiment/config.js";
import {copyWordItems} from "../../ts/experiment/data.js";
import {estimateGpuTime} from "../../ts/experiment/estimate.js";
import {cellKey, expandCells} from "../../ts/experiment/runner.js";
import {itemText, parseItemText} from "../../ts/experiment/stages.js";
import {ablationSvg, buildTables, type CellRecord} from "../../ts/experiment/tables.js";
import {paperConfig} from "../../ts/experiment/config.js";
import {readGguf} from "../../ts/gguf/read.js";
import {quantizeModel} from "../../ts/quantize/quantize.js";
import {hasShared, runCli, sharedDir, tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "../synth/openai-server.js";

test("the grid: every method × task × seed, plus one PPC-GPT cell per new ablation value; keys follow what a method reads", (t) => {
    const cells = expandCells(smallConfig);
    const c = smallConfig;
    const main = c.tasks.length * c.methods.length * c.seeds.length;
    const d = c.defaults as unknown as Record<string, unknown>;
    const ablated = Object.entries(c.ablations).reduce((s, [f, vs]) => s + (vs as unknown[]).filter((v) => v !== d[f]).length, 0)
        * c.ablationTasks.length * c.ablationSeeds.length;
    t.is(cells.length, main + ablated);
    t.is(new Set(cells.map((x) => cellKey(c, x))).size, cells.length);
    // DenseSFT reads no ablation factor: its key ignores ε; PPC-GPT's does not
    const dense = cells.find((x) => x.method === "dense-sft")!, ppc = cells.find((x) => x.method === "ppc-gpt")!;
    t.is(cellKey(c, {...dense, settings: {...dense.settings, epsilon: 99}}), cellKey(c, dense));
    t.not(cellKey(c, {...ppc, settings: {...ppc.settings, epsilon: 99}}), cellKey(c, ppc));
    t.not(cellKey({...c, train: {...c.train, client: {...c.train.client, learningRate: 1}}}, dense), cellKey(c, dense));
    t.is(canonicalJson({b: 1, a: [2, {d: 3, c: 4}]}), '{"a":[2,{"c":4,"d":3}],"b":1}');
    t.is(hashKey({a: 1, b: 2}), hashKey({b: 2, a: 1}));
    const est = estimateGpuTime(paperConfig, expandCells(paperConfig))!;
    t.true(est.hours.total > 0 && Math.abs(est.hours.total - (est.hours.synth + est.hours.train + est.hours.eval)) < 1e-9);
});

test("stage cache: a finished stage is reused, an interrupted one is redone", async (t) => {
    const dir = tempDir(t);
    const cache = new StageCache(dir);
    let calls = 0;
    const fn = async (d: string) => {
        calls++;
        fs.writeFileSync(path.join(d, "out.txt"), "x");
        return {value: calls};
    };
    t.is((await cache.stage("s", {a: 1}, fn)).value, 1);
    t.is((await cache.stage("s", {a: 1}, fn)).value, 1);
    t.is((await cache.stage("s", {a: 2}, fn)).value, 2);
    // a folder without result.json (a killed run) starts over
    fs.rmSync(path.join(cache.folder("s", {a: 2}), "result.json"));
    fs.writeFileSync(path.join(cache.folder("s", {a: 2}), "partial"), "");
    t.is((await cache.stage("s", {a: 2}, fn)).value, 3);
    t.false(fs.existsSync(path.join(cache.folder("s", {a: 2}), "partial")));
});

test("tables: mean over seeds; the standard error combines seeds and the evaluation; one seed gives the evaluation's", (t) => {
    const config: ExperimentConfig = {...smallConfig, methods: ["dense-sft", "ppc-gpt"], tasks: [smallConfig.tasks[0]], seeds: [1, 2, 3],
        ablations: {ratio: [0, 0.5]}, ablationTasks: ["copy-word"], ablationSeeds: [1]};
    const acc = (x: number) => ({n: 50, acc: x, acc_stderr: 0.07, acc_norm: x, acc_norm_stderr: 0.07, prompt_prefix: ""});
    const rec = (method: "dense-sft" | "ppc-gpt", seed: number, S: number | null, C: number, settings = config.defaults): CellRecord =>
        ({key: `${method}${seed}${settings.ratio}`, method, task: "copy-word", seed, group: "main", settings, S: S === null ? null : acc(S), C: acc(C),
            details: {}, seconds: 1});
    const records = [rec("dense-sft", 1, null, 0.5), rec("dense-sft", 2, null, 0.6), rec("dense-sft", 3, null, 0.9),
        rec("ppc-gpt", 1, 0.3, 0.4), rec("ppc-gpt", 2, 0.32, 0.44), rec("ppc-gpt", 3, 0.28, 0.5),
        rec("ppc-gpt", 1, 0.2, 0.25, {...config.defaults, ratio: 0.5})];
    const [main, ratio] = buildTables(config, records);
    // DenseSFT C: 50, 60, 90 -> mean 66.67, variance over seeds ((−16.67)²+(−6.67)²+23.33²)/2 = 433.3;
    // se² = 433.3 / 3 + 7² (every seed scored on the same items: the evaluation's error stays)
    const c = main.rows[0].cells[1]!;
    t.true(Math.abs(c.mean - 200 / 3) < 1e-9);
    const seedVar = (((50 - 200 / 3) ** 2) + ((60 - 200 / 3) ** 2) + ((90 - 200 / 3) ** 2)) / 2;
    t.true(Math.abs(c.stderr - Math.sqrt(seedVar / 3 + 49)) < 1e-9, `${c.stderr}`);
    t.is(main.rows[0].cells[0], null, "DenseSFT has no server stage");
    t.true(Math.abs(main.rows[1].cells[0]!.mean - 30) < 1e-9);
    // ablation row ratio 0.5: one seed, the evaluation's stderr
    t.deepEqual(ratio.rows.map((r) => r.label), ["0", "0.5"]);
    t.is(ratio.rows[0].cells[1], null);
    t.true(Math.abs(ratio.rows[1].cells[1]!.mean - 25) < 1e-9 && Math.abs(ratio.rows[1].cells[1]!.stderr - 7) < 1e-9);
    const svg = ablationSvg(ratio, "pruning ratio");
    t.regex(svg, /^<svg [^>]*>[\s\S]*<\/svg>\n$/);
    t.true(svg.includes("<circle"));
});

test("items in the DP generator's text form parse back; junk does not", (t) => {
    const [item] = copyWordItems(3, 1, "x");
    const text = itemText(item);
    const back = parseItemText(` ${text}`, ["A", "B", "C", "D"], "y")!;
    t.deepEqual(back.choices.map((c) => c.text), item.choices.map((c) => c.text));
    t.is(back.answer, "ABCD"[item.choices.findIndex((c) => c.label === item.answer)]);
    t.is(parseItemText("Once upon a time", ["A", "B"], "z"), undefined);
    t.is(parseItemText("Question: q\nA. x\nB. x\nAnswer: A", ["A", "B"], "z"), undefined, "duplicate choices");
});

test("a reduced config runs through the CLI, writes results and tables, and a rerun resumes from the cache", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const cfg = path.join(dir, "tiny.json");
    fs.writeFileSync(cfg, JSON.stringify({
        base: "small", description: "test", methods: ["zero-shot", "dense-sft", "plain-c"], seeds: [1, 2],
        tasks: [{name: "copy-word", eval: "mc", source: {generated: "copy-word"}, trainItems: 12, evalItems: 20}],
        ablations: {}, ablationTasks: [],
        train: {...smallConfig.train, client: {...smallConfig.train.client, steps: 4}},
    }));
    const out = path.join(dir, "out");
    const env = {...process.env, PPC_SHARED_DIR: sharedDir};
    const r = await runCli(["experiment", cfg, "-o", out, "--threads", "2", "--json"], {env});
    t.is(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    t.is(summary.cells, 6);
    t.is(summary.ran, 6);
    t.is(summary.failed, 0);
    const results = fs.readdirSync(path.join(out, "results"));
    t.is(results.length, 6);
    const tables = JSON.parse(fs.readFileSync(path.join(out, "tables.json"), "utf8"));
    const cells: CellRecord[] = tables.cells;
    // the table's DenseSFT C is the plain mean of the two seeds' accuracies
    const dense = cells.filter((c) => c.method === "dense-sft").map((c) => 100 * c.C!.acc);
    t.is(dense.length, 2);
    t.true(Math.abs(tables.tables[0].rows[1].cells[1].mean - (dense[0] + dense[1]) / 2) < 1e-9);
    // Plain-C removed layers, and trained models carry their prefix into evaluation
    const plain = cells.find((c) => c.method === "plain-c")!;
    t.true((plain.details.removedLayers as number[]).length >= 1);
    t.is(plain.C!.prompt_prefix, "[label] ");
    t.is(cells.find((c) => c.method === "zero-shot")!.C!.prompt_prefix, "");
    const md = fs.readFileSync(path.join(out, "tables.md"), "utf8");
    t.regex(md, /\| DenseSFT \| — \| \d+\.\d ± \d+\.\d \|/);

    // rerun: everything cached; remove one result: only that cell runs again
    const again = JSON.parse((await runCli(["experiment", cfg, "-o", out, "--json"], {env})).stdout);
    t.is(again.ran, 0);
    t.is(again.cached, 6);
    fs.rmSync(path.join(out, "results", results[0]));
    const third = JSON.parse((await runCli(["experiment", cfg, "-o", out, "--json"], {env})).stdout);
    t.is(third.ran, 1);
    t.is(third.cached, 5);
    const bad = await runCli(["experiment", path.join(dir, "missing.json")], {env});
    t.is(bad.code, 2);
    t.regex(bad.stderr, /missing\.json: no such config file/);
});

test("a config file with a misspelt field is refused naming it; every real field is accepted", async (t) => {
    const dir = tempDir(t);
    const write = (name: string, value: object) => {
        const f = path.join(dir, name);
        fs.writeFileSync(f, JSON.stringify(value));
        return f;
    };
    const typo = write("typo.json", {base: "small", seed: [1, 2, 3]});
    t.throws(() => loadExperimentConfig(typo), {message: /typo\.json: unknown field "seed" \(the fields: base, name, .*seeds/});
    const r = await runCli(["experiment", typo, "--dry-run"]);
    t.is(r.code, 2);
    t.regex(r.stderr, /unknown field "seed"/);
    // optional fields of either built-in config are fields too
    const full = write("full.json", {base: "small", seeds: [4], threads: 2, gpuLayers: 0, embeddings: "stories260K.gguf",
        throughput: {generatorTokensPerSecond: 1, trainTokensPerSecond: 1, evalTokensPerSecond: 1}});
    const c = loadExperimentConfig(full);
    t.deepEqual(c.seeds, [4]);
    t.is(c.gpuLayers, 0);
});

test("the quantization ablation: unquantized, q4_k_m without and with the task imatrix, with sizes; cached and resumable", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const dir = tempDir(t);
    const cfg = path.join(dir, "quant.json");
    fs.writeFileSync(cfg, JSON.stringify({
        base: "small", description: "test", methods: ["ppc-gpt"], seeds: [1],
        generator: {url: gen.baseUrl, modelName: "teacher"},
        tasks: [{name: "copy-word", eval: "mc", source: {generated: "copy-word"}, trainItems: 6, evalItems: 12}],
        defaults: {...smallConfig.defaults, k: 1}, ablations: {quantize: ["none", "q4_k_m", "q4_k_m+imatrix"]}, ablationTasks: ["copy-word"],
        train: {...smallConfig.train, server: {...smallConfig.train.server, steps: 2}, client: {...smallConfig.train.client, steps: 2}},
    }));
    const out = path.join(dir, "out");
    const env = {...process.env, PPC_SHARED_DIR: sharedDir};
    const r = await runCli(["experiment", cfg, "-o", out, "--threads", "2", "--json"], {env});
    t.is(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    t.is(summary.cells, 3, "the main cell is the unquantized row");
    t.is(summary.failed, 0);
    const tables = JSON.parse(fs.readFileSync(path.join(out, "tables.json"), "utf8"));
    const cells: CellRecord[] = tables.cells;
    const q = (s: string) => cells.find((c) => (c.settings.quantize ?? "none") === s)!;
    const plain = q("q4_k_m").details.quantization as {imatrix: string; imatrixEntries: number; sizeBefore: number; sizeAfter: number};
    const task = q("q4_k_m+imatrix").details.quantization as typeof plain;
    t.is(plain.imatrix, "none");
    t.is(task.imatrix, "task");
    t.true(task.imatrixEntries > 0);
    // both quantize the same merged model, which the unquantized cell hands over as it is
    t.is(plain.sizeBefore, q("none").details.modelBytes as number);
    t.is(task.sizeBefore, plain.sizeBefore);
    t.is(q("q4_k_m").details.modelBytes as number, plain.sizeAfter);
    t.true(plain.sizeAfter < plain.sizeBefore / 2, `${plain.sizeBefore} -> ${plain.sizeAfter}`);
    for (const c of cells)
        t.true(c.S !== null && c.C !== null, `${c.settings.quantize}: S and C`);
    const table = tables.tables.find((x: {rowName: string}) => x.rowName === "quantize");
    t.deepEqual(table.rows.map((x: {label: string}) => x.label),
        ["unquantized", "quantized (q4_k_m, no imatrix)", "quantized (q4_k_m, task imatrix)"]);
    t.deepEqual(table.sizeColumns, ["copy-word model size"]);
    t.deepEqual(table.rows.map((x: {sizes: number[]}) => x.sizes[0]), [plain.sizeBefore, plain.sizeAfter, task.sizeAfter]);
    t.is(table.rows[2].cells[0].mean, 100 * q("q4_k_m+imatrix").S!.acc);
    t.regex(fs.readFileSync(path.join(out, "tables.md"), "utf8"), /\| quantized \(q4_k_m, task imatrix\) \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| [\d.]+ KiB \|/);

    // the stage is llama.cpp's quantizer: without the imatrix, the same bytes as quantizeModel of the merged model
    const stages = fs.readdirSync(path.join(out, "stages"));
    const merged = path.join(out, "stages", stages.find((d) => d.startsWith("merge-"))!, "merged.gguf");
    const quantized = stages.filter((d) => d.startsWith("quantize-")).map((d) => path.join(out, "stages", d, "quantized.gguf"));
    t.is(quantized.length, 2);
    const imatrixOf = async (f: string) => (await readGguf(f)).value("ppc_gpt.quantization.imatrix");
    const byKind = new Map(await Promise.all(quantized.map(async (f) => [await imatrixOf(f), f] as const)));
    const direct = path.join(dir, "direct.gguf");
    await quantizeModel(merged, direct, {type: "q4_k_m", threads: 2});
    t.true(fs.readFileSync(direct).equals(fs.readFileSync(byKind.get("none")!)));
    t.is((await readGguf(byKind.get("task")!)).value("quantize.imatrix.entries_count"), task.imatrixEntries);

    // resumable: a removed cell runs again, reusing its cached quantize stage
    const again = JSON.parse((await runCli(["experiment", cfg, "-o", out, "--json"], {env})).stdout);
    t.is(again.ran, 0);
    t.is(again.cached, 3);
    const stamps = () => quantized.map((f) => fs.statSync(path.join(path.dirname(f), "result.json")).mtimeMs);
    const before = stamps();
    fs.rmSync(path.join(out, "results", `${q("q4_k_m+imatrix").key}.json`));
    const third = JSON.parse((await runCli(["experiment", cfg, "-o", out, "--json"], {env})).stdout);
    t.is(third.ran, 1);
    t.deepEqual(stamps(), before, "the quantize stages are reused, not run again");
});

test("a quantize setting that is not a type, type+imatrix or none is refused naming the field", (t) => {
    const c: ExperimentConfig = {...smallConfig, ablations: {quantize: ["q4_k_m+task"]}};
    t.throws(() => checkConfig(c), {message: /"quantize" value "q4_k_m\+task" must be "none", a type or a type\+imatrix/});
    t.throws(() => checkConfig({...smallConfig, defaults: {...smallConfig.defaults, quantize: "q9"}}), {message: /"quantize"/});
    checkConfig({...smallConfig, defaults: {...smallConfig.defaults, quantize: "q8_0+imatrix"}});
    t.pass();
});
