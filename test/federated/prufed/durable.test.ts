// PruFed state, round files, uploads and the secure-aggregation journal count only once they are on
// disk: each is written through ts/durable-file.ts, whose file and folder fsyncs are observed here
// on real files (fs.promises.open is wrapped to record which paths were fsynced; nothing is faked).
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeLoraAdapter} from "../../../ts/train/adapter.js";
import {FederationServer, roundFile} from "../../../ts/federated/prufed/rounds.js";
import {SecureRoundHost} from "../../../ts/federated/prufed/secure-host.js";
import {SecureClient} from "../../../ts/federated/prufed/secure.js";
import {tempDir} from "../../helpers.js";
import {models} from "./http-process.js";

/** Paths fsynced while `fn` runs (temporary files are reported under the name they are renamed to). */
async function fsynced(fn: () => Promise<void>): Promise<string[]> {
    const synced: string[] = [];
    const open = fs.promises.open;
    fs.promises.open = (async (p: fs.PathLike, ...rest: unknown[]) => {
        const fh = await (open as (...a: unknown[]) => Promise<fs.promises.FileHandle>)(p, ...rest);
        const sync = fh.sync.bind(fh);
        fh.sync = async () => {
            synced.push(path.resolve(String(p)).replace(/\/\.([^/]+)\.tmp-[^/]*$/, "/$1"));
            return sync();
        };
        return fh;
    }) as typeof fs.promises.open;
    try {
        await fn();
    } finally {
        fs.promises.open = open;
    }
    return synced;
}

test.serial("state.json, round-N.json/.gguf, uploads and the secure journal are fsynced, file and folder", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.resolve(dir, "fed");
    let federation!: FederationServer;
    const upload = path.join(dir, "a.gguf");
    const synced = await fsynced(async () => {
        federation = await FederationServer.create(dataDir, {base, aggregation: "layerwise", rounds: 2, seed: 1, r: 4, loraAlpha: 8});
        await federation.register({id: "a", layerMap: [0, 1, 2, 3], weight: 4, r: 4, loraAlpha: 8});
        await federation.startRound();
        await writeLoraAdapter(upload, federation.assignment("a"));
        await federation.submit("a", upload);
        await federation.closeRound();
    });
    for (const file of [path.join(dataDir, "state.json"), roundFile(dataDir, 1), roundFile(dataDir, 1).replace(/\.gguf$/, ".json"),
        path.join(dataDir, "uploads", "round-1", "a.gguf")]) {
        t.true(synced.includes(file), `${file} fsynced (${synced.join(", ")})`);
        t.true(synced.includes(path.dirname(file)), `${path.dirname(file)} fsynced`);
    }

    // the secure journal: every line fsynced before the message counts, and its folder when it is new
    await federation.startRound();
    const members = [{id: "a", layerMap: [0, 1, 2, 3], weight: 4, r: 4, loraAlpha: 8}, {id: "b", layerMap: [0, 1, 2, 3], weight: 4, r: 4, loraAlpha: 8}];
    const client = new SecureClient({id: "a", weight: 4, layerMap: [0, 1, 2, 3], adapter: federation.globalAdapter}, 2, 20);
    const keys = client.advertise();
    const journal = path.join(dataDir, "secagg", "round-2", "journal.jsonl");
    const secure = await fsynced(async () => {
        const host = await SecureRoundHost.open({dataDir, round: 2, sampled: ["a", "b"], previous: federation.globalAdapter, members,
            keysDeadline: Date.now() + 60_000, phaseTimeoutMs: 60_000, method: "layerwise"});
        await host.advertise("a", keys.cPub, keys.sPub);
    });
    t.true(secure.includes(journal), `the journal fsynced (${secure.join(", ")})`);
    t.true(secure.includes(path.dirname(journal)), "its folder fsynced");
    t.true(fs.readFileSync(journal, "utf8").endsWith("\n"));
});
