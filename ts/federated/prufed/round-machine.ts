// The PruFed round machine behind `fl server`'s routes: the federation's state (rounds.ts,
// FederationServer) changed one call at a time through a queue (the state machine is not
// re-entrant), a timer that opens rounds when enough clients registered and closes them at quorum
// or deadline, the open secure round's host (secure-host.ts, rebuilt from its journal after a
// restart), and the events every change emits: to the caller (`fl server --json` prints them), to
// the open event streams, and to the long polls waiting for a change.
import fs from "node:fs";
import path from "node:path";
import {writeFileDurableSync} from "../../durable-file.js";
import {HttpError} from "../http-common.js";
import type {SecureRoundStatus} from "./http-protocol.js";
import {roundsSvg} from "./plot.js";
import {FederationServer, type FederationConfig, type RoundState, type RoundSummary} from "./rounds.js";
import {SecureRoundHost, secureRoundDir, type SecureHostEvent} from "./secure-host.js";

export type FlServerEvent =
    | {event: "registered"; client: string; layers: number[]; weight: number}
    | {event: "round_started"; round: number; sampled: string[]; deadline: number | null}
    | {event: "upload_accepted"; round: number; client: string; bytes: number}
    | {event: "upload_rejected"; round: number; client: string; code: string; error: string}
    | {event: "round_closed"; round: number; aggregated: boolean; clients: RoundSummary["clients"]; missing: string[]; note?: string; file: string;
        secure?: RoundSummary["secure"]}
    | {event: "finished"; rounds: number}
    | SecureHostEvent;

/** What GET rounds/current answers one client: the federation's progress and, in an open round, what this client has to do. */
export interface CurrentRound {
    completed: number;
    rounds: number;
    finished: boolean;
    aggregation: string;
    registered: boolean;
    secure_aggregation: boolean;
    round?: number;
    sampled?: boolean;
    uploaded?: boolean;
    deadline?: number | null;
    secure?: SecureRoundStatus;
}

export interface RoundMachineOptions {
    dataDir: string;
    federation: FederationServer;
    /** Accuracy by round, one line per client depth, rewritten after every round. */
    plot?: string;
    onEvent?: (e: FlServerEvent) => void;
    log: (line: string) => void;
}

/** Serialises async work: the round state machine sees one call at a time. */
class Queue {
    private tail: Promise<unknown> = Promise.resolve();
    run<T>(fn: () => Promise<T>): Promise<T> {
        const next = this.tail.then(fn, fn);
        this.tail = next.catch(() => undefined);
        return next;
    }
}

/** Accuracy by round, one line per client depth (clients without an accuracy are left out). */
export function accuracyByDepthOf(history: readonly RoundSummary[]): {name: string; values: number[]}[] {
    const depths = [...new Set(history.flatMap((h) => h.clients.map((c) => c.layerMap.length)))].sort((a, b) => b - a);
    return depths.map((d) => ({
        name: `depth ${d}`,
        values: history.map((h) => {
            const acc = h.clients.filter((c) => c.layerMap.length === d && c.metrics.accuracy !== undefined).map((c) => c.metrics.accuracy!);
            return acc.length ? acc.reduce((s, x) => s + x, 0) / acc.length : NaN;
        }).filter((v) => !Number.isNaN(v)),
    }));
}

export class RoundMachine {
    readonly federation: FederationServer;
    readonly config: FederationConfig;
    readonly secure: boolean;
    /** Resolves when every round is closed. */
    readonly done: Promise<void>;
    private resolveDone!: () => void;
    private readonly queue = new Queue();
    /** The open secure round's host, made in the queue when the round opens. */
    private host: SecureRoundHost | undefined;
    private readonly streams = new Set<(e: FlServerEvent) => void>();
    private wake = new Set<() => void>();
    private ticking = false;
    private timer: NodeJS.Timeout | undefined;
    /** Registrations the first round waits for. */
    private readonly needed: number;

