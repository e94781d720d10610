// `ppc-gpt fl client`: registers with an `fl server` (its kept layers from the model's
// ppc_gpt.pruning.original_layers, rank, sample count), long-polls for a round it is sampled in,
// downloads its part of the global adapter, trains E local steps (client.ts runLocalRound), keeps
// its upload as W/round-N.gguf and uploads it gzip-compressed with its metrics. A restarted client
// re-registers with the same declaration (the server keeps it) and re-sends an upload it already
// made (W/round-N.done.json) instead of training again.
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import {readTaskItems} from "../../data/jsonl.js";
import type {TaskItem} from "../../data/task-item.js";
import {readGguf} from "../../gguf/read.js";
import type {AccuracySummary} from "../../eval/metrics.js";
import {readLoraAdapter} from "../../train/adapter.js";
import {deriveSeed, Random} from "../../random.js";
import {FederatedError, serverBase} from "../client/http.js";
import {runLocalRound, type LocalTrainSettings} from "./client.js";
import {writeFileDurable, writeJsonDurable} from "../../durable-file.js";
import {flProtocol, flRoutes, metricsHeader, roundRoute, secaggVersionHeader, unmaskToWire, type NotReady, type RosterAnswer, type SecureRoundStatus,
    type SharesAnswer, type UnmaskAnswer} from "./http-protocol.js";
import {modelLayerShapes, toBaseNumbering} from "./align.js";
import {prufedDefaults} from "./defaults.js";
import {SecureClient, type MaskPlan} from "./secure.js";
import {checkRoster, checkSecaggVersion, checkShareBoxes, checkUnmaskOnce, checkUnmaskRequest, defaultSecurePolicy, secaggProtocol,
    SecureRoundRefused, type SecureClientPolicy, type UnmaskRecord} from "./secure-checks.js";
import {makePrivateDir} from "../private-dir.js";
import {checkServerName, roundNumberPattern} from "../http-wire.js";

export interface FlClientOptions {
    server: string;
    token: string;
    model: string;
    data: string;
    workDir: string;
    localSteps: number;
    r: number;
    loraAlpha: number;
    /** Share of the local items held out for accuracy (default `prufedDefaults.heldOutShare`). */
    heldOutShare?: number;
    /** One held-out set (task-item JSONL) scored before and after every local round, besides the split of `data`. */
    evalData?: string;
    /** Seed of the split and local training (default `prufedDefaults.seed`, as `fl client --help` shows). */
    seed?: number;
    train?: LocalTrainSettings;
    /** Long-poll period (s, default 20). */
    waitSeconds?: number;
    onEvent?: (e: Record<string, unknown>) => void;
    signal?: AbortSignal;
    /** Refuse a server or round without secure aggregation (nothing is uploaded). */
    requireSecure?: boolean;
    /** What this client requires of a secure round's roster and threshold (secure-checks.ts; default: at least 3 members). */
    securePolicy?: SecureClientPolicy;
    /** Secure rounds: send the train loss and accuracies in the clear too (default: only as masked coordinates). */
    shareMetrics?: boolean;
    /** Allow plain http:// to a host off loopback. */
    insecure?: boolean;
}

