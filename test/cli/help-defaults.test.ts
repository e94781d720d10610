// Every option shows one default across the verbs that take it, read from --help as a user reads it:
// a verb whose defaults differ (PruFed's local rounds, run's demo) names the set it uses
// ("(default: 16, prufedDefaults)"), and the table's defaults are the library's.
import test from "ava";
import {prufedDefaults} from "../../ts/federated/prufed/defaults.js";
import {perturbDefaults} from "../../ts/privacy/defaults.js";
import {synthDefaults} from "../../ts/synth/defaults.js";
import {loraDefaults, trainDefaults} from "../../ts/train/defaults.js";
import {optionTable} from "../../ts/cli/options.js";
import {jobSpecDefaults} from "../../ts/federated/protocol.js";
import {runCli} from "../helpers.js";

interface Shown {
    verb: string;
    flag: string;
    value: string;
    set?: string;
}

async function help(args: string[]): Promise<string> {
    const r = await runCli([...args, "--help"]);
    if (r.code !== 0)
        throw new Error(`${args.join(" ")} --help exited ${r.code}: ${r.stderr}`);
    return r.stdout;
}

/** The names under "Commands:" (help excluded). */
function commandsOf(text: string): string[] {
    const block = /\nCommands:\n([\s\S]*?)(?:\n\n|$)/.exec(text)?.[1] ?? "";
    return block.split("\n").filter((l) => /^ {2}\S/.test(l)).map((l) => l.trim().split(/[\s|]/)[0]!).filter((n) => n !== "help");
}

/** Every verb and sub-verb, with its help text. */
async function allHelp(): Promise<[string, string][]> {
    const out: [string, string][] = [];
    const visit = async (path: string[]) => {
        const text = await help(path);
        if (path.length > 0)
            out.push([path.join(" "), text]);
        for (const sub of commandsOf(text))
            await visit([...path, sub]);
    };
    await visit([]);
    return out;
}

const normal = (v: string) => {
    const x = v.replace(/"/g, "").trim();
    return x !== "" && Number.isFinite(Number(x)) ? String(Number(x)) : x;
};

/** The options of one help text with the default each shows, "(default: X)" or "(default: X, someDefaults)". */
export function shownDefaults(verb: string, text: string): Shown[] {
    const block = /\nOptions:\n([\s\S]*?)(?:\n\n|\nCommands:|$)/.exec(text)?.[1] ?? "";
    const shown: Shown[] = [];
    for (const entry of block.split(/\n(?= {2}-)/).map((e) => e.replace(/\s+/g, " "))) {
        const flag = /--[a-z0-9-]+/.exec(entry)?.[0];
        const d = /(?:\(|, )default: ([^)]*)\)/.exec(entry)?.[1];
        if (!flag || d === undefined)
            continue;
        const parts = d.split(", ");
        const set = parts.length > 1 && /^[a-z]\w*Defaults$/.test(parts.at(-1)!) ? parts.pop() : undefined;
        shown.push({verb, flag, value: normal(parts.join(", ").split(/; |, /)[0]!), set});
    }
    return shown;
}

test("every option shows the same default in every verb's --help, or names the default set it uses", async (t) => {
    const helps = await allHelp();
    const verbs = helps.map(([v]) => v);
    for (const v of ["train", "eval", "bi", "prune", "synth", "perturb", "merge", "perplexity", "inspect", "experiment", "worker",
        "build", "doctor", "server", "client run", "run", "fl server", "fl client", "fl simulate"])
        t.true(verbs.includes(v), `${v} is among the verbs whose --help was read`);
    const shown = helps.flatMap(([v, text]) => shownDefaults(v, text));
    const groups = new Map<string, Shown[]>();
    for (const s of shown) {
        const key = `${s.flag} ${s.set ?? ""}`;
        groups.set(key, [...groups.get(key) ?? [], s]);
    }
    const disagreeing = [...groups.values()].filter((g) => new Set(g.map((s) => s.value)).size > 1)
        .map((g) => `${g[0]!.flag}${g[0]!.set ? ` (${g[0]!.set})` : ""}: ${g.map((s) => `${s.verb} ${s.value}`).join(", ")}`);
    t.deepEqual(disagreeing, []);
    t.true(shown.length > 40, `${shown.length} defaults read`);
});

