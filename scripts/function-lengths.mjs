#!/usr/bin/env node
// Lists functions in ts/ longer than a limit (default 100 lines), longest first:
//
//   node scripts/function-lengths.mjs [--limit N] [--json]
//
// Parsed with the TypeScript compiler's own API (typescript 7: the sync API over tsconfig.json's
// program). A function's length runs from its first line to its last, nested functions included,
// so a verb whose body is one long callback counts both as the callback and as the verb.
// test/style/function-lengths.test.ts fails when a function in ts/ exceeds its generous limit.
import path from "node:path";
import {fileURLToPath} from "node:url";
import {API} from "typescript/unstable/sync";
import {isFunctionLikeDeclaration, isIdentifier, isVariableDeclaration, isPropertyAssignment, isPropertyDeclaration, isCallExpression}
    from "typescript/unstable/ast/is";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Every function with a body in `<root>/ts` over `limit` lines: {file, line, lines, name}, longest first. */
export function longFunctions(limit = 100) {
    const api = new API({cwd: root});
    try {
        const program = api.updateSnapshot({openProject: path.join(root, "tsconfig.json")}).getProjects()[0].program;
        const tsDir = path.join(root, "ts") + path.sep;
        const found = [];
        for (const file of program.getSourceFileNames()) {
            if (!path.resolve(file).startsWith(tsDir) || file.endsWith(".d.ts"))
                continue;
            const source = program.getSourceFile(file);
            const visit = (node) => {
                if (isFunctionLikeDeclaration(node) && node.body) {
                    const first = source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
                    const last = source.getLineAndCharacterOfPosition(node.getEnd()).line + 1;
                    if (last - first + 1 > limit)
                        found.push({file: path.relative(root, file), line: first, lines: last - first + 1, name: nameOf(node, source)});
                }
                node.forEachChild(visit);
            };
            source.forEachChild(visit);
        }
        return found.sort((a, b) => b.lines - a.lines || a.file.localeCompare(b.file));
    } finally {
        api.close();
    }
}

function nameOf(node, source) {
    if (node.name)
        return node.name.getText(source);
    const parent = node.parent;
    if (parent && (isVariableDeclaration(parent) || isPropertyAssignment(parent) || isPropertyDeclaration(parent)) && isIdentifier(parent.name))
        return parent.name.getText(source);
    if (parent && isCallExpression(parent))
        return `(callback of ${parent.expression.getText(source).slice(0, 40)})`;
    return "(anonymous)";
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    const args = process.argv.slice(2);
    const at = args.indexOf("--limit");
    const limit = at >= 0 ? Number(args[at + 1]) : 100;
    if (!Number.isInteger(limit) || limit < 1) {
        console.error("usage: node scripts/function-lengths.mjs [--limit N] [--json]");
        process.exit(2);
    }
    const found = longFunctions(limit);
    if (args.includes("--json"))
        console.log(JSON.stringify(found, null, 2));
    else
        for (const f of found)
            console.log(`${String(f.lines).padStart(5)}  ${f.file}:${f.line}  ${f.name}`);
}
