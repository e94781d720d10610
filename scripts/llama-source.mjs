// Materialises the llama.cpp source tree that the pinned node-llama-cpp was built from.
// node-llama-cpp ships it as llama/gitRelease.bundle (a git bundle): cloning it needs no network.
// The same patches that node-llama-cpp applies when it builds from source are applied here, so the
// addon and node-llama-cpp run one llama.cpp. ppc-gpt's own additive patches (native/patches/*.diff,
// e.g. the LoRA training step) are applied after them; node-llama-cpp's binary is unaffected.
import {createHash} from "node:crypto";
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

/** Directory of the installed node-llama-cpp package. */
export function nodeLlamaCppDir() {
    // The package's "exports" hides package.json: resolve its entry point and walk up.
    let dir = path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp")));
    while (!fs.existsSync(path.join(dir, "package.json")) || path.basename(dir) !== "node-llama-cpp") {
        const parent = path.dirname(dir);
        if (parent === dir)
            throw new Error("cannot locate the node-llama-cpp package directory");
        dir = parent;
    }
    return dir;
}

const ppcPatchDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "native", "patches");

/** ppc-gpt's patches, in order, and a hash of their names and contents (part of the checkout's name). */
function ppcPatches() {
    const names = fs.existsSync(ppcPatchDir) ? fs.readdirSync(ppcPatchDir).filter((f) => f.endsWith(".diff")).sort() : [];
    const hash = createHash("sha256");
    for (const name of names)
        hash.update(name).update("\0").update(fs.readFileSync(path.join(ppcPatchDir, name))).update("\0");
    return {names, hash: hash.digest("hex").slice(0, 12)};
}

function git(args, cwd) {
    return execFileSync("git", args, {cwd, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8"}).trim();
}

/**
 * Returns the path of a llama.cpp checkout under `cacheDir`, cloning it from the bundle when it is
 * missing or was cloned from another node-llama-cpp version.
 */
export function ensureLlamaSource(cacheDir, log = console.error) {
    const nlcDir = nodeLlamaCppDir();
    const nlcVersion = JSON.parse(fs.readFileSync(path.join(nlcDir, "package.json"), "utf8")).version;
    const bundle = path.join(nlcDir, "llama", "gitRelease.bundle");
    if (!fs.existsSync(bundle))
        throw new Error(`node-llama-cpp ${nlcVersion} has no llama/gitRelease.bundle at ${bundle}; ` +
            "ppc-gpt needs the llama.cpp source it ships");

    const ppc = ppcPatches();
    // A changed patch set gets a checkout of its own, so that a stale one is never built.
    const dest = path.join(cacheDir, ppc.names.length ? `llama.cpp-${nlcVersion}-ppc-${ppc.hash}` : `llama.cpp-${nlcVersion}`);
    const stamp = path.join(dest, ".ppc-gpt-source.json");
    if (fs.existsSync(stamp))
        return dest;

    fs.mkdirSync(cacheDir, {recursive: true});
    const tmp = `${dest}.tmp-${process.pid}`;
    fs.rmSync(tmp, {recursive: true, force: true});
    log(`ppc-gpt: cloning llama.cpp from ${path.relative(process.cwd(), bundle) || bundle}`);
    git(["clone", "--quiet", bundle, tmp]);

    const patchDir = path.join(nlcDir, "llama", "patches");
    const applied = [];
    if (fs.existsSync(patchDir)) {
        for (const name of fs.readdirSync(patchDir).filter((f) => f.endsWith(".diff")).sort()) {
            const patch = path.join(patchDir, name);
            try {
                git(["apply", "--check", "--ignore-whitespace", patch], tmp);
            } catch {
                // Already in the source (merged upstream) or not applicable: node-llama-cpp skips it too.
                log(`ppc-gpt: patch ${name} does not apply, skipped`);
                continue;
            }
            git(["apply", "--ignore-whitespace", patch], tmp);
            applied.push(name);
        }
    }
    for (const name of ppc.names) {
        try {
            git(["apply", path.join(ppcPatchDir, name)], tmp);
        } catch (err) {
            fs.rmSync(tmp, {recursive: true, force: true});
            throw new Error(`ppc-gpt patch native/patches/${name} does not apply to llama.cpp from node-llama-cpp ` +
                `${nlcVersion}: ${(err.stderr ?? err.message).toString().trim()}`);
        }
    }
    const commit = git(["rev-parse", "HEAD"], tmp);
    fs.writeFileSync(path.join(tmp, ".ppc-gpt-source.json"),
        JSON.stringify({nodeLlamaCpp: nlcVersion, commit, patches: applied, ppcPatches: ppc.names, ppcPatchHash: ppc.hash},
            null, 2) + "\n");
    fs.rmSync(dest, {recursive: true, force: true});
    fs.renameSync(tmp, dest);
    return dest;
}