    constructor(private readonly options: RoundMachineOptions) {
        this.federation = options.federation;
        this.config = options.federation.config;
        this.secure = this.config.secureAggregation === true;
        this.needed = Math.max(this.config.clientsPerRound ?? 1, this.config.minClients ?? 1);
        this.done = new Promise<void>((resolve) => (this.resolveDone = resolve));
    }

    /** Runs `fn` in the state machine's queue, after every change queued before it. */
    run<T>(fn: () => Promise<T>): Promise<T> {
        return this.queue.run(fn);
    }

    /** Sends an event to the caller and the open streams, and wakes every long poll. */
    emit(e: FlServerEvent): void {
        this.options.onEvent?.(e);
        for (const send of this.streams)
            send(e);
        const waiting = this.wake;
        this.wake = new Set();
        for (const w of waiting)
            w();
    }

    /** Resolves at the next state change, or after `ms` (at most 1 s): long polls wake on changes, not on a timer. */
    changed(ms: number): Promise<void> {
        return new Promise<void>((resolve) => {
            const done = () => {
                clearTimeout(timer);
                this.wake.delete(done);
                resolve();
            };
            const timer = setTimeout(done, Math.max(0, Math.min(ms, 1000)));
            this.wake.add(done);
        });
    }

    /** Every event from now on goes to `send` too; the returned function stops that. */
    subscribe(send: (e: FlServerEvent) => void): () => void {
        this.streams.add(send);
        return () => void this.streams.delete(send);
    }

    /** Cleans up closed rounds' journals, replays an open secure round's, and starts the timer. */
    async start(tickMs: number): Promise<void> {
        const dataDir = this.options.dataDir;
        // journals of rounds already closed (a server killed between closing and cleaning up)
        for (const d of fs.existsSync(path.join(dataDir, "secagg")) ? await fs.promises.readdir(path.join(dataDir, "secagg")) : [])
            if (d !== `round-${this.federation.current?.round}`)
                await fs.promises.rm(path.join(dataDir, "secagg", d), {recursive: true, force: true});
        if (this.federation.finished)
            this.resolveDone();
        this.timer = setInterval(() => this.kick(), tickMs);
        // a secure round left open by a killed server: its journal is replayed now (the round machine closes a refused one)
        await this.run(async () => void await this.hostFor().catch(() => undefined));
    }

    /** Stops the timer and waits for the change in progress. */
    async stop(): Promise<void> {
        clearInterval(this.timer);
        await this.run(async () => undefined);
    }

    /** The round machine runs on a timer, and at once after a registration or an upload. */
    kick(): void {
        if (this.ticking)
            return;
        this.ticking = true;
        this.tick().catch((err) => this.options.log(`round machine: ${(err as Error).stack ?? err}`)).finally(() => (this.ticking = false));
    }

    /** The open round `n`, in which `id` is sampled; else 410 (not open) or 403 (not sampled). */
    openRound(n: number, id: string): RoundState {
        const cur = this.federation.current;
        if (!cur || cur.round !== n)
            throw new HttpError(410, "round_closed", `round ${n} is not open (${cur ? `round ${cur.round} is` : "no round is"})`);
        if (!cur.sampled.includes(id))
            throw new HttpError(403, "not_sampled", `client ${id} is not sampled in round ${n}`);
        return cur;
    }

    /** The secure host of round `round` when it is the open one. */
    secureHost(round: number): SecureRoundHost | undefined {
        return this.host?.round === round ? this.host : undefined;
    }

    /** The open secure round's phase, or null. */
    securePhase(): string | null {
        const h = this.federation.current && this.secureHost(this.federation.current.round);
        return h ? h.phase : null;
    }

