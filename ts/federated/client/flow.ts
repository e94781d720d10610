// The client's side of the flow, resumable from a state folder: perturb locally (the server's kit
// or local embeddings), submit only perturbed texts under random ids, follow the job, download the
// model, retrain and evaluate. Every step's result is written (atomically) before the next starts,
// so a client killed at any point and run again with the same arguments continues the same job.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {datasetReport, createPerturber, type DatasetReport, type MechanismReport, type RecordReport} from "../../privacy/perturb.js";
import {readIdMap, releaseItems, writeIdMap, type IdMapEntry, type ReleasedItem} from "../../privacy/release.js";
import {readJsonl, writeJsonlAtomic} from "../../data/jsonl.js";
import type {TrainEvent} from "../../train/train.js";
import {epsilonRange, fillJobSpec, jobItemSchema, protocolVersion, type JobItem, type JobProgress, type JobQuantization, type JobSpec, type JobStatus, type PrivacyMechanism,
    type ServerInfo} from "../protocol.js";
import {fileDigest, loadPrivateData, type PrivateData, type PrivateDataOptions} from "./data.js";
import {finishModel, type FinishReport} from "./finish.js";
import {FederatedClient, FederatedError, type DownloadResult} from "./http.js";
import {makePrivateDir} from "../private-dir.js";
import {writeFileDurableSync} from "../../durable-file.js";

export interface PerturbSettings {
    mechanism: PrivacyMechanism;
    epsilon: number;
    /** Local embeddings GGUF (or a kit) instead of the server's kit. */
    embeddings?: string;
    /** CusText cluster size K (the perturber's default when absent). */
    custextK?: number;
    /** Reproducible perturbation noise, ids and order (tests and audits only). */
    seed?: number;
    threads?: number;
}

export interface ClientSettings {
    data: PrivateDataOptions;
    perturb: PerturbSettings;
    spec: JobSpec;
    /** Client retraining (finish). */
    finish: {steps?: number; learningRate?: number; batchSize?: number; seed?: number};
    stateDir: string;
    threads?: number;
    gpuLayers?: number;
}

export type ClientEvent =
    | {event: "info"; server: string; model: ServerInfo["model"]; generator: ServerInfo["generator"]}
    | {event: "kit"; sha256: string; size: number; cached: boolean}
    | {event: "perturbed"; items: number; heldOut: number; epsilonPerToken: number; epsilonPerRecord: DatasetReport["epsilonPerRecord"];
        /** Perturbed texts cut to the upload's field limits. */
        clipped: number}
    | {event: "submitted"; job: string; bytes: number; resumed: boolean}
    | {event: "status"; job: string; status: JobStatus["status"]; stage: JobStatus["stage"]}
    | {event: "progress"; stage: string; done: number; total: number; unit?: string}
    | {event: "downloaded"; path: string; sha256: string; size: number; resumedFrom: number}
    | {event: "train"; train: TrainEvent}
    | {event: "finished"; report: FinishReport};

/** What the state folder remembers (state.json). */
export interface ClientState {
    version: 1;
    /** Hash of everything that defines the run: a different run refuses this folder. */
    fingerprint: string;
    server: string;
    created_at: string;
    kit?: {sha256: string; size: number};
    perturbed?: {items: number; held_out: number; file: string; id_map: string; report: string};
    idempotency_key?: string;
    job?: string;
    submitted_bytes?: number;
    model?: {path: string; sha256: string; size: number};
    finished?: FinishReport;
    /** The client-retraining settings `finished` was made with (other settings redo the finish). */
    finish_settings?: ClientSettings["finish"];
}

export interface RunSummary {
    server: string;
    job: string;
    state_dir: string;
    traffic: {sent_bytes: number; received_bytes: number; requests: number};
    upload: {items: number; bytes: number};
    held_out_items: number;
    privacy: {mechanism: string; epsilon_per_token: number; epsilon_per_record: DatasetReport["epsilonPerRecord"];
        epsilon_total: number; report: string; id_map: string};
    job_status: JobStatus;
    layers: {before: number; after: number; removed: number[]} | null;
    /** The server's quantization of the delivered model (job spec `quantize`): type and bytes before and after; null without one. */
    quantization: JobQuantization | null;
    model: {path: string; sha256: string; size: number};
    finish: FinishReport;
}

