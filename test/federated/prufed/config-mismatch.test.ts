// `fl server` on an existing data dir with flags that differ from its saved configuration refuses
// to start (exit 2) and names each difference; the same flags resume it. (Before: the saved
// configuration silently won, so a restart "with --secure-aggregation" could run plain rounds.)
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {tempDir} from "../../helpers.js";
import {models, serverArgs, spawnCli, startServer} from "./http-process.js";

test("fl server refuses flags that differ from the data dir's saved configuration, naming each difference", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const saved = ["--rounds", "1", "--clients-per-round", "3", "--round-timeout", "120"];
    const first = await startServer(t, base, dataDir, saved);
    await first.proc.kill9();
    const other = spawnCli(t, serverArgs(base, dataDir, ["--port", "0", "--rounds", "2", "--clients-per-round", "3", "--round-timeout", "120",
        "--secure-aggregation", "--secagg-threshold", "3"]));
    t.is(await other.exited, 2, other.stderr());
    t.regex(other.stderr(), /holds a federation started with another configuration/);
    t.regex(other.stderr(), /--rounds: saved 1, given 2/);
    t.regex(other.stderr(), /--secure-aggregation: saved false, given true/);
    t.regex(other.stderr(), /--secagg-threshold: saved unset, given 3/);
    t.notRegex(other.stderr(), /--clients-per-round/);
    // the saved flags resume it (the refused start released the data dir)
    const again = await startServer(t, base, dataDir, saved);
    t.is(again.proc.events.find((e) => e.event === "listening")!.rounds, 1);
});
