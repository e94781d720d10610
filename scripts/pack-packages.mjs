#!/usr/bin/env node
// Turns builds into the npm packages that a release publishes, as `npm pack` tarballs:
//   ppc-gpt-<v>.tgz                 the main package (JavaScript, native sources, no binary)
//   ppc-gpt-linux-x64-<v>.tgz       @ppc-gpt/linux-x64, from a CPU build
//   ppc-gpt-linux-x64-cuda-<v>.tgz  @ppc-gpt/linux-x64-cuda, from a CUDA build (with --cuda-build)
// Each platform package is packages/<name>/ (package.json and README templates) plus the build's
// ppc_gpt.node and ppc_gpt.json, and the runtime libraries the addon loads through its $ORIGIN run
// path that a target machine may lack (libgomp, libcudart). Libraries too large to ship (cuBLAS) and
// the driver are recorded in ppc_gpt.json as required; the loader checks for them.
//
//   node scripts/pack-packages.mjs [--cpu-build build] [--cuda-build DIR] [--out packages-out] [--no-main] [--no-cpu]
// A machine packs what it built: the release's CUDA job runs it with --no-main --no-cpu --cuda-build,
// because the libraries to bundle are resolved on the machine that has them.
// (`npm run pack:packages` compiles the TypeScript first.) Prints and writes <out>/manifest.json.
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** The registry refuses tarballs of roughly 200 MB; stay clearly below. */
const maxTarballBytes = 190 * 1024 * 1024;

function parseArgs(argv) {
    const opts = {cpuBuild: "build", cudaBuild: undefined, out: "packages-out", main: true, cpu: true};
    for (let i = 0; i < argv.length; i++) {
        const [name, inline] = argv[i].split(/=(.*)/s, 2);
        const value = () => inline ?? argv[++i];
        if (name === "--cpu-build") opts.cpuBuild = value();
        else if (name === "--cuda-build") opts.cudaBuild = value();
        else if (name === "--out") opts.out = value();
        else if (name === "--no-main") opts.main = false;
        else if (name === "--no-cpu") opts.cpu = false;
        else {
            console.error(`pack-packages: unknown argument "${argv[i]}"`);
            process.exit(2);
        }
    }
    return opts;
}

function fail(message) {
    console.error(`pack-packages: ${message}`);
    process.exit(1);
}

const readJson = (file) => JSON.parse(fs.readFileSync(file, "utf8"));