const stateFile = (dir: string) => path.join(dir, "state.json");

function writeJsonAtomic(file: string, value: unknown): void {
    writeFileDurableSync(file, JSON.stringify(value, null, 2) + "\n");
}

export function readState(dir: string): ClientState | undefined {
    try {
        return JSON.parse(fs.readFileSync(stateFile(dir), "utf8")) as ClientState;
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT")
            return undefined;
        throw new Error(`${stateFile(dir)}: unreadable state (${(err as Error).message}); remove the folder to start over`);
    }
}

/** The run's identity: server, data (and its bytes), perturbation and job settings. */
export function runFingerprint(server: string, s: ClientSettings): string {
    const d = s.data;
    return crypto.createHash("sha256").update(JSON.stringify({
        server, data: {...d, dataSha: fileDigest(d.data), evalSha: fileDigest(d.evalData)},
        perturb: {...s.perturb, threads: undefined, embeddingsSha: s.perturb.embeddings ? fileDigest(s.perturb.embeddings) : undefined},
        spec: fillJobSpec(s.spec),
    })).digest("hex");
}

/** Opens (or creates) the state folder of this run; a folder holding another run is refused. */
export function openState(server: string, s: ClientSettings): ClientState {
    makePrivateDir(s.stateDir);
    const fingerprint = runFingerprint(server, s);
    const existing = readState(s.stateDir);
    if (existing) {
        if (existing.fingerprint !== fingerprint)
            throw new Error(`${s.stateDir} holds another run (job ${existing.job ?? "not yet submitted"}, server ${existing.server}): ` +
                "its server, data, privacy or job settings differ from these; give another --state-dir, the same arguments to " +
                `continue it, or ${existing.job ? `cancel ${existing.job} (ppc-gpt client cancel ${existing.job} --server ${existing.server}) and ` : ""}` +
                `remove ${s.stateDir} to start over`);
        return existing;
    }
    const state: ClientState = {version: 1, fingerprint, server, created_at: new Date().toISOString()};
    writeJsonAtomic(stateFile(s.stateDir), state);
    return state;
}

export function saveState(dir: string, state: ClientState): void {
    writeJsonAtomic(stateFile(dir), state);
}

export interface PreparedUpload {
    items: ReleasedItem[];
    idMap: IdMapEntry[];
    records: RecordReport[];
    dataset: DatasetReport;
    mechanism: MechanismReport;
    /** Perturbed texts cut to the protocol's field limits (replacement tokens can be longer than the originals). */
    clipped: number;
}

const questionLimit = jobItemSchema.properties.question.maxLength;
const choiceTextLimit = jobItemSchema.properties.choices.items.properties.text.maxLength;

/** `text` cut to at most `limit` UTF-16 units, never inside a surrogate pair. */
function clipText(text: string, limit: number): string {
    if (text.length <= limit)
        return text;
    const end = /[\uD800-\uDBFF]/.test(text[limit - 1]) ? limit - 1 : limit;
    return text.slice(0, end);
}

/**
 * Perturbs the private items into what may be uploaded: perturbed texts under fresh random ids,
 * shuffled. An item whose question perturbs to an empty text (every token dropped) is left out.
 */
