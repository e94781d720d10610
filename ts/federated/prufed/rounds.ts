// The server's round state machine, without transport, so that an HTTP server only adds routes:
//   register(client)   -> a client declares its layer map (original_layers), rank and sample weight
//   startRound(now)    -> seeded sample of the registered clients, a deadline
//   assignment(client) -> the global adapter's part for the client's layers (client numbering)
//   submit(client, …)  -> an upload: validated (align.ts) and stored, or rejected with a reason;
//                         late (past the deadline) or unsampled uploads are refused
//   closeRound(now)    -> when every sampled client answered or the deadline passed: aggregate the
//                         accepted uploads if they reach the quorum (minClients), else keep the global;
//                         write <dataDir>/rounds/round-N.gguf (base numbering, full depth) and round-N.json
// All state lives in <dataDir>: state.json (durable-file.ts: temp, fsync, rename, fsync folder, after every transition), the
// accepted uploads of the open round in uploads/round-N/, so that a restarted server resumes.
import fs from "node:fs";
import path from "node:path";
import {copyFileDurable, fsyncDir, writeJsonDurable} from "../../durable-file.js";
import {readGguf} from "../../gguf/read.js";
import {readLoraAdapter, writeLoraAdapter, type LoraAdapter} from "../../train/adapter.js";
import {deriveSeed, Random} from "../../random.js";
import {checkLayerMap, layoutOfBase, readUpload, toBaseNumbering, UploadRejected, validateUpload, type AdapterLayout,
    type UploadLimits} from "./align.js";
import type {MaskedMetrics, SecureLayerOutcome} from "./secure.js";
import {aggregate, aggregationMethods, clientPart, initialGlobal, strategyFor, type AggregationMethod, type TargetAggregation} from "./aggregate.js";

export interface FederationConfig {
    /** Base model (full depth) every client's model was cut from. */
    base: string;
    aggregation: AggregationMethod;
    rounds: number;
    /** Clients sampled per round (default: all registered). */
    clientsPerRound?: number;
    /** Accepted uploads a round needs to be aggregated (default 1). */
    minClients?: number;
    /** Seconds from a round's start to its deadline (default: none). */
    roundTimeout?: number;
    seed: number;
    /** LoRA rank of the global adapter (flexlora: the largest client rank) and alpha. */
    r: number;
    loraAlpha: number;
    targetModules?: string[];
    clipNorm?: number;
    maxUploadBytes?: number;
    maxAbsValue?: number;
    /** Secure aggregation over HTTP (secure.ts): the server learns only each layer's weighted sum (layerwise / fedavg). */
    secureAggregation?: boolean;
    /** Shamir threshold t of secure rounds (default: a majority of the round's sampled clients). */
    secaggThreshold?: number;
    /** Seconds each secure phase after the keys phase may last (shares, masked input, unmasking; default 60). */
    secaggPhaseTimeout?: number;
}

export interface RegisteredClient {
    id: string;
    /** Base layer of each of its layers. */
    layerMap: number[];
    /** Sample weight: its number of training items. */
    weight: number;
    r: number;
    loraAlpha: number;
}

export interface UploadMetrics {
    trainLoss?: number;
    accuracyBefore?: number;
    accuracy?: number;
    bytesDown?: number;
    bytesUp?: number;
    seconds?: number;
}

export interface RoundState {
    round: number;
    sampled: string[];
    startedAt: number;
    /** Epoch ms; null: none. */
    deadline: number | null;
    accepted: {client: string; file: string; receivedAt: number; metrics: UploadMetrics}[];
    rejected: {client: string; reason: string; message: string; at: number}[];
}

export interface RoundSummary {
    round: number;
    aggregated: boolean;
    /** Why a round was not aggregated (quorum not reached). */
    note?: string;
    sampled: string[];
    clients: {id: string; layerMap: number[]; weight: number; r: number; loraAlpha: number; metrics: UploadMetrics}[];
    rejected: RoundState["rejected"];
    /** Sampled clients that sent nothing accepted by the deadline. */
    missing: string[];
    targets: TargetAggregation[];
    file: string;
    seconds: number;
    /** Secure rounds: who took part in which phase; the server never held an update (no uploads/round-N). */
    secure?: SecureRoundRecord;
}

