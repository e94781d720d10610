// Materialises the llama.cpp source tree that the pinned node-llama-cpp was built from.
// node-llama-cpp ships it as llama/gitRelease.bundle (a git bundle): cloning it needs no network.
// The same patches that node-llama-cpp applies when it builds from source are applied here, so the
// addon and node-llama-cpp run one llama.cpp.
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

    const dest = path.join(cacheDir, `llama.cpp-${nlcVersion}`);
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
    const commit = git(["rev-parse", "HEAD"], tmp);
    fs.writeFileSync(path.join(tmp, ".ppc-gpt-source.json"),
        JSON.stringify({nodeLlamaCpp: nlcVersion, commit, patches: applied}, null, 2) + "\n");
    fs.rmSync(dest, {recursive: true, force: true});
    fs.renameSync(tmp, dest);
    return dest;
}