export async function preparePerturbedUpload(items: PrivateData["train"], embeddings: string, p: PerturbSettings): Promise<PreparedUpload> {
    const perturber = await createPerturber({
        embeddings, mechanism: p.mechanism, epsilon: p.epsilon, seed: p.seed, threads: p.threads,
        ...(p.mechanism === "custext" && p.custextK !== undefined ? {k: p.custextK} : {}),
    });
    try {
        const r = await perturber.perturbItems(items);
        // Cutting a perturbed text to the upload's field limits is post-processing of the mechanism's
        // output: it costs no privacy, and the upload is never refused for a text the client could not choose.
        let clipped = 0;
        const clip = (text: string, limit: number): string => {
            const out = clipText(text, limit);
            clipped += out.length < text.length ? 1 : 0;
            return out;
        };
        const fitted = r.items.map((x) => ({...x, question: clip(x.question, questionLimit),
            choices: x.choices.map((c) => ({...c, text: clip(c.text, choiceTextLimit)}))}));
        const kept = fitted.map((x, i) => ({x, i})).filter(({x}) => x.question.trim() !== "");
        const released = releaseItems(kept.map(({x}) => x));
        const records = released.sourceIndex.map((k, n) => ({...r.records[kept[k].i], id: released.items[n].id}));
        const texts = kept.reduce((n, {x}) => n + 1 + x.choices.length, 0);
        return {items: released.items, idMap: released.idMap, records, dataset: datasetReport(records, texts, perturber.mechanism.epsilon),
            mechanism: perturber.summary, clipped};
    } finally {
        perturber.close();
    }
}

/** The federated client's steps, each resumable from the state folder. */
export class ClientFlow {
    readonly client: FederatedClient;
    readonly state: ClientState;
    private info?: ServerInfo;
    private data?: PrivateData;

    constructor(client: FederatedClient, readonly settings: ClientSettings, private readonly emit: (e: ClientEvent) => void = () => {}) {
        this.client = client;
        this.state = openState(client.base, settings);
    }

    private save(): void {
        saveState(this.settings.stateDir, this.state);
    }

    private file(name: string): string {
        return path.join(this.settings.stateDir, name);
    }

    async serverInfo(): Promise<ServerInfo> {
        if (!this.info) {
            this.info = await this.client.info();
            if (this.info.protocol !== protocolVersion)
                throw new FederatedError(`${this.client.base} speaks protocol ${JSON.stringify(this.info.protocol)}; this client speaks ${protocolVersion}`);
            this.emit({event: "info", server: this.client.base, model: this.info.model, generator: this.info.generator});
            const p = this.settings.perturb;
            if (!this.info.privacy.mechanisms.includes(p.mechanism))
                throw new FederatedError(`the server accepts ${this.info.privacy.mechanisms.join(", ")}, not --mechanism ${p.mechanism}`);
            const {min, max} = this.info.privacy.epsilon ?? epsilonRange;
            if (p.epsilon < min || p.epsilon > max)
                throw new FederatedError(`the server accepts ε in [${min}, ${max}] (got --epsilon ${p.epsilon})`);
        }
        return this.info;
    }

    async privateData(): Promise<PrivateData> {
        this.data ??= await loadPrivateData(this.settings.data);
        return this.data;
    }

    /** Step 1: perturb (once; the result is kept in the state folder). */
    async perturb(): Promise<NonNullable<ClientState["perturbed"]>> {
        if (this.state.perturbed)
            return this.state.perturbed;
        const data = await this.privateData();
        let embeddings = this.settings.perturb.embeddings;
        if (!embeddings) {
            const info = await this.serverInfo();
            const kit = await this.client.perturbationKit(this.file("kits"), info.perturbation_kit, {
                onProgress: (done, total) => this.emit({event: "progress", stage: "kit", done, total, unit: "bytes"}),
            });
            this.state.kit = info.perturbation_kit;
            this.emit({event: "kit", ...info.perturbation_kit, cached: kit.cached});
            embeddings = kit.path;
        }
        const up = await preparePerturbedUpload(data.train, embeddings, {...this.settings.perturb, threads: this.settings.threads});
        const files = {file: this.file("perturbed.jsonl"), id_map: this.file("idmap.jsonl"), report: this.file("privacy-report.json")};
        await writeIdMap(files.id_map, up.idMap);
        writeJsonAtomic(files.report, {mechanism: up.mechanism, dataset: up.dataset, records: up.records,
            note: "Local only: this report and the id map never leave the client."});
        await writeJsonlAtomic(files.file, up.items);
        this.state.perturbed = {items: up.items.length, held_out: data.heldOut.length, ...files};
        this.save();
        this.emit({event: "perturbed", items: up.items.length, heldOut: data.heldOut.length, epsilonPerToken: up.dataset.epsilonPerToken,
            epsilonPerRecord: up.dataset.epsilonPerRecord, clipped: up.clipped});
        return this.state.perturbed;
    }