export interface SecureRoundRecord {
    threshold: number;
    scaleBits: number;
    /** Clients that sent keys in time (the roster). */
    roster: string[];
    /** Roster clients that sent shares but no masked input: their masks were removed with Shamir shares of their keys. */
    dropped: string[];
    /** Clients whose masked input is in the sum. */
    contributors: string[];
    /** Survivors that sent unmasking shares. */
    unmasked: string[];
    /** Matrices sent under masks (≥ 2 holders) / keeping their previous value (not summed: see `layers`). */
    maskedTargets: number;
    keptTargets: number;
    /** Per layer (null: the tensors outside any layer): its holders and survivors, summed or kept and why. */
    layers?: SecureLayerOutcome[];
    /** The contributors' metrics as the server learns them in a secure round: weighted means of masked coordinates. */
    maskedMetrics?: MaskedMetrics;
    aborted?: string;
}

interface FederationState {
    version: 1;
    config: FederationConfig;
    clients: RegisteredClient[];
    /** Last round closed (0: none). */
    completed: number;
    current: RoundState | null;
    history: RoundSummary[];
}

/** An upload that arrived after its round's deadline. */
export class LateUpload extends Error {
    override name = "LateUpload";
}

const stateFile = (dir: string) => path.join(dir, "state.json");
const clientIdPattern = /^[A-Za-z0-9_.-]{1,64}$/;


export function checkFederationConfig(c: FederationConfig): void {
    if (!aggregationMethods.includes(c.aggregation))
        throw new RangeError(`aggregation must be one of ${aggregationMethods.join(", ")} (got ${c.aggregation})`);
    const posInt = (x: unknown) => typeof x === "number" && Number.isInteger(x) && x >= 1;
    if (!posInt(c.rounds))
        throw new RangeError(`rounds must be a positive integer (got ${c.rounds})`);
    if (c.clientsPerRound !== undefined && !posInt(c.clientsPerRound))
        throw new RangeError(`clientsPerRound must be a positive integer (got ${c.clientsPerRound})`);
    if (c.minClients !== undefined && !posInt(c.minClients))
        throw new RangeError(`minClients must be a positive integer (got ${c.minClients})`);
    if (c.roundTimeout !== undefined && !(c.roundTimeout > 0))
        throw new RangeError(`roundTimeout must be a positive number of seconds (got ${c.roundTimeout})`);
    if (!Number.isSafeInteger(c.seed) || c.seed < 0)
        throw new RangeError(`seed must be a non-negative integer (got ${c.seed})`);
    if (!posInt(c.r) || !(c.loraAlpha > 0))
        throw new RangeError(`r must be a positive integer and loraAlpha positive (got ${c.r}, ${c.loraAlpha})`);
    if (c.clipNorm !== undefined && !(c.clipNorm > 0))
        throw new RangeError(`clipNorm must be positive (got ${c.clipNorm})`);
    if (c.secureAggregation) {
        if (!strategyFor(c.aggregation).secureAggregation)
            throw new RangeError(`secure aggregation sums per-layer factors: use it with layerwise or fedavg, not ${c.aggregation}`);
        if (c.clipNorm !== undefined)
            throw new RangeError("clipNorm needs each update, which secure aggregation hides from the server (clients may clip locally)");
    }
    // t = 1 would let the server rebuild any client's mask seed from one share
    if (c.secaggThreshold !== undefined && (!posInt(c.secaggThreshold) || c.secaggThreshold < 2 || !c.secureAggregation))
        throw new RangeError(`secaggThreshold must be an integer >= 2, with secureAggregation (got ${c.secaggThreshold})`);
    if (c.secaggPhaseTimeout !== undefined && !(c.secaggPhaseTimeout > 0))
        throw new RangeError(`secaggPhaseTimeout must be a positive number of seconds (got ${c.secaggPhaseTimeout})`);
}