    /** One client's view of the round (GET rounds/current, the first event of its stream). */
    currentFor(id: string): CurrentRound {
        const federation = this.federation, secure = this.secure;
        const cur = federation.current;
        // a secure round: "uploaded" means the client sent its keys (it takes part, or was dropped); the
        // client has something to do only while the keys phase is open
        const h = cur ? this.secureHost(cur.round) : undefined;
        const sec: SecureRoundStatus | undefined = cur && secure && h ? {phase: h.phase, phase_deadline: h.phaseDeadline, threshold: h.threshold,
            scale_bits: h.scaleBits, joined: h.hasAdvertised(id)} : undefined;
        return {
            completed: federation.completed, rounds: this.config.rounds, finished: federation.finished, aggregation: this.config.aggregation,
            registered: federation.clients.some((c) => c.id === id), secure_aggregation: secure,
            ...(cur ? {round: cur.round, sampled: cur.sampled.includes(id) && (!secure || sec !== undefined),
                uploaded: secure ? (sec ? sec.joined || sec.phase !== "keys" : false) : cur.accepted.some((a) => a.client === id),
                deadline: cur.deadline, ...(sec ? {secure: sec} : {})} : {}),
        };
    }

    private async hostFor(): Promise<SecureRoundHost | undefined> {
        const cur = this.federation.current, config = this.config;
        if (!this.secure || !cur)
            return undefined;
        if (this.host?.round !== cur.round)
            this.host = await SecureRoundHost.open({dataDir: this.options.dataDir, round: cur.round, sampled: cur.sampled,
                previous: this.federation.globalAdapter, members: this.federation.clients.filter((c) => cur.sampled.includes(c.id)),
                threshold: config.secaggThreshold, keysDeadline: cur.deadline ?? Number.MAX_SAFE_INTEGER,
                phaseTimeoutMs: (config.secaggPhaseTimeout ?? 60) * 1000, method: config.aggregation, maskedMetrics: true});
        return this.host;
    }

    private tick(): Promise<void> {
        return this.run(async () => {
            const federation = this.federation;
            const h = await this.hostFor().catch(async (err) => {
                // a round the state machine refuses (fedavg over clients of different depths): closed unaggregated
                const note = `secure aggregation cannot run this round: ${(err as Error).message}`;
                this.options.log(`round ${federation.current!.round}: ${note}`);
                this.closed(await federation.closeRoundWith(federation.globalAdapter, [], [], note));
                return undefined;
            });
            if (h)
                await this.advanceSecure(h);
            else if (federation.current && federation.readyToClose())
                this.closed(await federation.closeRound());
            if (!federation.current && !federation.finished && federation.clients.length >= this.needed) {
                const r = await federation.startRound();
                await this.hostFor().catch(() => undefined); // a refused round is closed by the next tick
                this.emit({event: "round_started", round: r.round, sampled: r.sampled, deadline: r.deadline});
            }
        });
    }

    /** Moves the secure round on (deadlines, phase changes); closes it when its outcome is known. */
    private async advanceSecure(h: SecureRoundHost): Promise<void> {
        const {events, outcome} = await h.advance();
        for (const e of events)
            this.emit(e);
        if (!outcome)
            return;
        if (outcome.record.aborted)
            this.options.log(`round ${h.round}: secure aggregation not completed: ${outcome.record.aborted}`);
        const federation = this.federation;
        const s = await federation.closeRoundWith(outcome.result?.adapter ?? federation.globalAdapter, outcome.result?.targets ?? [],
            outcome.result?.contributors ?? [], outcome.record.aborted, {metrics: outcome.metrics, secure: outcome.record});
        this.host = undefined;
        await fs.promises.rm(secureRoundDir(this.options.dataDir, s.round), {recursive: true, force: true});
        this.closed(s);
    }

    private closed(s: RoundSummary): void {
        this.emit({event: "round_closed", round: s.round, aggregated: s.aggregated, clients: s.clients, missing: s.missing, file: s.file,
            ...(s.note ? {note: s.note} : {}), ...(s.secure ? {secure: s.secure} : {})});
        if (this.options.plot)
            writeFileDurableSync(this.options.plot,
                roundsSvg(accuracyByDepthOf(this.federation.history), `PruFed ${this.config.aggregation}: held-out accuracy by round`));
        if (this.federation.finished) {
            this.emit({event: "finished", rounds: this.federation.completed});
            this.resolveDone();
        }
    }
}
