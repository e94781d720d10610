// ppc-gpt's llama.cpp patches (native/patches, one per change) and their probes
// (scripts/llama-source.mjs: whether a source already has a patch's change, as node-llama-cpp's
// canSkip()): every patch has a probe, each probe names lines its own patch adds (or removes), says
// "not there" on the llama.cpp commit that node-llama-cpp ships and "there" once the patches are
// applied, so that a llama.cpp bump that merges a change skips that patch and only that one.
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";
import test from "ava";
import {repoRoot, tempDir} from "../helpers.js";

interface Probe {
    file: string;
    includes?: string;
    excludes?: string;
}

interface LlamaSource {
    ppcPatchProbes: Record<string, Probe[]>;
    sourceHasPatch: (name: string, read: (file: string) => string | undefined) => boolean;
    ensureLlamaSource: (cacheDir: string, log?: (line: string) => void) => string;
}

const patchDir = path.join(repoRoot, "native", "patches");
const patches = fs.readdirSync(patchDir).filter((f) => f.endsWith(".diff")).sort();
const load = async () => (await import(pathToFileURL(path.join(repoRoot, "scripts", "llama-source.mjs")).href)) as LlamaSource;

/** The lines a patch adds ("+") or removes ("-"), without the marker. */
function changedLines(name: string, marker: "+" | "-"): string[] {
    return fs.readFileSync(path.join(patchDir, name), "utf8").split("\n")
        .filter((l) => l.startsWith(marker) && !l.startsWith(`${marker}${marker}${marker} `)).map((l) => l.slice(1));
}

test("every patch has a probe, and every probe names a patch and lines that patch changes in the file it names", async (t) => {
    const {ppcPatchProbes} = await load();
    t.deepEqual(Object.keys(ppcPatchProbes).sort(), patches);
    for (const name of patches) {
        const text = fs.readFileSync(path.join(patchDir, name), "utf8");
        for (const probe of ppcPatchProbes[name]!) {
            t.true(text.includes(`diff --git a/${probe.file} b/${probe.file}`), `${name} patches ${probe.file}`);
            t.true((probe.includes === undefined) !== (probe.excludes === undefined), `${name}: includes or excludes`);
            if (probe.includes !== undefined)
                t.true(changedLines(name, "+").some((l) => l.includes(probe.includes!)), `${name} adds "${probe.includes}"`);
            else
                t.true(changedLines(name, "-").some((l) => l.includes(probe.excludes!)), `${name} removes "${probe.excludes}"`);
        }
    }
});

test("the probes say no patch is in the shipped llama.cpp commit and every patch is in the patched checkout", async (t) => {
    const {ensureLlamaSource, sourceHasPatch} = await load();
    const log: string[] = [];
    const dir = ensureLlamaSource(tempDir(t), (line) => log.push(line));
    t.false(log.some((l) => l.includes("already has")), log.join("\n"));
    const source = JSON.parse(fs.readFileSync(path.join(dir, ".ppc-gpt-source.json"), "utf8")) as {ppcPatches: string[]; ppcPatchesSkipped: string[]};
    t.deepEqual(source.ppcPatches, patches);
    t.deepEqual(source.ppcPatchesSkipped, []);
    // the clone's HEAD is the commit as shipped: the patches are working-tree changes on top of it
    const atHead = (file: string) => {
        try {
            return execFileSync("git", ["show", `HEAD:${file}`], {cwd: dir, encoding: "utf8", maxBuffer: 1 << 28, stdio: ["ignore", "pipe", "ignore"]});
        } catch {
            return undefined;
        }
    };
    const patched = (file: string) => fs.readFileSync(path.join(dir, file), "utf8");
    for (const name of patches) {
        t.false(sourceHasPatch(name, atHead), `${name}: not in the shipped commit`);
        t.true(sourceHasPatch(name, patched), `${name}: in the patched checkout`);
    }
    t.false(sourceHasPatch("9999-unknown.diff", patched), "a patch without a probe is always applied");
});