/** Each setting of a federation with the `fl server` flag that sets it (for config mismatch messages). */
const configFlags: [keyof FederationConfig, string][] = [["base", "--base"], ["aggregation", "--aggregation"], ["rounds", "--rounds"],
    ["clientsPerRound", "--clients-per-round"], ["minClients", "--min-clients"], ["roundTimeout", "--round-timeout"], ["seed", "--seed"],
    ["r", "--r"], ["loraAlpha", "--lora-alpha"], ["targetModules", "--target-modules"], ["clipNorm", "--clip-norm"],
    ["maxUploadBytes", "--max-upload-mb"], ["maxAbsValue", "maxAbsValue"], ["secureAggregation", "--secure-aggregation"],
    ["secaggThreshold", "--secagg-threshold"], ["secaggPhaseTimeout", "--secagg-phase-timeout"]];

/** How `given` differs from a federation's saved configuration, one line per setting (empty: the same). */
export function configDifferences(saved: FederationConfig, given: FederationConfig): string[] {
    // an unset boolean is false; every other unset setting is its default, stated as "unset"
    const norm = (k: keyof FederationConfig, v: unknown) => JSON.stringify(k === "secureAggregation" ? v === true : v ?? null);
    const shown = (k: keyof FederationConfig, v: unknown) => (norm(k, v) === "null" ? "unset" : norm(k, v));
    return configFlags.filter(([k]) => norm(k, saved[k]) !== norm(k, given[k]))
        .map(([k, flag]) => `${flag}: saved ${shown(k, saved[k])}, given ${shown(k, given[k])}`);
}

/** PruFed's server state machine without transport: registration, rounds, uploads, aggregation, resume. */
export class FederationServer {
    private constructor(readonly dataDir: string, private state: FederationState, readonly layout: AdapterLayout, private global: LoraAdapter) {}

    /** Starts a federation in an empty (or absent) folder: round-0.gguf is the initial global adapter. */
    static async create(dataDir: string, config: FederationConfig): Promise<FederationServer> {
        checkFederationConfig(config);
        if (fs.existsSync(stateFile(dataDir)))
            throw new Error(`${dataDir} already holds a federation (state.json); open it to resume`);
        await fs.promises.mkdir(path.join(dataDir, "rounds"), {recursive: true});
        const base = await readGguf(config.base);
        const layout = layoutOfBase(base, config.targetModules ?? ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
            config.targetModules !== undefined);
        const global = initialGlobal(layout, config.aggregation, config.r, config.loraAlpha, config.seed);
        const server = new FederationServer(dataDir, {version: 1, config, clients: [], completed: 0, current: null, history: []}, layout, global);
        await server.writeGlobal(0, global, []);
        await server.save();
        return server;
    }

    /** Reopens a federation from its folder: the round in progress continues with the uploads it had accepted. */
    static async open(dataDir: string): Promise<FederationServer> {
        let state: FederationState;
        try {
            state = JSON.parse(await fs.promises.readFile(stateFile(dataDir), "utf8")) as FederationState;
        } catch (err) {
            throw new Error(`${stateFile(dataDir)}: cannot read the federation state (${(err as Error).message})`);
        }
        if (state.version !== 1)
            throw new Error(`${stateFile(dataDir)}: unknown state version ${state.version}`);
        const base = await readGguf(state.config.base);
        const layout = layoutOfBase(base, state.config.targetModules ?? ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
            state.config.targetModules !== undefined);
        const global = await readLoraAdapter(roundFile(dataDir, state.completed));
        return new FederationServer(dataDir, state, layout, global);
    }

    get config(): FederationConfig { return this.state.config; }
    get completed(): number { return this.state.completed; }
    get current(): RoundState | null { return this.state.current; }
    get clients(): readonly RegisteredClient[] { return this.state.clients; }
    get history(): readonly RoundSummary[] { return this.state.history; }
    get finished(): boolean { return this.state.completed >= this.state.config.rounds; }
    /** The global adapter after the last closed round (base numbering). */
    get globalAdapter(): LoraAdapter { return this.global; }

    private async save(): Promise<void> {
        await writeJsonDurable(stateFile(this.dataDir), this.state, 1);
    }

