// Child process of the GPU suite: runs one pass (passes.ts) on the addon PPC_GPT_NATIVE names (the
// CPU build), nothing offloaded, and writes the result as JSON.
//
//   PPC_GPT_NATIVE=<cpu ppc_gpt.node> node dist/test/gpu/reference.js <pass.json> <result.json>
import fs from "node:fs";
import {native} from "../../ts/native.js";
import {runPass, type Pass} from "./passes.js";

const [input, output] = process.argv.slice(2);
if (native().systemInfo().cuda)
    throw new Error(`the reference must run on a CPU build, and ${process.env.PPC_GPT_NATIVE} is a CUDA build`);
const result = await runPass(JSON.parse(fs.readFileSync(input, "utf8")) as Pass, 0);
fs.writeFileSync(`${output}.tmp`, JSON.stringify(result));
fs.renameSync(`${output}.tmp`, output);