export interface FlClientRound {
    round: number;
    trainLoss: number;
    accuracyBefore?: number;
    accuracy?: number;
    /** `evalData` scored as `ppc-gpt eval` scores (acc, acc_norm, standard errors), before and after local training. */
    evalSetBefore?: AccuracySummary;
    evalSet?: AccuracySummary;
    bytesDown: number;
    bytesUp: number;
    seconds: number;
    accepted: boolean;
    error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Deterministic split of the local items: a seeded shuffle, the last share held out. */
export function splitLocal(items: TaskItem[], share: number, seed: number): {train: TaskItem[]; heldOut: TaskItem[]} {
    const shuffled = new Random(deriveSeed(seed, "fl-client-split")).shuffle([...items]);
    const held = items.length >= 4 ? Math.max(1, Math.round(items.length * share)) : 0;
    return {train: shuffled.slice(0, shuffled.length - held), heldOut: shuffled.slice(shuffled.length - held)};
}

type Failed = (res: Response, what: string) => Promise<never>;

/** The client's HTTP: `call` (bearer token; retries while the server restarts) and `failed` (throws the server's error). */
function flHttp(o: FlClientOptions): {base: string; call: Call; failed: Failed} {
    const base = serverBase(o.server, {insecure: o.insecure});
    const auth = {authorization: `Bearer ${o.token}`};
    const call = async (route: string, init: RequestInit = {}, retry = true): Promise<Response> => {
        for (let attempt = 0; ; attempt++) {
            try {
                return await fetch(`${base}${route}`, {...init, headers: {...auth, ...(init.headers as Record<string, string> ?? {})}, signal: o.signal});
            } catch (err) {
                // a server restarting (killed, then started again): retry for up to a minute
                if (!retry || attempt >= 120 || o.signal?.aborted)
                    throw new FederatedError(`${base}${route}: ${(err as Error).message}${(err as {cause?: Error}).cause ? ` (${(err as {cause: Error}).cause.message})` : ""}`);
                await sleep(500);
            }
        }
    };
    const failed = async (res: Response, what: string): Promise<never> => {
        const text = await res.text();
        let msg = text;
        try {
            msg = `${JSON.parse(text).error} (${JSON.parse(text).code})`;
        } catch {
            // not JSON
        }
        throw new FederatedError(`${what}: HTTP ${res.status}: ${msg}`);
    };
    return {base, call, failed};
}

/** Registers with the server and checks its protocol and secure-aggregation answer; returns the registration. */
async function registerFlClient(o: FlClientOptions, http: {base: string; call: Call; failed: Failed}, gguf: Awaited<ReturnType<typeof readGguf>>,
    weight: number): Promise<{id: string; rejoined: boolean}> {
    const {base, call, failed} = http;
    const reg = await call("/v1/fl/clients", {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({original_layers: gguf.originalLayers, weight, r: o.r, lora_alpha: o.loraAlpha,
            tensors: modelLayerShapes(gguf)})});
    if (!reg.ok)
        await failed(reg, "registration");
    const regBody = await reg.json() as {id: string; rejoined: boolean; protocol?: string; secure_aggregation?: boolean; secagg_protocol?: string};
    if (regBody.protocol !== flProtocol)
        throw new FederatedError(`${base} speaks PruFed protocol ${JSON.stringify(regBody.protocol ?? null)}; this client speaks ${flProtocol}`);
    if (regBody.secure_aggregation)
        checkSecaggVersion(regBody.secagg_protocol, base);
    else if (o.requireSecure)
        throw new SecureRoundRefused(`${base} does not use secure aggregation; --require-secure-aggregation refuses to send it an update`);
    return regBody;
}

/** A PruFed client over HTTP: register, then train and upload each round it is sampled for. */
export async function runFlClient(o: FlClientOptions): Promise<{rounds: FlClientRound[]; completed: number}> {
    const emit = o.onEvent ?? (() => {});
    const http = flHttp(o);
    const {call, failed} = http;
    const gguf = await readGguf(o.model);
    const layers = gguf.originalLayers;
    const items = await readTaskItems(o.data);
    const seed = o.seed ?? prufedDefaults.seed;
    const {train, heldOut} = splitLocal(items, o.heldOutShare ?? prufedDefaults.heldOutShare, seed);
    if (train.length === 0)
        throw new FederatedError(`${o.data}: no training items left after holding out ${heldOut.length}`);
    const evalSet = o.evalData !== undefined ? await readTaskItems(o.evalData) : undefined;
    if (evalSet && evalSet.length === 0)
        throw new FederatedError(`${o.evalData}: no items to evaluate on`);
    makePrivateDir(o.workDir);

    const regBody = await registerFlClient(o, http, gguf, train.length);
    emit({event: "registered", id: regBody.id, rejoined: regBody.rejoined, layers, train: train.length, held_out: heldOut.length});

    const rounds: FlClientRound[] = [];
    for (;;) {
        const res = await call(`/v1/fl/rounds/current?wait=${o.waitSeconds ?? 20}`);
        if (!res.ok)
            await failed(res, "round status");
        const cur = await res.json() as {round?: number; sampled?: boolean; uploaded?: boolean; finished: boolean; completed: number;
            secure_aggregation?: boolean; secure?: SecureRoundStatus};
        if (cur.finished) {
            emit({event: "finished", completed: cur.completed});
            return {rounds, completed: cur.completed};
        }
        if (cur.round === undefined || !cur.sampled || cur.uploaded) {
            await sleep(50);
            continue;
        }
        // the round number goes into file names: a number, nothing else
        const n = Number(checkServerName(String(cur.round), roundNumberPattern, "the round number"));
        if (o.requireSecure && !cur.secure_aggregation)
            throw new SecureRoundRefused(`round ${n} is not a secure round; --require-secure-aggregation refuses to send it an update`);
        const started = performance.now();
        const upload = path.join(o.workDir, `round-${n}.gguf`);
        const doneFile = path.join(o.workDir, `round-${n}.done.json`);
        let result: Omit<FlClientRound, "accepted" | "error">;
        if (fs.existsSync(doneFile) && fs.existsSync(upload)) {
            // restarted after training this round: send the same upload again
            result = JSON.parse(fs.readFileSync(doneFile, "utf8"));
        } else {
            const got = await call(`/v1/fl/rounds/${n}/adapter`, {headers: {"accept-encoding": "gzip"}});
            if (got.status === 410 || got.status === 403)
                continue; // the round closed meanwhile
            if (!got.ok)
                await failed(got, `round ${n} adapter`);
            result = await trainReceivedRound(o, got, n, {train, heldOut, evalSet, seed, emit});
        }
        const body = zlib.gzipSync(await fs.promises.readFile(upload), {level: 1});
        result.bytesUp = body.length;
        result.seconds = result.seconds || (performance.now() - started) / 1000;
        await writeFileDurable(doneFile, JSON.stringify(result));
        const metrics = {train_loss: result.trainLoss, bytes_down: result.bytesDown, bytes_up: result.bytesUp, seconds: result.seconds,
            ...(result.accuracy !== undefined ? {accuracy: result.accuracy, accuracy_before: result.accuracyBefore} : {})};
        if (cur.secure_aggregation) {
            // the server follows secure aggregation: the update leaves this process only masked
            const secure = await secureRound({call, failed, emit, id: regBody.id, round: n, layers, weight: train.length, upload, metrics,
                scaleBits: cur.secure?.scale_bits ?? 20, waitSeconds: o.waitSeconds ?? 20, workDir: o.workDir, policy: o.securePolicy ?? defaultSecurePolicy,
                shareMetrics: o.shareMetrics ?? false, local: result});
            const round: FlClientRound = {...result, bytesUp: secure.bytesUp, accepted: secure.accepted, ...(secure.error ? {error: secure.error} : {})};
            rounds.push(round);
            emit({event: secure.accepted ? "uploaded" : "upload_refused", secure: true, ...round});
            continue;
        }
        const put = await call(`/v1/fl/rounds/${n}/upload`, {method: "PUT", body,
            headers: {"content-type": "application/octet-stream", "content-encoding": "gzip", [metricsHeader]: JSON.stringify(metrics)}});
        const answer = put.ok ? undefined : await put.json().catch(() => ({error: `HTTP ${put.status}`, code: ""})) as {error: string; code: string};
        const round: FlClientRound = {...result, accepted: put.ok, ...(answer ? {error: `${answer.error} (${answer.code})`} : {})};
        rounds.push(round);
        emit({event: put.ok ? "uploaded" : "upload_refused", ...round});
        if (answer && (put.status === 400 || put.status === 401 || put.status === 413 || put.status === 422))
            throw new FederatedError(`round ${n}: the server refused the upload: ${answer.error} (${answer.code})`);
    }
}

type Call = (route: string, init?: RequestInit, retry?: boolean) => Promise<Response>;

/** Trains round `n` locally from the adapter the server sent (`got`); the round's record before upload. */
async function trainReceivedRound(o: FlClientOptions, got: Response, n: number, d: {train: TaskItem[]; heldOut: TaskItem[];
    evalSet?: TaskItem[]; seed: number; emit: (e: Record<string, unknown>) => void}): Promise<Omit<FlClientRound, "accepted" | "error">> {
    const raw = Buffer.from(await got.arrayBuffer());
    const wireDown = Number(got.headers.get("content-length") ?? raw.length);
    // fetch has already undone the gzip of the wire
    const received = path.join(o.workDir, `round-${n}-received.gguf.tmp`);
    await fs.promises.writeFile(received, raw);
    const start = await readLoraAdapter(received);
    await fs.promises.rm(received, {force: true});
    d.emit({event: "round_started", round: n});
    const local = await runLocalRound({model: o.model, items: d.train, heldOut: d.heldOut, evalSet: d.evalSet, start, round: n,
        workDir: o.workDir, localSteps: o.localSteps, seed: deriveSeed(d.seed, "fl-local", n), train: o.train});
    return {round: n, trainLoss: local.trainLoss, accuracyBefore: local.accuracyBefore, accuracy: local.accuracy,
        ...(local.evalSet ? {evalSetBefore: local.evalSetBefore, evalSet: local.evalSet} : {}),
        bytesDown: wireDown, bytesUp: 0, seconds: 0};
}

/** W/round-N.secagg-unmask.json: the unmask answer this client gave in round N (written before it leaves). */
const unmaskRecordFile = (workDir: string, round: number) => path.join(workDir, `round-${round}.secagg-unmask.json`);

function readUnmaskRecord(workDir: string, round: number): UnmaskRecord | undefined {
    const file = unmaskRecordFile(workDir, round);
    return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) as UnmaskRecord : undefined;
}

