// `ppc-gpt fl simulate` with bad arguments: refused before anything is written, and a run that
// fails before its first round leaves no --out folder, so the corrected command can reuse it.
// `fl client` against a dead server or with a model of another base: said at once, clearly.
import {spawn} from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../../ts/gguf/synthetic.js";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {cliPath, runCli, tempDir} from "../../helpers.js";
import {makeToken} from "../server-process.js";
import {models, spawnCli, startServer} from "./http-process.js";

test("fl simulate: bad ranks, unknown dropped clients and failing set-ups leave no half-written --out", async (t) => {
    const dir = tempDir(t);
    const base = path.join(dir, "base.gguf"), data = path.join(dir, "items.jsonl");
    await writeSyntheticModel(base, {architecture: "llama", layers: 3, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 2});
    await writeJsonlAtomic(data, copyTask(36, 5));
    const out = path.join(dir, "sim");
    const args = ["fl", "simulate", "--base", base, "--depths", "3,2", "--clients", "3", "--data", data, "--rounds", "1",
        "--local-steps", "1", "--r", "4", "--lora-alpha", "8", "--threads", "1", "--out", out];
    const cases: [string[], number, RegExp][] = [
        [["--aggregation", "flexlora", "--ranks", "4,0"], 2, /--ranks must be integers in \[1, --r = 4\] \(got 4,0\)/],
        [["--aggregation", "flexlora", "--ranks", "4,9"], 2, /--ranks must be integers in \[1, --r = 4\]/],
        [["--batch-size", "0"], 2, /--batch-size must be a positive integer \(got "0"\)/],
        [["--batch", "4", "--batch-size", "2"], 2, /--batch or --batch-size \(the same option\), not both/],
        [["--secure-aggregation", "--drop-after-masking", "c9-d3"], 2, /--drop-after-masking: no client c9-d3; the clients are c0-d3, c1-d2, c2-d3/],
        [["--target-modules", "attn_qkv"], 1, /no target module attn_qkv/],
        [["--min-clients", "9"], 1, /fewer than minClients = 9/],
        [["--plot", path.join(dir, "none", "rounds.svg")], 1, /--plot .*none\/rounds\.svg: the folder .*none does not exist/],
    ];
    for (const [extra, code, message] of cases) {
        const r = await runCli([...args, ...extra]);
        t.is(r.code, code, `${extra.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
        t.notRegex(r.stderr, /\n\s+at /);
        t.false(fs.existsSync(out), `${extra.join(" ")} left ${out}`);
    }
    // the corrected command runs in the same folder
    const ok = await runCli([...args, "--batch-size", "4"]);
    t.is(ok.code, 0, ok.stderr);
    t.true(fs.existsSync(path.join(out, "server", "rounds", "round-1.gguf")));
});

test("fl client: a server that does not answer is said to be retried, instead of a silent minute", async (t) => {
    const dir = tempDir(t);
    const base = path.join(dir, "base.gguf"), data = path.join(dir, "items.jsonl");
    await writeSyntheticModel(base, {architecture: "llama", layers: 2, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 2});
    await writeJsonlAtomic(data, copyTask(12, 5));
    // a port nobody listens on
    const port = await new Promise<number>((resolve) => {
        const s = net.createServer().listen(0, "127.0.0.1", () => {
            const p = (s.address() as net.AddressInfo).port;
            s.close(() => resolve(p));
        });
    });
    const child = spawn(process.execPath, [cliPath, "fl", "client", "--server", `http://127.0.0.1:${port}`, "--model", base, "--data", data,
        "--work-dir", path.join(dir, "w")], {env: {...process.env, PPC_GPT_TOKEN: "ppc_x"}, stdio: ["ignore", "pipe", "pipe"]});
    t.teardown(() => child.kill("SIGKILL"));
    const line = await new Promise<string>((resolve, reject) => {
        let err = "";
        child.stderr!.on("data", (d) => {
            err += d;
            if (err.includes("\n"))
                resolve(err.split("\n")[0]!);
        });
        child.on("close", (code) => reject(new Error(`exited ${code} before saying anything: ${err}`)));
    });
    t.is(line, `ppc-gpt fl client: no answer from http://127.0.0.1:${port} yet; a server that cannot be reached is retried for up to a minute`);
});

test("fl client: a model not cut from the federation's base is refused at registration, naming the tensor", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    // same depth and names, other widths: a model of another family
    const other = path.join(dir, "other.gguf"), data = path.join(dir, "items.jsonl");
    await writeSyntheticModel(other, {architecture: "llama", layers: 4, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, vocab: 300, seed: 3});
    await writeJsonlAtomic(data, copyTask(12, 5));
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const token = await makeToken(dataDir, "stranger");
    const server = await startServer(t, base, dataDir, ["--rounds", "1", "--round-timeout", "30"]);
    const client = spawnCli(t, ["fl", "client", "--server", server.url, "--model", other, "--data", data, "--work-dir", path.join(dir, "w"),
        "--r", "4", "--lora-alpha", "8", "--json"], {PPC_GPT_TOKEN: token});
    t.is(await client.exited, 1);
    t.regex(client.stderr(), /registration: HTTP 422: client stranger: its model's blk\.0\.\w+\.weight is \[64, \d+\], the base model's is \[32, \d+\]: the model was not cut from this federation's base \(invalid_declaration\)/);
    t.false(server.proc.events.some((e) => e.event === "registered"), "nothing registered");
});
