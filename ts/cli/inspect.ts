import {Command} from "commander";
import {inspectModel} from "../gguf/inspect.js";
import {readGguf} from "../gguf/read.js";
import {formatBytes, formatCount, printJson, table} from "./output.js";
import {tableOption} from "./options.js";

export function inspectCommand(): Command {
    return new Command("inspect")
        .description("Show a GGUF model's architecture, layers, parameter counts, tensor types and metadata")
        .argument("<model>", "GGUF model file")
        .addOption(tableOption("--json", "inspect"))
        .option("--tensors", "also list every tensor")
        .addHelpText("after", `
Examples:
  ppc-gpt inspect model.gguf
  ppc-gpt inspect model.gguf --json | jq '.parameters.perLayer'`)
        .action(async (model: string, opts: {json?: boolean; tensors?: boolean}) => {
            const r = await inspectModel(model, {tensors: opts.tensors}).catch(async (err: unknown) => {
                // an adapter has no layer count: say what the file is instead of which key it lacks
                const header = await readGguf(model, {maxArrayValues: 0}).catch(() => undefined);
                if (header?.value("general.type") === "adapter")
                    throw new Error(`${model} is a LoRA adapter (general.type "adapter", ${header.tensors.length} tensors), not a model: ` +
                        `apply it with \`ppc-gpt eval <base> --lora ${model}\` or fold it in with \`ppc-gpt merge <base> ${model} -o merged.gguf\``);
                throw err;
            });
            if (opts.json)
                return printJson(r);
            const out = process.stdout;
            out.write(`${r.path}\n  architecture  ${r.architecture}${r.name ? ` (${r.name})` : ""}\n` +
                `  layers        ${r.blockCount}\n  parameters    ${formatCount(r.parameters.total)} ` +
                `(${formatCount(r.parameters.outsideLayers)} outside the layers)\n` +
                `  file          ${formatBytes(r.fileSize)}, GGUF v${r.ggufVersion}, alignment ${r.alignment}\n\n`);
            out.write(table(["layer", "original", "parameters", "share", "bytes"], r.parameters.perLayer.map((l) => [
                l.layer, l.originalLayer, formatCount(l.parameters),
                `${((100 * l.parameters) / r.parameters.total).toFixed(2)}%`, formatBytes(l.bytes)])));
            out.write("\n" + table(["type", "tensors", "parameters", "bytes"], Object.entries(r.tensorTypes).map(([t, v]) => [
                t, v.tensors, formatCount(v.parameters), formatBytes(v.bytes)])));
            out.write("\n" + table(["key", "type", "value"], r.metadata.map((m) => [m.key, m.type,
                typeof m.value === "object" ? JSON.stringify(m.value) : String(m.value)])));
            if (r.tensors)
                out.write("\n" + table(["tensor", "type", "shape", "bytes"], r.tensors.map((t) => [
                    t.name, t.type, t.shape.join("x"), formatBytes(t.bytes)])));
        });
}
