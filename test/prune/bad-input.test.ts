import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {removeLayers} from "../../ts/prune/remove.js";
import {readGguf} from "../../ts/gguf/read.js";
import {fileHash} from "../gguf-fixtures.js";
import {tempDir, runCli} from "../helpers.js";


const cli = (args: string[]) => runCli(args);

async function model(t: import("ava").ExecutionContext): Promise<{dir: string; input: string}> {
    const dir = tempDir(t);
    const input = path.join(dir, "in.gguf");
    await writeSyntheticModel(input, {architecture: "llama", layers: 4, embedding: 32, heads: 4, feedForward: 64, vocab: 300});
    return {dir, input};
}

/** Files in `dir` other than the inputs: there must be none after a failure (no output, no temp file). */
function leftovers(dir: string, inputs: string[]): string[] {
    return fs.readdirSync(dir).filter((f) => !inputs.includes(path.join(dir, f)));
}

/** Corrupt variants of a valid file, each with the message it must produce. */
function corruptions(valid: Buffer, dataOffset: number): [string, Buffer, RegExp][] {
    const patch = (at: number, bytes: number[]) => {
        const b = Buffer.from(valid);
        bytes.forEach((x, i) => (b[at + i] = x));
        return b;
    };
    // First metadata key length sits after magic(4) + version(4) + counts(16).
    const huge = patch(24, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    return [
        ["text file", Buffer.from("this is not a model\n"), /not a GGUF file/],
        ["empty file", Buffer.alloc(0), /not a GGUF file/],
        ["unknown version", patch(4, [9, 0, 0, 0]), /unsupported GGUF version 9/],
        ["truncated in the header", valid.subarray(0, 60), /truncated or corrupt header/],
        ["truncated in the metadata", valid.subarray(0, 2000), /truncated file: .*tokenizer/],
        ["truncated in the tensor data", valid.subarray(0, dataOffset + 100), /truncated or corrupt file: tensor/],
        ["implausible key length", huge, /implausible string length|truncated/],
    ];
}

test("corrupt or truncated GGUF files fail with a clear message, leave no output, and stay unmodified", async (t) => {
    const {dir, input} = await model(t);
    const valid = fs.readFileSync(input);
    const {info} = await readGguf(input);
    for (const [label, bytes, message] of corruptions(valid, info.dataOffset)) {
        const bad = path.join(dir, `bad-${label.replace(/ /g, "-")}.gguf`);
        fs.writeFileSync(bad, bytes);
        const out = path.join(dir, "out.gguf");
        const err = await t.throwsAsync(removeLayers(bad, out, [1]), undefined, label);
        t.regex(err!.message, message, label);
        t.true(err!.message.includes(bad), `${label}: message names the file`);
        t.false(fs.existsSync(out), label);
        t.true(Buffer.from(fs.readFileSync(bad)).equals(bytes), `${label}: input modified`);
        fs.rmSync(bad);
    }
    t.deepEqual(leftovers(dir, [input]), []);
});

test("a tensor with an unknown ggml type or out-of-file data is rejected", async (t) => {
    const {dir, input} = await model(t);
    const valid = fs.readFileSync(input);
    const {info} = await readGguf(input);
    // The first tensor info is "token_embd.weight": name, n_dims, dims[2], type, offset — right before the data section's padding.
    const name = Buffer.from("token_embd.weight");
    const at = valid.indexOf(Buffer.concat([Buffer.from([name.length, 0, 0, 0, 0, 0, 0, 0]), name]));
    t.true(at > 0 && at < info.dataOffset);
    const typeAt = at + 8 + name.length + 4 + 2 * 8;
    const badType = Buffer.from(valid);
    badType.writeUInt32LE(77, typeAt);
    fs.writeFileSync(path.join(dir, "type.gguf"), badType);
    await t.throwsAsync(removeLayers(path.join(dir, "type.gguf"), path.join(dir, "o.gguf"), [0]), {message: /unknown ggml type 77/});
    const badOffset = Buffer.from(valid);
    badOffset.writeBigUInt64LE(1n << 40n, typeAt + 4);
    fs.writeFileSync(path.join(dir, "offset.gguf"), badOffset);
    await t.throwsAsync(removeLayers(path.join(dir, "offset.gguf"), path.join(dir, "o.gguf"), [0]), {message: /runs past the end of the file/});
    t.false(fs.existsSync(path.join(dir, "o.gguf")));
});

test("bad layer lists and output paths are refused before anything is written", async (t) => {
    const {dir, input} = await model(t);
    const out = path.join(dir, "out.gguf");
    const hash = await fileHash(input);
    await t.throwsAsync(removeLayers(input, out, [4]), {message: /layer 4 is out of range: .* has 4 layers \(0\.\.3\)/});
    await t.throwsAsync(removeLayers(input, out, [1, 1]), {message: /layer 1 is listed twice/});
    await t.throwsAsync(removeLayers(input, out, [0, 1, 2, 3]), {message: /removing every layer/});
    await t.throwsAsync(removeLayers(input, out, []), {message: /at least one layer/});
    await t.throwsAsync(removeLayers(input, out, [-1]), {message: /non-negative integers/});
    await t.throwsAsync(removeLayers(input, input, [1]), {message: /is the input file/});
    fs.symlinkSync(input, path.join(dir, "link.gguf"));
    await t.throwsAsync(removeLayers(input, path.join(dir, "link.gguf"), [1]), {message: /is the input file/});
    await t.throwsAsync(removeLayers(input, path.join(dir, "missing", "out.gguf"), [1]), {message: /folder .* does not exist/});
    await t.throwsAsync(removeLayers(path.join(dir, "nope.gguf"), out, [1]), {message: /cannot open/});
    t.false(fs.existsSync(out));
    t.deepEqual(leftovers(dir, [input, path.join(dir, "link.gguf")]), []);
    t.is(await fileHash(input), hash);
});

test("CLI: exit 2 for usage errors, 1 for failures, 0 with a plan; --json is machine-readable", async (t) => {
    const {dir, input} = await model(t);
    const out = path.join(dir, "out.gguf");
    const usage: string[][] = [
        [input, "--layers", "1,x", "-o", out],
        [input, "--layers", "1"],
        [input, "-o", out],
        [input, "--layers", "1", "--strategy", "top", "-o", out],
        [input, "--strategy", "top", "-o", out],
        [input, "--strategy", "top", "--ratio", "1.5", "-o", out],
        [input, "--strategy", "top", "--ratio", "0.2", "--count", "1", "-o", out],
        [input, "--strategy", "wat", "--count", "1", "-o", out],
        [input, "--strategy", "scores", "--count", "1", "-o", out],
        [input, "--layers", "1", "-o", out, "--bogus"],
    ];
    for (const args of usage) {
        const r = await cli(["prune", ...args]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, /error/i);
    }
    for (const args of [[input, "--layers", "9", "-o", out], [path.join(dir, "none.gguf"), "--layers", "1", "-o", out],
        [input, "--strategy", "scores", "--scores", path.join(dir, "none.json"), "--count", "1", "-o", out]]) {
        const r = await cli(["prune", ...args]);
        t.is(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
    }
    t.false(fs.existsSync(out));

    const plan = await cli(["prune", input, "--strategy", "top", "--count", "2", "--plan-only", "--json"]);
    t.is(plan.code, 0, plan.stderr);
    t.deepEqual(JSON.parse(plan.stdout).removed, [2, 3]);
    t.false(fs.existsSync(out));

    const ok = await cli(["prune", input, "--layers", "0-1", "-o", out, "--json"]);
    t.is(ok.code, 0, ok.stderr);
    t.deepEqual(JSON.parse(ok.stdout).result.kept, [2, 3]);
    t.is((await readGguf(out)).blockCount, 2);

    const help = await cli(["prune", "--help"]);
    t.is(help.code, 0);
    t.regex(help.stdout, /Examples:/);
});

test("bi: an output or plot folder that does not exist is named before the scoring runs", async (t) => {
    const dir = tempDir(t);
    const model = path.join(dir, "m.gguf");
    await writeSyntheticModel(model, {architecture: "llama", layers: 2, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 1});
    const text = path.join(dir, "corpus.txt");
    fs.writeFileSync(text, "a b c d\ne f g h\n");
    for (const [flag, file] of [["-o", "bi.json"], ["--plot", "bi.svg"]] as const) {
        const r = await cli(["bi", model, "--text", text, flag, path.join(dir, "none", file)]);
        t.is(r.code, 1, r.stderr);
        t.regex(r.stderr, new RegExp(`${flag} .*none/${file.replace(".", "\\.")}: the folder .*none does not exist`));
    }
    t.deepEqual(fs.readdirSync(dir).sort(), ["corpus.txt", "m.gguf"]);
});

test("prune: Block Influence options with another strategy are usage errors, not ignored", async (t) => {
    const {dir, input} = await model(t);
    const out = path.join(dir, "out.gguf");
    const cases: [string[], RegExp][] = [
        [["--strategy", "top", "--ratio", "0.3", "--threads", "0"], /--threads goes with --strategy bi/],
        [["--layers", "1", "--metric", "angular", "--batch-tokens", "64"], /--metric, --batch-tokens go with --strategy bi/],
        [["--strategy", "magnitude", "--count", "1", "--limit", "5"], /--limit goes with --strategy bi/],
    ];
    for (const [args, message] of cases) {
        const r = await cli(["prune", input, ...args, "-o", out]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    t.false(fs.existsSync(out));
});
