// Bad input to `ppc-gpt perturb` and to the embeddings loaders: clear messages naming the file,
// line or option; exit code 2 for usage, 1 for failures; no output or temporary file left; the
// input untouched. Also the embeddings file formats (.npy, text) against the GGUF they came from.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import test from "ava";
import {OptionError} from "../../ts/options.js";
import {createPerturber, perturbDefaults, resolvePerturberOptions} from "../../ts/privacy/perturb.js";
import {loadEmbeddings} from "../../ts/privacy/embeddings.js";
import {fileHash} from "../gguf-fixtures.js";
import {cliPath, hasShared, stories260K, tempDir, runCli} from "../helpers.js";
import {refEmbeddings} from "./reference.js";

const maybe = hasShared ? test : test.skip;

test("resolvePerturberOptions fills perturbDefaults and rejects an out-of-range option with an OptionError naming it", (t) => {
    t.deepEqual(resolvePerturberOptions({}), {...perturbDefaults, seed: undefined});
    for (const [o, option] of [[{epsilon: 0}, "epsilon"], [{epsilon: Infinity}, "epsilon"], [{k: 0}, "k"], [{k: 2.5}, "k"],
        [{threads: 0}, "threads"], [{seed: -1}, "seed"], [{similarity: "l1" as "cosine"}, "similarity"]] as const) {
        const err = t.throws(() => resolvePerturberOptions(o), {instanceOf: OptionError}, JSON.stringify(o));
        t.deepEqual(err?.options, [option]);
    }
    const both = t.throws(() => resolvePerturberOptions({mechanism: "santext", k: 5}), {instanceOf: OptionError});
    t.deepEqual(both?.options, ["k", "similarity", "mechanism"]);
});

// The CLI's default index cache, kept out of the user's home folder.
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-cache-test-"));
test.after.always(() => fs.rmSync(cacheDir, {recursive: true, force: true}));

const cli = (args: string[]) => runCli(["perturb", ...args], {env: {...process.env, PPC_GPT_CACHE_DIR: cacheDir}});

const item = {id: "x1", question: "Where do fish live?", choices: [{label: "A", text: "in water"}, {label: "B", text: "in trees"}], answer: "A"};