test("the defaults --help shows are the library's: loraDefaults and trainDefaults for train, prufedDefaults for the fl verbs", async (t) => {
    const of = async (verb: string) => new Map(shownDefaults(verb, await help(verb.split(" "))).map((s) => [s.flag, s]));
    const train = await of("train");
    for (const [flag, value] of [["--r", loraDefaults.r], ["--lora-alpha", loraDefaults.loraAlpha], ["--lora-dropout", loraDefaults.loraDropout],
        ["--lr", trainDefaults.learningRate], ["--batch", trainDefaults.batchSize], ["--seed", trainDefaults.seed]] as const) {
        t.is(train.get(flag)?.value, String(value), `train ${flag}`);
        t.is(train.get(flag)?.set, undefined, `train ${flag} uses the table's default`);
    }
    for (const verb of ["fl simulate", "fl client"]) {
        const fl = await of(verb);
        for (const [flag, value] of [["--lora-alpha", prufedDefaults.loraAlpha], ["--lora-dropout", prufedDefaults.loraDropout],
            ["--lr", prufedDefaults.learningRate], ["--batch", prufedDefaults.batchSize], ["--local-steps", prufedDefaults.localSteps]] as const) {
            t.is(fl.get(flag)?.value, String(value), `${verb} ${flag}`);
            t.is(fl.get(flag)?.set, "prufedDefaults", `${verb} ${flag} names its set`);
        }
    }
});

test("client run and run show the job spec's defaults, the ones the server fills in", async (t) => {
    for (const verb of ["client run", "run"]) {
        const shown = new Map(shownDefaults(verb, await help(verb.split(" "))).map((s) => [s.flag, s]));
        for (const [flag, value] of [["--r", jobSpecDefaults.r], ["--lora-alpha", jobSpecDefaults.lora_alpha]] as const) {
            t.is(shown.get(flag)?.value, String(value), `${verb} ${flag}`);
            t.is(shown.get(flag)?.set, "jobSpecDefaults", `${verb} ${flag} names its set`);
        }
    }
    const client = new Map(shownDefaults("client run", await help(["client", "run"])).map((s) => [s.flag, s]));
    t.is(client.get("--lr")?.value, String(jobSpecDefaults.learning_rate));
    t.is(client.get("--server-steps")?.value, String(jobSpecDefaults.server_steps));
});

test("perturb's and synth's --help show their library's defaults: perturbDefaults from the table, synthDefaults by name", async (t) => {
    const of = async (verb: string) => new Map(shownDefaults(verb, await help([verb])).map((s) => [s.flag, s]));
    const perturb = await of("perturb");
    for (const [flag, value] of [["--mechanism", perturbDefaults.mechanism], ["--epsilon", perturbDefaults.epsilon]] as const) {
        t.is(perturb.get(flag)?.value, String(value), `perturb ${flag}`);
        t.is(perturb.get(flag)?.set, undefined, `perturb ${flag} uses the table's default`);
    }
    const synth = await of("synth");
    for (const [flag, value] of [["--ratio", synthDefaults.ratio], ["--format", synthDefaults.format]] as const) {
        t.is(synth.get(flag)?.value, String(value), `synth ${flag}`);
        t.is(synth.get(flag)?.set, "synthDefaults", `synth ${flag} names its set`);
    }
});

test("the Shamir threshold is --secagg-threshold in fl server and fl simulate; --secure-threshold is a hidden old name", async (t) => {
    for (const verb of ["fl server", "fl simulate"]) {
        const text = await help(verb.split(" "));
        t.regex(text, /--secagg-threshold <t>/, verb);
        t.notRegex(text, /--secure-threshold/, verb);
    }
    const base = ["fl", "simulate", "--base", "none.gguf", "--depths", "2", "--clients", "2", "--data", "none.jsonl", "--out", "none",
        "--secure-aggregation"];
    const both = await runCli([...base, "--secagg-threshold", "2", "--secure-threshold", "3"]);
    t.is(both.code, 2, both.stderr);
    t.regex(both.stderr, /give --secagg-threshold or --secure-threshold \(the same option\), not both/);
    const old = await runCli([...base, "--secure-threshold", "0"]);
    t.is(old.code, 2, old.stderr);
    t.regex(old.stderr, /--secure-threshold must be a positive integer/);
});

test("an option the table gives several verbs reads the same in each verb's --help (declared once, not copied)", async (t) => {
    const helps = new Map(await allHelp());
    const flat = (text: string) => text.replace(/\s+/g, " ");
    let checked = 0;
    for (const spec of optionTable.filter((s) => s.verbs.length > 1))
        for (const verb of spec.verbs) {
            const text = helps.get(verb);
            t.truthy(text, `${verb} (a verb of ${spec.flags}) has a --help`);
            t.true(flat(text!).includes(`${spec.flags} ${flat(spec.help)}`), `${verb} --help shows ${spec.flags} with the table's help`);
            checked++;
        }
    t.true(checked > 30, `${checked} verb options checked`);
});
