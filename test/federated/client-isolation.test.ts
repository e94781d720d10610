// Two client processes with their own tokens at once against one server process: each sees and
// touches only its own job; the other's job is a 404 for it. Plus the client's usage errors.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {hasShared, runCli, sharedDir, stories260K, tempDir} from "../helpers.js";
import {clientEnv, createToken, spawnClient, startFederation, writePrivateItems} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("two clients at once: each sees only its own job; the other's is not found", async (t) => {
    const dir = tempDir(t);
    const {server, serverDir: srvDir} = await startFederation(t, dir);
    const tokens = {acme: await createToken(srvDir, "acme"), bolt: await createToken(srvDir, "bolt")};
    const submit = (name: "acme" | "bolt") => {
        const priv = writePrivateItems(dir, 6, name);
        return spawnClient(["submit", "--server", server.url, "--data", priv.file, "--holdout", "0.2", "--k", "1", "--server-steps", "1",
            "--batch-size", "2", "--state-dir", path.join(dir, `state-${name}`), "--threads", "1"], tokens[name]).done;
    };
    const [a, b] = await Promise.all([submit("acme"), submit("bolt")]);
    t.is(a.code, 0, a.stderr);
    t.is(b.code, 0, b.stderr);
    const jobA = a.stdout.trim(), jobB = b.stdout.trim();
    t.not(jobA, jobB);
    const run = async (args: string[], name: "acme" | "bolt") => spawnClient([...args, "--server", server.url], tokens[name]).done;

    const [waitA, waitB] = await Promise.all([run(["wait", jobA, "--json"], "acme"), run(["wait", jobB, "--json"], "bolt")]);
    t.is(waitA.code, 0, waitA.stderr);
    t.is(waitB.code, 0, waitB.stderr);
    t.is(JSON.parse(waitA.stdout).status, "succeeded");

    const listA = JSON.parse((await run(["jobs", "--json"], "acme")).stdout).jobs.map((j: {id: string}) => j.id);
    const listB = JSON.parse((await run(["jobs", "--json"], "bolt")).stdout).jobs.map((j: {id: string}) => j.id);
    t.deepEqual(listA, [jobA]);
    t.deepEqual(listB, [jobB]);
    for (const [job, other] of [[jobB, "acme"], [jobA, "bolt"]] as const) {
        for (const verb of [["status", job], ["wait", job], ["fetch", job, "-o", path.join(dir, "stolen.gguf")], ["cancel", job]]) {
            const r = await run(verb, other);
            t.is(r.code, 1, `${verb[0]} of another client's job must fail`);
            t.regex(r.stderr, /404/, `${verb[0]}: ${r.stderr}`);
        }
    }
    t.false(fs.existsSync(path.join(dir, "stolen.gguf")));
    // Both jobs are intact for their owners.
    t.is(JSON.parse((await run(["status", jobA, "--json"], "acme")).stdout).status, "succeeded");
    t.is(JSON.parse((await run(["status", jobB, "--json"], "bolt")).stdout).status, "succeeded");
});