type SecureRoundInput = {call: Call; failed: (res: Response, what: string) => Promise<never>; emit: (e: Record<string, unknown>) => void;
    id: string; round: number; layers: number[]; weight: number; upload: string; metrics: Record<string, number | undefined>; scaleBits: number;
    waitSeconds: number; workDir: string; policy: SecureClientPolicy; shareMetrics: boolean;
    local: {trainLoss: number; accuracy?: number; accuracyBefore?: number}};

/**
 * A secure round's HTTP calls: every request carries the secure-aggregation version, every answer's
 * version is checked; `send` posts one phase's part, `poll` long-polls a phase's answer. Both return
 * a string when the server takes this client out of the round (dropped, phase over, round closed).
 */
function secaggWire(o: SecureRoundInput) {
    const n = o.round;
    const version = {[secaggVersionHeader]: secaggProtocol};
    const checkVersion = (res: Response) => checkSecaggVersion(res.headers.get(secaggVersionHeader), `the server's answer on round ${n}`);
    /** A refusal that takes this client out of the round: not an error of the client. */
    const outOfRound = async (res: Response): Promise<string | undefined> => {
        if (res.status !== 409 && res.status !== 410 && res.status !== 403)
            return undefined;
        const b = await res.json().catch(() => ({error: `HTTP ${res.status}`, code: ""})) as {error: string; code: string};
        return `${b.error} (${b.code})`;
    };
    const send = async (route: string, init: RequestInit, what: string): Promise<string | undefined> => {
        const res = await o.call(roundRoute(route, n), {...init, headers: {...version, ...init.headers as Record<string, string>}});
        if (res.ok) {
            checkVersion(res);
            await res.arrayBuffer();
            return undefined;
        }
        return (await outOfRound(res)) ?? await o.failed(res, `round ${n} ${what}`);
    };
    const sendJson = (route: string, body: unknown, what: string) =>
        send(route, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)}, what);
    const poll = async <T>(route: string, what: string): Promise<T | string> => {
        for (;;) {
            const res = await o.call(`${roundRoute(route, n)}?wait=${o.waitSeconds}`, {headers: version});
            if (!res.ok)
                return (await outOfRound(res)) ?? await o.failed(res, `round ${n} ${what}`);
            checkVersion(res);
            const body = await res.json() as T | NotReady;
            if ((body as {ready: boolean}).ready)
                return body as T;
        }
    };
    return {send, sendJson, poll};
}