    /** The spec sent: the flags given, plus the privacy declaration. */
    jobSpec(): JobSpec {
        const p = this.settings.perturb;
        return {...this.settings.spec, privacy: {mechanism: p.mechanism, epsilon: p.epsilon}};
    }

    /** Step 2: submit (idempotent: the key is saved before the request, so a retry names the same job). */
    async submit(): Promise<string> {
        if (this.state.job)
            return this.state.job;
        const perturbed = await this.perturb();
        await this.serverInfo();
        const items: JobItem[] = [];
        for await (const {value} of readJsonl(perturbed.file))
            items.push(value as JobItem);
        let resumed = true;
        if (!this.state.idempotency_key) {
            this.state.idempotency_key = crypto.randomBytes(24).toString("base64url");
            this.save();
            resumed = false;
        }
        const r = await this.client.submit({spec: this.jobSpec(), items}, this.state.idempotency_key);
        this.state.job = r.id;
        this.state.submitted_bytes = r.bytes;
        this.save();
        this.emit({event: "submitted", job: r.id, bytes: r.bytes, resumed});
        return r.id;
    }

    /** Step 3: follow the job to its end. */
    async wait(signal?: AbortSignal): Promise<JobStatus> {
        const job = await this.submit();
        return waitForJob(this.client, job, this.emit, signal);
    }

    /** Step 4: download the model (resumable), checked against the job's sha256. */
    async fetch(status: JobStatus, signal?: AbortSignal): Promise<NonNullable<ClientState["model"]>> {
        if (this.state.model && fs.existsSync(this.state.model.path))
            return this.state.model;
        const out = this.file("model.gguf");
        const r = await fetchModel(this.client, status, out, this.emit, signal);
        this.state.model = {path: r.path, sha256: r.sha256, size: r.size};
        this.save();
        return this.state.model;
    }

    /** Step 5: label retraining and S/C evaluation (training resumes from its checkpoint). */
    async finish(signal?: AbortSignal): Promise<FinishReport> {
        const wanted = JSON.stringify(this.settings.finish ?? {});
        if (this.state.finished && JSON.stringify(this.state.finish_settings ?? {}) === wanted)
            return this.state.finished;
        if (JSON.stringify(this.state.finish_settings ?? {}) !== wanted) {
            // Other retraining settings: the old checkpoint does not apply.
            fs.rmSync(this.file("client-train"), {recursive: true, force: true});
            this.state.finished = undefined;
            this.state.finish_settings = this.settings.finish;
            this.save();
        }
        const model = this.state.model;
        if (!model)
            throw new Error("no model yet: the job has not been fetched");
        const data = await this.privateData();
        const f = this.settings.finish, spec = fillJobSpec(this.settings.spec);
        const report = await finishModel({
            model: model.path, train: data.train, heldOut: data.heldOut, evalTask: data.evalTask,
            output: this.file("client-lora.gguf"), checkpointDir: this.file("client-train"),
            steps: f.steps, learningRate: f.learningRate, batchSize: f.batchSize, seed: f.seed,
            r: spec.r, loraAlpha: spec.lora_alpha, loraDropout: spec.lora_dropout, targetModules: spec.target_modules,
            maxInputLength: spec.max_input_length, maxTargetLength: spec.max_target_length,
            threads: this.settings.threads, gpuLayers: this.settings.gpuLayers,
            onTrain: (e) => this.emit({event: "train", train: e}),
            onEval: (stage, done, total) => this.emit({event: "progress", stage: `eval ${stage}`, done, total}),
            signal,
        });
        this.state.finished = report;
        this.save();
        writeJsonAtomic(this.file("report.json"), report);
        this.emit({event: "finished", report});
        return report;
    }

