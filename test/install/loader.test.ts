// The loader's choice, read from `ppc-gpt doctor --json` of a package copy (dist/ts and
// package.json in a temp folder, node_modules linked) whose candidate binaries each test lays out:
// user builds, a source build, corrupt files, builds this CPU or this machine cannot run.
import fs from "node:fs";
import path from "node:path";
import test, {type ExecutionContext} from "ava";
import {cudaArchsCover} from "../../ts/native-loader.js";
import {repoRoot, tempDir} from "../helpers.js";
import {run} from "./project.js";

const builtAddon = path.join(repoRoot, "build", "Release", "ppc_gpt.node");
const builtRecord = path.join(repoRoot, "build", "Release", "ppc_gpt.json");
const version = (JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")) as {version: string}).version;

interface Layout {
    root: string;
    cache: string;
    env: NodeJS.ProcessEnv;
    doctor: () => Promise<{code: number; report: any; stderr: string}>;
}

/** A copy of the package with no binary anywhere, its own empty user cache. */
function packageCopy(t: ExecutionContext): Layout {
    const dir = tempDir(t);
    const root = path.join(dir, "ppc-gpt");
    fs.mkdirSync(root);
    fs.cpSync(path.join(repoRoot, "dist", "ts"), path.join(root, "dist", "ts"), {recursive: true});
    fs.cpSync(path.join(repoRoot, "native"), path.join(root, "native"), {recursive: true});
    fs.copyFileSync(path.join(repoRoot, "package.json"), path.join(root, "package.json"));
    fs.symlinkSync(path.join(repoRoot, "node_modules"), path.join(root, "node_modules"));
    const cache = path.join(dir, "cache");
    const env: NodeJS.ProcessEnv = {PATH: process.env.PATH, HOME: process.env.HOME, PPC_GPT_CACHE_DIR: cache};
    const doctor = async () => {
        const r = await run(process.execPath, [path.join(root, "dist", "ts", "cli", "main.js"), "doctor", "--json"], root, env);
        return {code: r.code, report: JSON.parse(r.stdout), stderr: r.stderr};
    };
    return {root, cache, env, doctor};
}

/** Puts the checkout's CPU build at `releaseDir`, with its build record changed by `edit`. */
function placeBuild(releaseDir: string, edit: (record: Record<string, unknown>) => void = () => undefined): string {
    fs.mkdirSync(releaseDir, {recursive: true});
    const file = path.join(releaseDir, "ppc_gpt.node");
    fs.copyFileSync(builtAddon, file);
    const record = JSON.parse(fs.readFileSync(builtRecord, "utf8")) as Record<string, unknown>;
    edit(record);
    fs.writeFileSync(path.join(releaseDir, "ppc_gpt.json"), JSON.stringify(record));
    return file;
}

const userBuild = (l: Layout, variant: "cpu" | "cuda") => path.join(l.cache, version, variant, "Release");
const byLabel = (report: any, source: string) => (report.native.candidates as {source: string; status: string; reason: string; path: string}[])
    .filter((c) => c.source === source);

test("nothing usable: exit 1, every path tried with its reason, and the one command that fixes it", async (t) => {
    const l = packageCopy(t);
    const {code, report} = await l.doctor();
    t.is(code, 1);
    t.false(report.ok);
    t.is(report.native.chosen, null);
    t.deepEqual(report.native.candidates.map((c: {source: string}) => c.source),
        ["user build", "user build", "source build", "platform package", "platform package", "prebuilt"]);
    t.regex(report.native.error, /Fix: run `npx ppc-gpt build`/);
    for (const c of report.native.candidates)
        t.true(report.native.error.includes(c.path), c.path);
    // Any verb that needs the addon fails the same way, naming the fix.
    const r = await run(process.execPath, [path.join(l.root, "dist", "ts", "cli", "main.js"), "inspect", "/nonexistent.gguf"], l.root, l.env);
    t.is(r.code, 1);
    t.regex(r.stderr, /no usable ppc-gpt native addon[\s\S]*npx ppc-gpt build/);
});

test("order: a user build wins over the source build; a corrupt one is rejected and the next used", async (t) => {
    const l = packageCopy(t);
    placeBuild(path.join(l.root, "build", "Release"));
    let {report} = await l.doctor();
    t.is(report.native.chosen.source, "source build");
    t.deepEqual(report.native.systemInfo.devices.map((d: {name: string}) => d.name), ["CPU"]);

    const user = placeBuild(userBuild(l, "cpu"));
    ({report} = await l.doctor());
    t.is(report.native.chosen.source, "user build");
    t.is(report.native.chosen.path, user);
    const source = byLabel(report, "source build")[0];
    t.is(source.status, "usable");  // doctor checks the rest in a child process

    // Built from other sources than the package's native/ (an edited checkout): never used.
    fs.appendFileSync(path.join(l.root, "native", "addon.h"), "\n// edited\n");
    ({report} = await l.doctor());
    t.is(report.native.chosen.source, "source build");
    t.regex(byLabel(report, "user build").find((c) => c.path === user)!.reason, /built from other native sources/);
    fs.copyFileSync(path.join(repoRoot, "native", "addon.h"), path.join(l.root, "native", "addon.h"));

    fs.writeFileSync(user, "not an ELF file");
    ({report} = await l.doctor());
    t.is(report.native.chosen.source, "source build");
    const rejected = byLabel(report, "user build").find((c) => c.path === user)!;
    t.is(rejected.status, "rejected");
    t.regex(rejected.reason, /does not load/);
});

test("a build needing CPU features this CPU lacks is skipped with the features named", async (t) => {
    const l = packageCopy(t);
    placeBuild(userBuild(l, "cpu"), (r) => {
        r.cpuFeatures = ["avx2", "ppc_test_absent_feature"];
    });
    placeBuild(path.join(l.root, "build", "Release"));
    const {report} = await l.doctor();
    t.is(report.native.chosen.source, "source build");
    const skipped = byLabel(report, "user build").find((c) => c.status === "rejected")!;
    t.regex(skipped.reason, /needs CPU features ppc_test_absent_feature/);
});

test("a CUDA build is used only where it loads and sees a CUDA device; the CPU build serves otherwise", async (t) => {
    const l = packageCopy(t);
    // A binary whose record says CUDA but which (being the CPU build) can never see a CUDA device:
    // rejected on every machine, by the driver check (no GPU) or by the child process (GPU present).
    placeBuild(userBuild(l, "cuda"), (r) => {
        r.cuda = {toolkit: "11.8", archs: ["70-real", "75-real", "80-real", "90-real"], required: []};
    });
    placeBuild(userBuild(l, "cpu"));
    const {report} = await l.doctor();
    const cuda = byLabel(report, "user build").find((c) => c.path.includes(`${path.sep}cuda${path.sep}`))!;
    t.is(cuda.status, "rejected");
    t.regex(cuda.reason, fs.existsSync("/proc/driver/nvidia/gpus") ? /sees no CUDA device|cannot run|no NVIDIA GPU/ : /no NVIDIA GPU/);
    t.is(report.native.chosen.path, path.join(userBuild(l, "cpu"), "ppc_gpt.node"));
});

test("PPC_GPT_NATIVE overrides every other candidate, and a bad one fails instead of falling back", async (t) => {
    const l = packageCopy(t);
    placeBuild(userBuild(l, "cpu"));
    const chosen = placeBuild(path.join(path.dirname(l.root), "elsewhere"));
    l.env.PPC_GPT_NATIVE = chosen;
    let r = await l.doctor();
    t.is(r.report.native.chosen.source, "PPC_GPT_NATIVE");
    t.is(r.report.native.chosen.path, chosen);
    l.env.PPC_GPT_NATIVE = path.join(path.dirname(l.root), "missing.node");
    const cli = await run(process.execPath, [path.join(l.root, "dist", "ts", "cli", "main.js"), "doctor"], l.root, l.env);
    t.is(cli.code, 1);
    t.regex(cli.stdout + cli.stderr, /PPC_GPT_NATIVE=.*missing\.node: no such file/);
    fs.writeFileSync(chosen, "corrupt");
    l.env.PPC_GPT_NATIVE = chosen;
    r = await l.doctor();
    t.is(r.code, 1);
    t.regex(r.report.native.error, /PPC_GPT_NATIVE=.* does not load/);
});

test("CUDA architecture coverage follows NVIDIA's compatibility rules", (t) => {
    const release = ["70-real", "75-real", "80-real", "90-real"];
    // SASS runs on the same major version at an equal or newer minor.
    t.true(cudaArchsCover(release, "7.0"));   // V100
    t.true(cudaArchsCover(release, "7.5"));   // T4
    t.true(cudaArchsCover(release, "8.6"));   // A10, RTX 30 on sm_80 code
    t.true(cudaArchsCover(release, "8.9"));   // L4, RTX 40
    t.true(cudaArchsCover(release, "9.0"));   // H100
    t.false(cudaArchsCover(release, "6.1"));  // P40: older than every build
    t.false(cudaArchsCover(release, "10.0")); // B200: new major, no PTX
    t.false(cudaArchsCover(["80-real"], "7.5"));
    // PTX is compiled by the driver for any newer GPU.
    t.true(cudaArchsCover(["90-virtual"], "10.0"));
    t.true(cudaArchsCover(["90"], "12.0"));
    t.false(cudaArchsCover(["90-virtual"], "8.9"));
    // Architecture-specific variants run only on that GPU.
    t.true(cudaArchsCover(["90a-real"], "9.0"));
    t.false(cudaArchsCover(["90a-real"], "10.0"));
    t.true(cudaArchsCover(["native"], "7.0"));
});

test("ppc-gpt build: usage errors exit 2; without cmake or a compiler it says what is missing and builds nothing", async (t) => {
    const cliFile = path.join(repoRoot, "dist", "ts", "cli", "main.js");
    const cache = tempDir(t);
    // node runs by its full path; PATH is an empty folder: no cmake, compiler or git.
    const env = {PATH: tempDir(t), HOME: process.env.HOME, PPC_GPT_CACHE_DIR: cache};
    for (const [args, message] of [
        [["build", "--cuda-archs", "70"], /--cuda-archs needs --cuda/],
        [["build", "--cuda", "--cuda-archs", "sm70"], /"sm70" is not a CUDA architecture/],
        [["build", "--cpu", "fast"], /--cpu must be portable, native or baseline/],
        [["build", "--jobs", "0"], /--jobs must be a positive integer/],
    ] as [string[], RegExp][]) {
        const r = await run(process.execPath, [cliFile, ...args], repoRoot, env);
        t.is(r.code, 2, args.join(" "));
        t.regex(r.stderr, message);
    }
    const r = await run(process.execPath, [cliFile, "build"], repoRoot, env);
    t.is(r.code, 1);
    t.regex(r.stderr, /needs cmake \(>= 3\.19\), a C\+\+17 compiler .*git on PATH/);
    t.deepEqual(fs.readdirSync(cache), []);
});
