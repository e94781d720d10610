// Without --json, `fl server` and `fl client` log one readable line per event on stderr (a terminal
// or a service's journal alike), made from the events the processes really emit.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {flEventLine} from "../../../ts/cli/fl.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {tempDir} from "../../helpers.js";
import {makeToken} from "../server-process.js";
import {models, spawnCli, startServer} from "./http-process.js";

test("fl client logs readable lines without --json; every server event has a line of its own", async (t) => {
    const dir = tempDir(t);
    const {base, cut} = await models(dir);
    const dataDir = path.join(dir, "server"), data = path.join(dir, "items.jsonl");
    fs.mkdirSync(dataDir);
    await writeJsonlAtomic(data, copyTask(16, 3));
    const token = await makeToken(dataDir, "a-d3");
    const server = await startServer(t, base, dataDir, ["--rounds", "1", "--clients-per-round", "1", "--round-timeout", "120"]);
    const client = spawnCli(t, ["fl", "client", "--server", server.url, "--model", cut.d3, "--data", data, "--work-dir", path.join(dir, "w"),
        "--local-steps", "1", "--r", "4", "--lora-alpha", "8", "--batch", "4", "--threads", "1"], {PPC_GPT_TOKEN: token});
    t.is(await client.exited, 0, client.stderr());
    const lines = client.stderr().trim().split("\n");
    t.regex(lines[0], /^registered as a-d3: base layers 0,2,3, \d+ training and \d+ held-out items$/);
    t.true(lines.some((l) => /^round 1: loss \d+\.\d{4}, held-out acc \d\.\d{3} -> \d\.\d{3}, \d+ bytes down, \d+ up, \d+\.\d s: accepted$/.test(l)),
        lines.join("\n"));
    t.true(lines.some((l) => /^federation finished/.test(l)));
    t.false(lines.some((l) => l.startsWith("{")), "no raw JSON");
    await server.proc.waitFor((e) => e.event === "finished", "finished");
    const kinds = new Set(server.proc.events.filter((e) => e.event !== "listening").map((e) => e.event));
    t.deepEqual([...kinds].sort(), ["finished", "registered", "round_closed", "round_started", "upload_accepted"]);
    for (const e of server.proc.events.filter((x) => x.event !== "listening"))
        t.false(flEventLine(e).startsWith("{"), `a line for ${e.event}`);
    const closed = flEventLine(server.proc.events.find((e) => e.event === "round_closed")!);
    t.regex(closed, /^round 1 closed: a-d3 acc \d\.\d{3} -> .*round-1\.gguf$/);
});