    private async writeGlobal(round: number, adapter: LoraAdapter, clients: string[]): Promise<void> {
        await writeLoraAdapter(roundFile(this.dataDir, round), adapter, [
            {key: "general.name", type: "string", value: `PruFed global adapter, round ${round}`},
            {key: "ppc_gpt.prufed.round", type: "uint32", value: round},
            {key: "ppc_gpt.prufed.aggregation", type: "string", value: this.state.config.aggregation},
            {key: "ppc_gpt.prufed.base_layers", type: "uint32", value: this.layout.layers},
            ...(clients.length ? [{key: "ppc_gpt.prufed.clients", type: "array" as const, elementType: "string" as const, value: clients}] : []),
        ]);
        // writeGguf fsyncs the file before its rename; the rename counts once the folder is fsynced too
        await fsyncDir(path.dirname(roundFile(this.dataDir, round)));
    }

    /** Adds (or, for a restarted client, re-registers with the same declaration) a client. */
    async register(client: RegisteredClient): Promise<void> {
        if (!clientIdPattern.test(client.id))
            throw new RangeError(`client id must be 1-64 characters of A-Z a-z 0-9 _ . - (got ${JSON.stringify(client.id)})`);
        checkLayerMap(client.layerMap, this.layout.layers, `client ${client.id}`);
        if (!(client.weight > 0) || !Number.isFinite(client.weight))
            throw new RangeError(`client ${client.id}: weight must be a positive number (got ${client.weight})`);
        const c = this.state.config;
        if (strategyFor(c.aggregation).mixedRanks) {
            if (!Number.isInteger(client.r) || client.r < 1 || client.r > c.r)
                throw new RangeError(`client ${client.id}: r = ${client.r}; ${c.aggregation} clients need 1 <= r <= the global rank ${c.r}`);
        } else if (client.r !== c.r || client.loraAlpha !== c.loraAlpha) {
            throw new RangeError(`client ${client.id}: r = ${client.r}, lora_alpha = ${client.loraAlpha}; ${c.aggregation} needs the ` +
                `federation's r = ${c.r}, lora_alpha = ${c.loraAlpha} (flexlora allows other ranks)`);
        }
        const known = this.state.clients.find((x) => x.id === client.id);
        if (known) {
            if (JSON.stringify(known) !== JSON.stringify(client))
                throw new Error(`client ${client.id} is registered with another declaration (layers, weight or rank)`);
            return;
        }
        this.state.clients.push({...client, layerMap: [...client.layerMap]});
        await this.save();
    }

    /** Opens the next round: a seeded sample of the registered clients. */
    async startRound(now = Date.now()): Promise<RoundState> {
        if (this.state.current)
            throw new Error(`round ${this.state.current.round} is still open`);
        if (this.finished)
            throw new Error(`all ${this.state.config.rounds} rounds are done`);
        const c = this.state.config;
        const round = this.state.completed + 1;
        const ids = this.state.clients.map((x) => x.id).sort();
        if (ids.length < (c.minClients ?? 1))
            throw new Error(`${ids.length} clients registered, fewer than minClients = ${c.minClients}`);
        const m = Math.min(ids.length, c.clientsPerRound ?? ids.length);
        const sampled = new Random(deriveSeed(c.seed, "sample", round)).shuffle(ids).slice(0, m).sort();
        this.state.current = {round, sampled, startedAt: now, deadline: c.roundTimeout !== undefined ? now + c.roundTimeout * 1000 : null,
            accepted: [], rejected: []};
        await this.save();
        return this.state.current;
    }

    private client(id: string): RegisteredClient {
        const c = this.state.clients.find((x) => x.id === id);
        if (!c)
            throw new Error(`unknown client ${id}`);
        return c;
    }

    /** The adapter a sampled client starts the open round from (client numbering). */
    assignment(id: string): LoraAdapter {
        const round = this.state.current;
        if (!round || !round.sampled.includes(id))
            throw new Error(`client ${id} is not sampled in ${round ? `round ${round.round}` : "any open round"}`);
        const c = this.client(id);
        return clientPart(this.global, c.layerMap, {method: this.state.config.aggregation, r: c.r, loraAlpha: c.loraAlpha,
            seed: deriveSeed(this.state.config.seed, "client-part", id, round.round)});
    }

