// No function in ts/ grows past ~100 lines (issue 23: a verb declares options, calls the library and
// prints; a server start function only assembles its plugins). The lengths come from the TypeScript
// compiler's own parse of the project (scripts/function-lengths.mjs), so a long arrow callback
// counts as much as a named function.
import path from "node:path";
import {pathToFileURL} from "node:url";
import test from "ava";
import {repoRoot} from "../helpers.js";

interface LongFunction {file: string; line: number; lines: number; name: string}
const {longFunctions} = await import(pathToFileURL(path.join(repoRoot, "scripts", "function-lengths.mjs")).href) as
    {longFunctions(limit?: number): LongFunction[]};

const limit = 100;

test(`no function in ts/ is over ${limit} lines`, (t) => {
    const found = longFunctions(limit);
    t.deepEqual(found.map((f) => `${f.file}:${f.line} ${f.name} (${f.lines} lines)`), [],
        "cut these along their seams (options, library call, printing); list them with node scripts/function-lengths.mjs");
});

test("the measurement sees long functions (a low limit finds some)", (t) => {
    const found = longFunctions(20);
    t.true(found.length > 10);
    for (const f of found) {
        t.true(f.lines > 20);
        t.true(f.file.startsWith("ts" + path.sep) || f.file.startsWith("ts/"));
    }
    // longest first, with a name for every entry
    t.true(found.every((f, i) => i === 0 || found[i - 1].lines >= f.lines));
    t.true(found.every((f) => f.name.length > 0));
});
