// `ppc-gpt worker` refuses what cannot work, with exit code 2 for usage and 1 for the rest, and a
// message naming the problem: no store, a bad stage list, synth without a generator, a source
// model that is not the server's.
import test from "ava";
import {PostgresJobStore} from "../../ts/federated/store-postgres.js";
import {hasShared, llama2TinyRandom, runCli, stories260K, tempDir} from "../helpers.js";
import {PostgresCluster, skipPostgres} from "./postgres-cluster.js";

test.serial("usage errors exit 2 and say what is wrong", async (t) => {
    const dir = tempDir(t);
    const cases: [string[], RegExp][] = [
        [["--artifacts", dir, "--model", "m.gguf"], /--store postgres:\/\/… is required/],
        [["--store", "/var/lib/db", "--artifacts", dir, "--model", "m.gguf"], /--store postgres:\/\/… is required/],
        [["--store", "postgres://x@127.0.0.1:1/x", "--model", "m.gguf"], /--artifacts <dir> is required/],
        [["--store", "postgres://x@127.0.0.1:1/x", "--artifacts", dir, "--model", "m.gguf", "--stages", "bi,gpu"], /unknown stage\(s\) gpu/],
        [["--store", "postgres://x@127.0.0.1:1/x", "--artifacts", dir, "--model", "m.gguf"], /the synth stage needs a generator/],
        [["--store", "postgres://x@127.0.0.1:1/x", "--artifacts", dir, "--model", "m.gguf", "--stages", "train", "--lease-seconds", "3",
            "--heartbeat-seconds", "2"], /--lease-seconds \(3\) must be at least twice --heartbeat-seconds \(2\)/],
    ];
    for (const [args, message] of cases) {
        const r = await runCli(["worker", ...args]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
});

(hasShared && !skipPostgres ? test.serial : test.skip)("a dead database and a source model that is not the server's exit 1 with the reason", async (t) => {
    const dir = tempDir(t);
    const dead = await runCli(["worker", "--store", "postgres://postgres@127.0.0.1:1/postgres", "--artifacts", dir, "--model", stories260K,
        "--stages", "train", "--store-wait-seconds", "0"]);
    t.is(dead.code, 1);
    t.regex(dead.stderr, /cannot open the job store postgres:\/\/postgres@127\.0\.0\.1:1\/postgres/);

    const pg = await PostgresCluster.create(t);
    const store = await PostgresJobStore.open(pg.url);
    await store.setSetting("source", {name: "stories260K", sha256: "0".repeat(64)});
    await store.close();
    const wrong = await runCli(["worker", "--store", pg.url, "--artifacts", dir, "--model", llama2TinyRandom, "--stages", "train"]);
    t.is(wrong.code, 1);
    t.regex(wrong.stderr, /is not the server's stories260K .*every worker must hold the same M_S/);
});

test.serial("a worker waiting for a store that is down says so, then exits 1 with the reason", async (t) => {
    const dir = tempDir(t);
    const dead = await runCli(["worker", "--store", "postgres://x:secret@127.0.0.1:1/x", "--artifacts", dir, "--model", process.execPath,
        "--stages", "train", "--store-wait-seconds", "10"]);
    t.is(dead.code, 1, dead.stderr);
    t.regex(dead.stderr, /starting: connecting to postgres:\/\/x:\*\*\*@127\.0\.0\.1:1\/x \(a store that cannot be reached is retried for up to 10 s/);
    t.regex(dead.stderr, /error: cannot open the job store postgres:\/\/x:\*\*\*@127\.0\.0\.1:1\/x/);
    t.notRegex(dead.stderr, /secret/);
});