/** 2-D .npy of float32/float64/float16 values, written by hand (format 1.0). */
function writeNpy(file: string, rows: number, cols: number, values: ArrayLike<number>, descr: "<f4" | "<f8" | "<f2", extra = ""): void {
    let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${rows}, ${cols}), ${extra}}`;
    header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
    const size = descr === "<f8" ? 8 : descr === "<f4" ? 4 : 2;
    const data = Buffer.alloc(rows * cols * size);
    for (let i = 0; i < rows * cols; i++) {
        if (size === 8)
            data.writeDoubleLE(values[i], i * 8);
        else if (size === 4)
            data.writeFloatLE(values[i], i * 4);
        else
            data.writeUInt16LE(values[i], i * 2);
    }
    const head = Buffer.alloc(10);
    head[0] = 0x93;
    head.write("NUMPY", 1, "latin1");
    head[6] = 1;
    head[7] = 0;
    head.writeUInt16LE(header.length, 8);
    fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, "latin1"), data]));
}

maybe("usage errors exit with code 2 and say what to do", async (t) => {
    const dir = tempDir(t);
    const input = path.join(dir, "in.jsonl");
    fs.writeFileSync(input, JSON.stringify(item) + "\n");
    const out = path.join(dir, "out.jsonl");
    const base = ["--embeddings", stories260K, "--in", input, "--out", out];
    const vectors = path.join(dir, "vectors.txt");
    fs.writeFileSync(vectors, "1 2\n3 4\n");
    const cases: [string[], RegExp][] = [
        [["--in", input, "--out", out], /--embeddings <file> is required/],
        [[...base, "--epsilon", "0"], /--epsilon must be a finite number > 0 \(got "0"\)/],
        [[...base, "--epsilon", "-2"], /--epsilon must be a finite number > 0/],
        [[...base, "--epsilon", "abc"], /--epsilon must be a finite number > 0/],
        [[...base, "--epsilon", "Infinity"], /--epsilon must be a finite number > 0/],
        [[...base, "--k", "0"], /--k must be an integer in \[1, 65536\]/],
        [[...base, "--k", "2.5"], /--k must be an integer/],
        [[...base, "--mechanism", "santext", "--k", "5"], /--k and --similarity apply to --mechanism custext only/],
        [[...base, "--mechanism", "laplace"], /argument 'laplace' is invalid/],
        [[...base, "--similarity", "dot"], /argument 'dot' is invalid/],
        [[...base, "--seed", "-1"], /--seed: seed must be a non-negative integer/],
        [[...base, "--seed", "x"], /--seed: seed must be a non-negative integer/],
        [[...base, "--threads", "0"], /--threads must be an integer in \[1, 1024\]/],
        [["--embeddings", stories260K, "--in", input], /--in <file> and --out <file> are required/],
        [["--embeddings", stories260K, "--table", "--in", input], /--table .* takes no --in, --out or --report/],
        [[...base, "--tokens", "3"], /--tokens goes with --table/],
        [["--embeddings", stories260K, "--table", "--tokens", "3,x"], /--tokens takes comma-separated token ids or ranges/],
        [["--embeddings", stories260K, "--table", "--tokens", "1"], /token 1 is not in the custext domain \("<s>"/],
        [[...base, "--keep-stopwords", "--stopwords", input], /--keep-stopwords .* or --stopwords <file>, not both/],
        [[...base, "--no-cache", "--cache-dir", dir], /--cache-dir or --no-cache, not both/],
        [[...base, "--keep-labels", "--id-map", path.join(dir, "m.jsonl")], /--id-map goes with the default release/],
        [["--embeddings", vectors, "--in", input, "--out", out], /vectors\.txt is an embeddings file, not a GGUF model: give the tokenizer with --tokenizer/],
    ];
    for (const [args, message] of cases) {
        const r = await cli(args);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message, args.join(" "));
    }
    const j = await cli([...base, "--epsilon", "0", "--json"]);
    t.deepEqual(JSON.parse(j.stdout), {error: "--epsilon must be a finite number > 0 (got \"0\")", usage: true});
    t.false(fs.existsSync(out));
});

maybe("bad data and bad files exit with code 1, name the file and line, and leave nothing behind", async (t) => {
    const dir = tempDir(t);
    const good = path.join(dir, "good.jsonl");
    fs.writeFileSync(good, JSON.stringify(item) + "\n");
    const write = (name: string, text: string | Buffer) => {
        const f = path.join(dir, name);
        fs.writeFileSync(f, text);
        return f;
    };
    const badJson = write("bad-json.jsonl", JSON.stringify(item) + "\n{not json\n");
    const noQuestion = write("no-question.jsonl", JSON.stringify(item) + "\n\n" + JSON.stringify({id: "y", choices: item.choices}) + "\n");
    const badAnswer = write("bad-answer.jsonl", JSON.stringify({...item, answer: "Z"}) + "\n");
    const notGguf = write("model.gguf", "this is not a model\n");
    const truncated = write("truncated.gguf", fs.readFileSync(stories260K).subarray(0, 5000));
    const cases: [string[], RegExp][] = [
        [["--embeddings", stories260K, "--in", badJson, "--out", path.join(dir, "o1.jsonl")], /bad-json\.jsonl:2: not valid JSON/],
        [["--embeddings", stories260K, "--in", noQuestion, "--out", path.join(dir, "o2.jsonl")], /no-question\.jsonl:3: "question" must be a string/],
        [["--embeddings", stories260K, "--in", badAnswer, "--out", path.join(dir, "o3.jsonl")], /bad-answer\.jsonl:1: "answer" must be one of the choice labels/],
        [["--embeddings", stories260K, "--in", path.join(dir, "missing.jsonl"), "--out", path.join(dir, "o4.jsonl")], /missing\.jsonl: no such file/],
        [["--embeddings", stories260K, "--in", good, "--out", good], /is the input file: inputs are never modified/],
        [["--embeddings", stories260K, "--in", good, "--out", path.join(dir, "o11.jsonl"), "--id-map", good], /the id map .*good\.jsonl would overwrite the input/],
        [["--embeddings", stories260K, "--in", good, "--out", path.join(dir, "nope", "o.jsonl")], /folder .*nope does not exist/],
        [["--embeddings", notGguf, "--in", good, "--out", path.join(dir, "o5.jsonl")], /model\.gguf: not a GGUF file/],
        [["--embeddings", truncated, "--in", good, "--out", path.join(dir, "o6.jsonl")], /truncated\.gguf/],
        [["--embeddings", path.join(dir, "absent.gguf"), "--in", good, "--out", path.join(dir, "o7.jsonl")], /absent\.gguf: cannot read/],
        [["--embeddings", stories260K, "--tensor", "output.weight.nope", "--in", good, "--out", path.join(dir, "o8.jsonl")], /no tensor named 'output\.weight\.nope'/],
        [["--embeddings", stories260K, "--epsilon", "5000", "--in", good, "--out", path.join(dir, "o9.jsonl")], /epsilon 5000 is too large .* underflows double precision/],
        [["--embeddings", stories260K, "--stopwords", path.join(dir, "no-stopwords.txt"), "--in", good, "--out", path.join(dir, "o10.jsonl")], /no-stopwords\.txt: cannot read/],
    ];
    const before = new Map(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f))]));
    for (const [args, message] of cases) {
        const r = await cli(args);
        t.is(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message, args.join(" "));
    }
    // Inputs unchanged, no outputs, no temporary files.
    t.deepEqual(fs.readdirSync(dir).sort(), [...before.keys()].sort());
    for (const [f, bytes] of before)
        t.true(fs.readFileSync(path.join(dir, f)).equals(bytes), f);
});

maybe("embeddings files: .npy (f4, f8, f2) and text give the GGUF's rows; custext from them equals custext from the GGUF", async (t) => {
    const dir = tempDir(t);
    const ref = await refEmbeddings(stories260K);
    const npy4 = path.join(dir, "e4.npy"), npy8 = path.join(dir, "e8.npy"), npy2 = path.join(dir, "e2.npy"), txt = path.join(dir, "e.txt");
    writeNpy(npy4, ref.rows, ref.cols, ref.data, "<f4");
    writeNpy(npy8, ref.rows, ref.cols, ref.data, "<f8");
    const halves = Array.from({length: ref.rows * ref.cols}, (_, i) => (i % 3 === 0 ? 0x3c00 : i % 3 === 1 ? 0xc000 : 0x3555));
    writeNpy(npy2, ref.rows, ref.cols, halves, "<f2");
    fs.writeFileSync(txt, "# stories260K token embeddings\n" + Array.from({length: ref.rows}, (_, r) =>
        Array.from(ref.data.subarray(r * ref.cols, (r + 1) * ref.cols), (v) => v.toPrecision(9)).join(" ")).join("\n") + "\n");
    for (const f of [npy4, npy8, txt]) {
        const e = await loadEmbeddings(f);
        t.deepEqual([e.rows, e.cols], [512, 64]);
        t.deepEqual(Float64Array.from(e.data), ref.data, f);
        t.is(e.sha256, (await fileHash(f)));
    }
    const h = await loadEmbeddings(npy2);
    t.deepEqual(Array.from(h.data.subarray(0, 3)), [1, -2, 0.333251953125]);

    const tables = [];
    for (const o of [{embeddings: stories260K}, {embeddings: npy4, tokenizer: stories260K}, {embeddings: txt, tokenizer: stories260K}]) {
        const p = await createPerturber({...o, epsilon: 2, cacheDir: false});
        try {
            const rows = [];
            for await (const d of p.table())
                rows.push([d.input, Array.from(d.outputs), Array.from(d.probabilities)]);
            tables.push(rows);
        } finally {
            p.close();
        }
    }
    t.deepEqual(tables[1], tables[0]);
    t.deepEqual(tables[2], tables[0]);
});

maybe("broken embeddings files fail with a message naming the file and what is wrong", async (t) => {
    const dir = tempDir(t);
    const f = (name: string) => path.join(dir, name);
    writeNpy(f("fortran.npy"), 2, 2, [1, 2, 3, 4], "<f4", "'extra': 1");
    fs.writeFileSync(f("fortran.npy"), fs.readFileSync(f("fortran.npy")).toString("latin1").replace("False", "True "), "latin1");
    writeNpy(f("short.npy"), 512, 64, new Float64Array(512 * 64), "<f4");
    fs.writeFileSync(f("short.npy"), fs.readFileSync(f("short.npy")).subarray(0, 1000));
    writeNpy(f("int.npy"), 2, 2, [1, 2, 3, 4], "<f4");
    fs.writeFileSync(f("int.npy"), fs.readFileSync(f("int.npy")).toString("latin1").replace("<f4", "<i4"), "latin1");
    writeNpy(f("rows.npy"), 100, 64, new Float64Array(6400), "<f4");
    writeNpy(f("nan.npy"), 512, 64, Float64Array.from({length: 512 * 64}, (_, i) => (i === 700 ? NaN : 0.5)), "<f4");
    fs.writeFileSync(f("ragged.txt"), "1 2 3\n4 5 6\n7 8\n");
    fs.writeFileSync(f("word.txt"), "1 2 3\n4 five 6\n");
    fs.writeFileSync(f("empty.txt"), "# nothing\n\n");
    const cases: [string, RegExp][] = [
        ["fortran.npy", /fortran\.npy: not a usable \.npy embeddings file: fortran_order is True/],
        ["short.npy", /short\.npy: not a usable \.npy embeddings file: data is truncated/],
        ["int.npy", /int\.npy: .*dtype <i4 is not little-endian float16, float32 or float64/],
        ["rows.npy", /rows\.npy: 100 embedding rows for a tokenizer of 512 tokens/],
        ["nan.npy", /nan\.npy: row 10 column 60 is not finite/],
        ["ragged.txt", /ragged\.txt:3: row 2 has 2 values; earlier rows have 3/],
        ["word.txt", /word\.txt:2: value 2 \("five"\) is not a finite number/],
        ["empty.txt", /empty\.txt: no embedding rows/],
    ];
    for (const [name, message] of cases)
        await t.throwsAsync(createPerturber({embeddings: f(name), tokenizer: stories260K, cacheDir: false}), {message}, name);
    await t.throwsAsync(createPerturber({embeddings: stories260K, tokenizer: f("ragged.txt"), cacheDir: false}), {message: /ragged\.txt: the tokenizer must be a GGUF model/});
    await t.throwsAsync(createPerturber({embeddings: stories260K, mechanism: "santext", k: 4, cacheDir: false}), {message: /k and similarity apply to mechanism custext only/});
    await t.throwsAsync(createPerturber({embeddings: stories260K, epsilon: NaN, cacheDir: false}), {message: /epsilon must be a finite number > 0/});
    await t.throwsAsync(createPerturber({embeddings: stories260K, seed: -3, cacheDir: false}), {message: /seed must be a non-negative integer/});
});

maybe("a corrupt cache file is reported as a warning and rebuilt; the run still succeeds", async (t) => {
    const dir = tempDir(t);
    const cache = path.join(dir, "cache");
    const input = path.join(dir, "in.jsonl");
    fs.writeFileSync(input, JSON.stringify(item) + "\n");
    const args = ["--embeddings", stories260K, "--in", input, "--out", path.join(dir, "o.jsonl"), "--cache-dir", cache, "--json", "--seed", "1"];
    const first = JSON.parse((await cli(args)).stdout);
    t.false(first.mechanism.custext.index.cached);
    const file = first.mechanism.custext.index.file as string;
    t.true(file.startsWith(cache));
    t.true(JSON.parse((await cli(args)).stdout).mechanism.custext.index.cached);
    fs.writeFileSync(file, "garbage");
    const r = await cli(args);
    t.is(r.code, 0);
    t.regex(r.stderr, /"event":"warning".*ignoring cache file .*not a ppc-gpt index file; rebuilding/);
    const third = JSON.parse(r.stdout);
    t.false(third.mechanism.custext.index.cached);
    // released ids are random whatever the seed: the same seed gives the same records under new ids
    const withoutIds = (records: Record<string, unknown>[]) => records.map(({id: _id, ...rest}) => JSON.stringify(rest)).sort();
    t.deepEqual(withoutIds(third.records), withoutIds(first.records));
});

maybe("perturb: an output folder that does not exist is named before anything is written", async (t) => {
    const dir = tempDir(t);
    const input = path.join(dir, "in.jsonl");
    fs.writeFileSync(input, JSON.stringify(item) + "\n");
    const out = path.join(dir, "out.jsonl");
    const none = path.join(dir, "none");
    const cases: [string[], RegExp][] = [
        [["--out", path.join(none, "out.jsonl")], /--out .*none\/out\.jsonl: the folder .*none does not exist/],
        [["--out", out, "--id-map", path.join(none, "map.jsonl")], /--id-map .*none\/map\.jsonl: the folder .*none does not exist/],
        [["--out", out, "--report", path.join(none, "report.json")], /--report .*none\/report\.json: the folder .*none does not exist/],
    ];
    for (const [args, message] of cases) {
        const r = await cli(["--embeddings", stories260K, "--epsilon", "3", "--in", input, ...args]);
        t.is(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
        t.notRegex(r.stderr, /\n\s+at /);
        t.deepEqual(fs.readdirSync(dir), ["in.jsonl"], `${args.join(" ")}: nothing written`);
    }
});