    private limits(): UploadLimits {
        const c = this.state.config;
        return {maxBytes: c.maxUploadBytes, maxAbsValue: c.maxAbsValue};
    }

    /**
     * Accepts a sampled client's upload (an adapter file, client numbering) for the open round, after
     * validation; the file is copied into the server's folder. A rejected upload is logged in the
     * round and rethrown (UploadRejected, or LateUpload past the deadline).
     */
    async submit(id: string, file: string, metrics: UploadMetrics = {}, now = Date.now()): Promise<void> {
        const round = this.state.current;
        if (!round)
            throw new Error("no round is open");
        const reject = async (reason: string, err: Error): Promise<never> => {
            round.rejected.push({client: id, reason, message: err.message, at: now});
            await this.save();
            throw err;
        };
        if (!round.sampled.includes(id))
            return reject("not-sampled", new Error(`client ${id} is not sampled in round ${round.round}`));
        if (round.deadline !== null && now > round.deadline)
            return reject("late", new LateUpload(`client ${id}: round ${round.round}'s deadline passed ${((now - round.deadline) / 1000).toFixed(1)} s ago`));
        if (round.accepted.some((a) => a.client === id))
            return reject("duplicate", new Error(`client ${id} already uploaded for round ${round.round}`));
        const c = this.client(id);
        try {
            await readUpload(file, this.layout, {layerMap: c.layerMap, r: c.r, loraAlpha: c.loraAlpha}, this.limits());
        } catch (err) {
            if (err instanceof UploadRejected)
                return reject(err.reason, err);
            throw err;
        }
        const dir = path.join(this.dataDir, "uploads", `round-${round.round}`);
        await fs.promises.mkdir(dir, {recursive: true});
        await fsyncDir(path.dirname(dir));
        const kept = path.join(dir, `${id}.gguf`);
        await copyFileDurable(file, kept);
        round.accepted.push({client: id, file: kept, receivedAt: now, metrics});
        await this.save();
    }

    /** Whether the open round can close: every sampled client answered, or the deadline passed. */
    readyToClose(now = Date.now()): boolean {
        const round = this.state.current;
        if (!round)
            return false;
        const answered = new Set([...round.accepted.map((a) => a.client), ...round.rejected.map((r) => r.client)]);
        return round.sampled.every((id) => answered.has(id)) || (round.deadline !== null && now > round.deadline);
    }

    /** Closes the open round: aggregates (if the quorum is met) and writes round-N.gguf / round-N.json. */
    async closeRound(): Promise<RoundSummary> {
        const round = this.state.current;
        if (!round)
            throw new Error("no round is open");
        const started = performance.now();
        const c = this.state.config;
        const accepted = round.accepted.filter((a) => round.deadline === null || a.receivedAt <= round.deadline);
        const updates = [];
        for (const a of accepted) {
            const client = this.client(a.client);
            const adapter = validateUpload(await readLoraAdapter(a.file), this.layout, {layerMap: client.layerMap, r: client.r, loraAlpha: client.loraAlpha}, this.limits());
            updates.push({client: a.client, weight: client.weight, layerMap: client.layerMap, adapter});
        }
        const quorum = c.minClients ?? 1;
        if (updates.length >= quorum) {
            const result = aggregate(this.global, updates, {method: c.aggregation, clipNorm: c.clipNorm});
            return this.finishRound(round, result.adapter, result.targets, accepted.map((a) => a.client), undefined, started);
        }
        return this.finishRound(round, this.global, [], [],
            `${updates.length} accepted upload(s), fewer than minClients = ${quorum}: the global adapter is kept`, started);
    }