/**
 * This client's side of a secure round (docs/prufed.md "Secure aggregation over HTTP"): keys,
 * sealed shares, masked matrices, unmasking shares, each phase's answer long-polled. Its keys and the
 * shares it holds live in this process only: killed, it is dropped from the round (the others'
 * shares remove its masks) and takes part again from the next round. What the server sends is
 * checked before anything is released (secure-checks.ts); a check that fails throws
 * SecureRoundRefused and nothing more is sent.
 */
async function secureRound(o: SecureRoundInput): Promise<{accepted: boolean; bytesUp: number; error?: string}> {
    const n = o.round;
    checkUnmaskOnce(readUnmaskRecord(o.workDir, n), o.id, n);
    const {send, sendJson, poll} = secaggWire(o);
    const out = (error: string, bytesUp = 0) => {
        o.emit({event: "secagg_dropped", round: n, error});
        return {accepted: false, bytesUp, error};
    };
    const adapter = toBaseNumbering(await readLoraAdapter(o.upload), o.layers);
    // the loss and accuracies travel as masked coordinates: the server learns only their weighted means
    const client = new SecureClient({id: o.id, weight: o.weight, layerMap: o.layers, adapter}, n, o.scaleBits, o.local);
    const keys = client.advertise();
    let refused = await sendJson(flRoutes.secaggKeys, {c_pub: keys.cPub.toString("base64"), s_pub: keys.sPub.toString("base64")}, "keys");
    if (refused)
        return out(refused);
    o.emit({event: "secagg_keys", round: n});
    const roster = await poll<RosterAnswer>(flRoutes.secaggRoster, "roster");
    if (typeof roster === "string")
        return out(roster);
    const members = roster.roster.map((a) => ({id: a.id, x: a.x, cPub: Buffer.from(a.c_pub, "base64"), sPub: Buffer.from(a.s_pub, "base64")}));
    checkRoster(members, keys, roster.threshold, o.policy);
    const boxes = client.shareKeys(members, roster.threshold);
    refused = await sendJson(flRoutes.secaggShares, {boxes: boxes.map((b) => ({to: b.to, box: b.box.toString("base64")}))}, "shares");
    if (refused)
        return out(refused);
    o.emit({event: "secagg_shares", round: n, roster: roster.roster.map((a) => a.id)});
    const shares = await poll<SharesAnswer>(flRoutes.secaggShares, "shares");
    if (typeof shares === "string")
        return out(shares);
    checkShareBoxes(shares.boxes.map((b) => b.from), members, o.id, roster.threshold);
    client.acceptShares(shares.boxes.map((b) => ({from: b.from, to: o.id, box: Buffer.from(b.box, "base64")})));
    const plan: MaskPlan = {targets: shares.targets.map((t) => ({target: t.target, holders: t.holders, p: new Map(t.holders.map((h, i) => [h, t.p[i]]))}))};
    const masked = client.maskedInput(plan);
    // plan order, lora_a then lora_b: the layout the server expects (secure-host.ts maskedLayout)
    const lanes = plan.targets.filter((t) => t.holders.includes(o.id)).flatMap((t) => ["a", "b"].map((part) => masked.get(`${t.target}.lora_${part}`)!));
    const body = Buffer.concat(lanes.map((y) => Buffer.from(y.buffer, y.byteOffset, y.byteLength)));
    // in the clear only what the server sees anyway (sizes, time), unless --share-metrics
    const clear = o.shareMetrics ? o.metrics : {bytes_down: o.metrics.bytes_down, seconds: o.metrics.seconds};
    refused = await send(flRoutes.secaggMasked, {method: "PUT", body, headers: {"content-type": "application/octet-stream",
        [metricsHeader]: JSON.stringify({...clear, bytes_up: body.length})}}, "masked input");
    if (refused)
        return out(refused);
    o.emit({event: "secagg_masked", round: n, bytes: body.length, matrices: lanes.length});
    const request = await poll<UnmaskAnswer>(flRoutes.secaggUnmask, "unmasking request");
    if (typeof request === "string")
        return out(request, body.length);
    checkUnmaskRequest(request, members, o.id, roster.threshold);
    checkUnmaskOnce(readUnmaskRecord(o.workDir, n), o.id, n);
    const answer = client.unmaskShares(plan, request.survivors, request.dropped);
    // recorded before the answer leaves: a restarted client (or a server asking again) gets no second answer
    await writeJsonDurable(unmaskRecordFile(o.workDir, n), {protocol: secaggProtocol, round: n, survivors: request.survivors,
        dropped: request.dropped} satisfies UnmaskRecord);
    refused = await sendJson(flRoutes.secaggUnmask, unmaskToWire(answer), "unmasking shares");
    if (refused)
        return out(refused, body.length);
    o.emit({event: "secagg_unmasked", round: n, survivors: request.survivors, dropped: request.dropped});
    return {accepted: true, bytesUp: body.length};
}