    /** All steps in order; what is done already is skipped. */
    async run(signal?: AbortSignal): Promise<RunSummary> {
        await this.serverInfo();
        const perturbed = await this.perturb();
        const job = await this.submit();
        const status = await this.wait(signal);
        if (status.status !== "succeeded")
            throw new FederatedError(`job ${job} ${status.status}${status.error ? `: ${status.error}` : ""} ` +
                `(state in ${this.settings.stateDir}: give another --state-dir to submit again)`);
        const model = await this.fetch(status, signal);
        const finish = await this.finish(signal);
        const report = JSON.parse(fs.readFileSync(perturbed.report, "utf8")) as {mechanism: MechanismReport; dataset: DatasetReport};
        const plan = status.plan as {layersBefore?: number; layersAfter?: number; originalRemoved?: number[]; removed?: number[]} | null;
        return {
            server: this.client.base, job, state_dir: this.settings.stateDir,
            traffic: {sent_bytes: this.client.traffic.sentBytes, received_bytes: this.client.traffic.receivedBytes,
                requests: this.client.traffic.requests},
            upload: {items: perturbed.items, bytes: this.state.submitted_bytes ?? 0},
            held_out_items: perturbed.held_out,
            privacy: {mechanism: report.mechanism.name, epsilon_per_token: report.dataset.epsilonPerToken,
                epsilon_per_record: report.dataset.epsilonPerRecord, epsilon_total: report.dataset.epsilonTotal,
                report: perturbed.report, id_map: perturbed.id_map},
            job_status: status,
            layers: plan && plan.layersBefore !== undefined ? {before: plan.layersBefore, after: plan.layersAfter!,
                removed: plan.originalRemoved ?? plan.removed ?? []} : null,
            // a server from before the quantize stage sends no quantization
            quantization: status.quantization ?? null,
            model, finish,
        };
    }

    /** The id map of this run (for joining server results back to the private items). */
    idMap(): Promise<IdMapEntry[]> {
        if (!this.state.perturbed)
            throw new Error("nothing perturbed yet");
        return readIdMap(this.state.perturbed.id_map);
    }
}

/** Follows a job, reporting its status changes and progress. */
export async function waitForJob(client: FederatedClient, job: string, emit: (e: ClientEvent) => void, signal?: AbortSignal): Promise<JobStatus> {
    let lastKey = "";
    return client.wait(job, {
        signal,
        onStatus: (s) => {
            const key = `${s.status}/${s.stage}`;
            if (key !== lastKey)
                emit({event: "status", job, status: s.status, stage: s.stage});
            lastKey = key;
        },
        onProgress: (p: JobProgress) => emit({event: "progress", stage: p.stage, done: p.done, total: p.total}),
    });
}

/** Downloads a succeeded job's model to `out` (resuming a partial download), checked against its sha256. */
export async function fetchModel(client: FederatedClient, status: JobStatus, out: string, emit: (e: ClientEvent) => void,
    signal?: AbortSignal): Promise<DownloadResult> {
    if (status.status !== "succeeded" || !status.model)
        throw new FederatedError(`job ${status.id} is ${status.status}${status.error ? ` (${status.error})` : ""}: no model to fetch`);
    let last = 0;
    const r = await client.downloadModel(status.id, out, {
        sha256: status.model.sha256, signal,
        // At most 5 progress events a second: a multi-GB model arrives in many small chunks.
        onProgress: (done, total) => {
            const now = Date.now();
            if (now - last >= 200 || done >= total) {
                last = now;
                emit({event: "progress", stage: "download", done, total, unit: "bytes"});
            }
        },
    });
    emit({event: "downloaded", path: r.path, sha256: r.sha256, size: r.size, resumedFrom: r.resumedFrom});
    return r;
}