    /**
     * Closes the open round with an aggregate computed elsewhere (secure aggregation: the server
     * holds only the unmasked per-layer sums, never the uploads); `contributors` are the clients in it.
     */
    async closeRoundWith(adapter: LoraAdapter, targets: TargetAggregation[], contributors: string[], note?: string,
        extra: {metrics?: Record<string, UploadMetrics>; secure?: SecureRoundRecord} = {}): Promise<RoundSummary> {
        const round = this.state.current;
        if (!round)
            throw new Error("no round is open");
        for (const id of contributors)
            if (!round.sampled.includes(id))
                throw new Error(`client ${id} is not sampled in round ${round.round}`);
        const quorum = this.state.config.minClients ?? 1;
        if (note === undefined && contributors.length < quorum)
            note = `${contributors.length} contributor(s), fewer than minClients = ${quorum}: the global adapter is kept`;
        if (note !== undefined || contributors.length === 0)
            return this.finishRound(round, this.global, [], [], note ?? "no contributors: the global adapter is kept", performance.now(), extra);
        return this.finishRound(round, adapter, targets, contributors, undefined, performance.now(), extra);
    }

    private async finishRound(round: RoundState, adapter: LoraAdapter, targets: TargetAggregation[], used: string[], note: string | undefined,
        started: number, extra: {metrics?: Record<string, UploadMetrics>; secure?: SecureRoundRecord} = {}): Promise<RoundSummary> {
        this.global = adapter;
        const file = roundFile(this.dataDir, round.round);
        await this.writeGlobal(round.round, this.global, used);
        const summary: RoundSummary = {
            round: round.round,
            aggregated: note === undefined,
            ...(note ? {note} : {}),
            sampled: round.sampled,
            clients: used.map((id) => {
                const cl = this.client(id);
                const metrics = round.accepted.find((a) => a.client === id)?.metrics ?? extra.metrics?.[id] ?? {};
                return {id: cl.id, layerMap: cl.layerMap, weight: cl.weight, r: cl.r, loraAlpha: cl.loraAlpha, metrics};
            }),
            rejected: round.rejected,
            missing: round.sampled.filter((id) => !used.includes(id) && !round.accepted.some((a) => a.client === id)),
            targets,
            file,
            seconds: (performance.now() - started) / 1000,
            ...(extra.secure ? {secure: extra.secure} : {}),
        };
        await writeJsonDurable(file.replace(/\.gguf$/, ".json"), summary, 1);
        this.state.history.push(summary);
        this.state.completed = round.round;
        this.state.current = null;
        await this.save();
        return summary;
    }
}

export function roundFile(dataDir: string, round: number): string {
    return path.join(dataDir, "rounds", `round-${round}.gguf`);
}

/**
 * Recomputes a round's global adapter from the previous round file and the clients' own copies of
 * their uploads (client numbering), as recorded in round-N.json: anyone holding the files can check
 * the server's aggregate. For a secure round the matrices that were not summed under masks (fewer
 * than two holders or fewer than two surviving holders: not in round-N.json `targets`; `secure.layers`
 * says why) keep the previous value, as the secure round did; the
 * secure aggregate then agrees within fixed-point error (n·2^-21 over the survivors' weight share).
 */
export async function recomputeRound(dataDir: string, round: number, uploads: Record<string, string>, method: AggregationMethod,
    clipNorm?: number): Promise<LoraAdapter> {
    const summary = JSON.parse(await fs.promises.readFile(roundFile(dataDir, round).replace(/\.gguf$/, ".json"), "utf8")) as RoundSummary;
    const previous = await readLoraAdapter(roundFile(dataDir, round - 1));
    if (!summary.aggregated)
        return previous;
    const updates = [];
    for (const c of summary.clients) {
        const file = uploads[c.id];
        if (!file)
            throw new Error(`round ${round}: no upload given for client ${c.id}`);
        updates.push({client: c.id, weight: c.weight, layerMap: c.layerMap, adapter: toBaseNumbering(await readLoraAdapter(file), c.layerMap)});
    }
    const plain = aggregate(previous, updates, {method, clipNorm}).adapter;
    if (!summary.secure)
        return plain;
    const summed = new Set(summary.targets.map((t) => t.target));
    return {...plain, tensors: plain.tensors.map((t) => summed.has(t.name.replace(/\.lora_[ab]$/, "")) ? t
        : previous.tensors.find((p) => p.name === t.name)!)};
}