maybe("client usage: no token on the command line, a token from the environment or a file, clear errors", async (t) => {
    const dir = tempDir(t);
    const priv = writePrivateItems(dir, 3, "x");
    const env = clientEnv();
    delete env.PPC_GPT_TOKEN;
    const cli = (args: string[], extra: NodeJS.ProcessEnv = {}) => runCli(["client", ...args], {env: {...env, ...extra}});
    const base = ["submit", "--server", "http://127.0.0.1:9", "--data", priv.file, "--state-dir", path.join(dir, "s")];
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
        [[...base, "--token", "ppc_abc"], {}, /never put a token on the command line/],
        [base, {}, /no token: set PPC_GPT_TOKEN or give --token-file/],
        [[...base, "--token-file", path.join(dir, "missing")], {}, /--token-file .*missing: cannot read/],
        [["submit", "--data", priv.file], {PPC_GPT_TOKEN: "ppc_x"}, /--server <url> is required/],
        [["submit", "--server", "http://127.0.0.1:9"], {PPC_GPT_TOKEN: "ppc_x"}, /give the private data/],
        [[...base, "--ratio", "1"], {PPC_GPT_TOKEN: "ppc_x"}, /--ratio must be a number in \[0, 1\)/],
        [[...base, "--k", "0"], {PPC_GPT_TOKEN: "ppc_x"}, /--k must be an integer in \[1, 64\]/],
        [[...base, "--server-steps", "2.5"], {PPC_GPT_TOKEN: "ppc_x"}, /--server-steps must be an integer/],
        [[...base, "--epsilon", "-1"], {PPC_GPT_TOKEN: "ppc_x"}, /--epsilon must be a number > 0/],
        [[...base, "--task", "nope"], {PPC_GPT_TOKEN: "ppc_x"}, /--task: unknown dataset "nope"/],
        [[...base, "--holdout", "0.2", "--eval-data", priv.file], {PPC_GPT_TOKEN: "ppc_x"}, /--holdout splits --data/],
        [["fetch", "job_x", "--server", "http://127.0.0.1:9"], {PPC_GPT_TOKEN: "ppc_x"}, /-o\/--output <model.gguf> is required/],
        [["finish", "--data", priv.file], {}, /--model <gguf> and -o\/--output <adapter.gguf> are required/],
    ];
    for (const [args, extra, message] of cases) {
        const r = await cli(args, extra);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message, args.join(" "));
    }
    // A dead server: exit 1, naming the server; the token file's first line is used.
    const tokenFile = path.join(dir, "token");
    fs.writeFileSync(tokenFile, "ppc_fromfile\n");
    const dead = await cli([...base, "--token-file", tokenFile]);
    t.is(dead.code, 1, dead.stderr);
    t.regex(dead.stderr, /http:\/\/127\.0\.0\.1:9\/v1\/info: cannot reach the server/);
    t.false(fs.existsSync(path.join(dir, "s", "perturbed.jsonl")), "nothing perturbed before the server is known");
});

maybe("client finish: label retraining on the private items, S and C on the held-out ones (ARC-Easy in its own format)", async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, "client-lora.gguf");
    const dev = path.join(sharedDir, "data", "arc", "ARC-Easy-Dev.jsonl");
    const r = await runCli(["client", "finish", "--model", stories260K, "--task", "arc-easy", "--data", dev, "--limit", "8", "--holdout", "0.5",
        "--eval-limit", "6", "--client-steps", "3", "--threads", "2", "-o", out, "--json"], {env: clientEnv()});
    t.is(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout);
    t.is(rep.evalTask, "arc-easy");
    t.is(rep.S.items, 6);
    t.is(rep.C.items, 6);
    t.is(rep.training.steps, 3);
    t.is(rep.training.items, 8);
    t.true(fs.existsSync(out));
    // S is the received model itself: the same accuracy `ppc-gpt eval` gives on the held-out items,
    // which are those whose id hashes below the share (the first 6 of them).
    const lines = fs.readFileSync(dev, "utf8").trim().split("\n");
    const held = lines.filter((l) => {
        const h = crypto.createHash("sha256").update(`ppc-gpt/holdout/v1\n${JSON.parse(l).id}`).digest();
        return h.readUInt32BE(0) / 2 ** 32 < 0.5;
    }).slice(0, 6);
    const heldFile = path.join(dir, "held.jsonl");
    fs.writeFileSync(heldFile, held.join("\n") + "\n");
    const ev = await runCli(["eval", stories260K, "--task", "arc-easy", "--data", heldFile, "--threads", "2", "--json"]);
    t.is(ev.code, 0, ev.stderr);
    const e = JSON.parse(ev.stdout);
    t.is(rep.S.acc, e.acc);
    t.is(rep.S.acc_norm, e.acc_norm);
    t.true(rep.C.acc >= 0 && rep.C.acc <= 1);
});