/** `npm pack` of a folder into `out`, scripts off; returns npm's description of the tarball. */
function npmPack(dir, out) {
    const npm = process.env.npm_execpath
        ? [process.execPath, [process.env.npm_execpath]]
        : ["npm", []];
    const stdout = execFileSync(npm[0], [...npm[1], "pack", "--ignore-scripts", "--json", "--pack-destination", out],
        {cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"]});
    // npm prints the JSON array last; lifecycle noise (none with --ignore-scripts) would come before it.
    return JSON.parse(stdout.slice(stdout.indexOf("[")))[0];
}

/** DT_NEEDED entries of an ELF file (readelf from binutils). */
function neededLibraries(file) {
    const out = execFileSync("readelf", ["-d", file], {encoding: "utf8"});
    return [...out.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
}

/** soname -> path as the build machine's dynamic loader resolves the addon's libraries. */
function resolvedLibraries(file) {
    const out = execFileSync("ldd", [file], {encoding: "utf8"});
    return new Map([...out.matchAll(/^\s*(\S+) => (\/\S+)/gm)].map((m) => [m[1], m[2]]));
}

/** Present on every glibc system ppc-gpt supports: never bundled. */
const systemLibrary = /^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^.]*)\.so/;
/** Small, redistributable, and often missing on the target: shipped beside the addon. */
const bundledLibrary = /^(libgomp|libcudart)\.so/;

function stagePlatformPackage(name, buildDir, wantCuda, version, out) {
    const releaseDir = path.resolve(root, buildDir, "Release");
    const binary = path.join(releaseDir, "ppc_gpt.node");
    const recordFile = path.join(releaseDir, "ppc_gpt.json");
    if (!fs.existsSync(binary))
        fail(`${binary} is missing: build it first (npm run build:native${wantCuda ? " with PPC_CUDA=1" : ""})`);
    if (!fs.existsSync(recordFile))
        fail(`${recordFile} is missing: rebuild with scripts/build-native.mjs, which writes the build record`);
    const record = readJson(recordFile);
    if (Boolean(record.cuda) !== wantCuda)
        fail(`${buildDir} is a ${record.cuda ? "CUDA" : "CPU"} build; ${name} needs a ${wantCuda ? "CUDA" : "CPU"} build`);
    if (record.version !== version)
        fail(`${buildDir} was built from ppc-gpt ${record.version}, the package is ${version}: rebuild`);
    if (!wantCuda && record.cpu !== "portable")
        fail(`${buildDir} is a "${record.cpu}" CPU build; the package ships the portable one (PPC_CPU=portable)`);

    const template = path.join(root, "packages", name.replace("@ppc-gpt/", ""));
    const stage = path.join(out, "stage", path.basename(template));
    fs.rmSync(stage, {recursive: true, force: true});
    fs.mkdirSync(stage, {recursive: true});
    const pkg = readJson(path.join(template, "package.json"));
    if (pkg.name !== name)
        fail(`${template}/package.json names ${pkg.name}, expected ${name}`);
    pkg.version = version;
    fs.writeFileSync(path.join(stage, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
    fs.copyFileSync(path.join(template, "README.md"), path.join(stage, "README.md"));
    fs.copyFileSync(binary, path.join(stage, "ppc_gpt.node"));
    // The build keeps a symbol table for debugging; the package does not need it.
    try {
        execFileSync("strip", ["--strip-unneeded", path.join(stage, "ppc_gpt.node")]);
    } catch {
        console.error("pack-packages: strip not available, shipping the binary unstripped");
    }

    const needed = neededLibraries(binary);
    const resolved = resolvedLibraries(binary);
    const bundled = [];
    const required = [];
    for (const soname of needed) {
        if (systemLibrary.test(soname))
            continue;
        if (bundledLibrary.test(soname)) {
            const from = resolved.get(soname);
            if (!from)
                fail(`${soname}, which ${binary} needs, is not found on this machine, so it cannot be bundled`);
            fs.copyFileSync(fs.realpathSync(from), path.join(stage, soname));
            bundled.push(soname);
        } else {
            required.push(soname);
        }
    }
    if (record.cuda) {
        // cuBLAS loads cublasLt itself: required as well, though not a direct dependency.
        const lt = required.find((s) => s.startsWith("libcublas.so."))?.replace("libcublas", "libcublasLt");
        record.cuda = {...record.cuda, bundled: bundled.filter((s) => s.startsWith("libcudart")), required: [...required, ...(lt ? [lt] : [])]};
    } else if (required.length) {
        fail(`the CPU build needs ${required.join(", ")}, which is neither a system library nor bundled`);
    }
    record.bundled = bundled;
    fs.writeFileSync(path.join(stage, "ppc_gpt.json"), JSON.stringify(record, null, 2) + "\n");
    return stage;
}

const opts = parseArgs(process.argv.slice(2));
const out = path.resolve(root, opts.out);
fs.mkdirSync(out, {recursive: true});
const mainPkg = readJson(path.join(root, "package.json"));
const version = mainPkg.version;
for (const [dep, pin] of Object.entries(mainPkg.optionalDependencies ?? {})) {
    if (dep.startsWith("@ppc-gpt/") && pin !== version)
        fail(`package.json pins ${dep} at ${pin}; platform packages must be pinned at exactly ${version}`);
}
if (mainPkg.scripts?.install || mainPkg.scripts?.preinstall || mainPkg.scripts?.postinstall)
    fail("the main package must not have install scripts");

const packed = [];
if (opts.main) {
    if (!fs.existsSync(path.join(root, "dist", "ts", "index.js")))
        fail("dist/ts is missing: run `npx tsc -p tsconfig.json` (npm run pack:packages does)");
    const info = npmPack(root, out);
    const binaries = info.files.filter((f) => f.path.endsWith(".node"));
    if (binaries.length)
        fail(`the main package would ship binaries (${binaries.map((f) => f.path).join(", ")}); they belong in platform packages`);
    packed.push(info);
}
if (opts.cpu)
    packed.push(npmPack(stagePlatformPackage("@ppc-gpt/linux-x64", opts.cpuBuild, false, version, out), out));
if (opts.cudaBuild)
    packed.push(npmPack(stagePlatformPackage("@ppc-gpt/linux-x64-cuda", opts.cudaBuild, true, version, out), out));
fs.rmSync(path.join(out, "stage"), {recursive: true, force: true});

const manifest = packed.map((p) => ({name: p.name, version: p.version, file: p.filename, size: p.size, unpackedSize: p.unpackedSize,
    entryCount: p.entryCount, integrity: p.integrity}));
// Several jobs may pack into one folder: the manifest keeps the other packages' entries.
const manifestFile = path.join(out, "manifest.json");
const earlier = fs.existsSync(manifestFile) ? readJson(manifestFile).filter((m) => !manifest.some((p) => p.name === m.name)) : [];
fs.writeFileSync(manifestFile, JSON.stringify([...earlier, ...manifest], null, 2) + "\n");
const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;
for (const p of manifest)
    console.log(`${p.file.padEnd(36)} ${mib(p.size).padStart(10)} packed ${mib(p.unpackedSize).padStart(10)} unpacked`);
const tooBig = manifest.filter((p) => p.size > maxTarballBytes);
if (tooBig.length)
    fail(`${tooBig.map((p) => p.file).join(", ")} exceed ${mib(maxTarballBytes)}, near the registry's limit: build fewer CUDA ` +
        "architectures (--cuda-archs) or split them into a second package (docs/install.md)");
