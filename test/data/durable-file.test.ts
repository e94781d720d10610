// The one atomic-write helper (ts/durable-file.ts): a write that fails leaves the old file and no
// temporary file beside it; a write that succeeds replaces the file whole.
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {writeFileDurableSync, writeFileDurableWith} from "../../ts/durable-file.js";
import {writeJsonlAtomic} from "../../ts/data/jsonl.js";

const scratch = () => fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-durable-"));

test("writeFileDurableWith streams into place; a failing writer leaves the old file and no temporary file", async (t) => {
    const dir = scratch();
    const file = path.join(dir, "out.bin");
    await writeFileDurableWith(file, async (fh) => {
        await fh.write("first ");
        await fh.write("write");
    });
    t.is(fs.readFileSync(file, "utf8"), "first write");
    const err = await t.throwsAsync(writeFileDurableWith(file, async (fh) => {
        await fh.write("half of a second write");
        throw new Error("the producer failed");
    }));
    t.is(err?.message, "the producer failed");
    t.is(fs.readFileSync(file, "utf8"), "first write");
    t.deepEqual(fs.readdirSync(dir), ["out.bin"]);
});

test("writeFileDurableSync replaces the file; bad data leaves the old file and no temporary file", (t) => {
    const dir = scratch();
    const file = path.join(dir, "state.json");
    writeFileDurableSync(file, "{\"v\":1}\n");
    writeFileDurableSync(file, new TextEncoder().encode("{\"v\":2}\n"));
    t.is(fs.readFileSync(file, "utf8"), "{\"v\":2}\n");
    t.throws(() => writeFileDurableSync(file, 42 as unknown as string));
    t.is(fs.readFileSync(file, "utf8"), "{\"v\":2}\n");
    t.deepEqual(fs.readdirSync(dir), ["state.json"]);
});

test("writeJsonlAtomic: an iterable that throws midway leaves the old JSONL file whole", async (t) => {
    const dir = scratch();
    const file = path.join(dir, "items.jsonl");
    await writeJsonlAtomic(file, [{a: 1}, {a: 2}]);
    function* failing() {
        yield {a: 3};
        throw new Error("source ended early");
    }
    await t.throwsAsync(writeJsonlAtomic(file, failing()), {message: "source ended early"});
    t.is(fs.readFileSync(file, "utf8"), "{\"a\":1}\n{\"a\":2}\n");
    t.deepEqual(fs.readdirSync(dir), ["items.jsonl"]);
});
