// The server's side of one secure round over a transport: SecureAggregationServer (secure.ts) with
// phases that advance on quorum or deadline, and a journal so that a server killed -9 resumes the
// round where it was. Phases:
//   keys    sampled clients train locally, then send their public keys; ends when every sampled
//           client sent keys or the round deadline (--round-timeout) passed: the roster is fixed;
//   shares  roster clients send their sealed Shamir shares; ends when all did or the phase timeout
//           passed: the masking plan (holders and weights per matrix) is fixed over those that shared;
//   masked  sharers send their masked matrices; ends when all did or the phase timeout passed: who
//           sent input (survivors) and who did not (dropped) is fixed;
//   unmask  survivors send shares of the survivors' self-mask seeds (per layer, only for layers left
//           with at least two surviving holders) and of the dropped clients' keys; ends when all did
//           or the phase timeout passed; the layers it can are then unmasked (result), the others kept.
// A client that misses a phase is out of the round; its masks are removed with the others' shares.
// The journal (D/secagg/round-N/journal.jsonl, masked inputs beside it) holds only what the server
// received (public keys, sealed boxes, masked lanes, unmasking shares) and the phase changes; the
// server never holds a client's secret or update. A restarted server replays it and gives the open
// phase its full timeout again, so clients retrying their connection are not dropped by the outage.
import fs from "node:fs";
import path from "node:path";
import {appendDurable, fsyncDir, writeFileDurable} from "../../durable-file.js";
import type {LoraAdapter} from "../../train/adapter.js";
import type {AggregationMethod, TargetAggregation} from "./aggregate.js";
import {parseLoraTensorName} from "./align.js";
import type {RegisteredClient, SecureRoundRecord, UploadMetrics} from "./rounds.js";
import {metricsTarget, SecureAggregationServer, type Advert, type MaskedMetrics, type MaskPlan} from "./secure.js";
import {unmaskFromWire, type WireSeedShare, type WireShare} from "./http-protocol.js";

export type SecurePhase = "keys" | "shares" | "masked" | "unmask";

/** A message that does not fit the round: `dropped` (missed an earlier phase), `phase` (too early or late), `invalid` (malformed). */
export class SecureRoundError extends Error {
    constructor(readonly code: "dropped" | "phase" | "invalid", message: string) {
        super(message);
    }
}

type JournalEntry =
    | {op: "keys"; id: string; c: string; s: string; at: number}
    | {op: "roster"; at: number}
    | {op: "shares"; id: string; boxes: {to: string; box: string}[]; at: number}
    | {op: "plan"; at: number}
    | {op: "masked"; id: string; file: string; metrics: UploadMetrics; at: number}
    | {op: "unmask_request"; at: number}
    | {op: "unmask"; id: string; b: WireSeedShare[]; s: WireShare[]; at: number};

export type SecureHostEvent =
    | {event: "secagg_received"; round: number; client: string; step: SecurePhase; bytes: number}
    | {event: "secagg_phase"; round: number; phase: SecurePhase; deadline: number; clients: string[]};

export interface SecureRoundOutcome {
    /** Undefined when the round cannot be unmasked (`record.aborted` says why): the global is kept. */
    result?: {adapter: LoraAdapter; targets: TargetAggregation[]; contributors: string[]};
    record: SecureRoundRecord;
    metrics: Record<string, UploadMetrics>;
}

export const secureRoundDir = (dataDir: string, round: number) => path.join(dataDir, "secagg", `round-${round}`);

const b64 = (b: Buffer) => b.toString("base64");

/** One secure-aggregation round over HTTP: maps the secagg routes onto the server's state machine, journaled. */
export class SecureRoundHost {
    phase: SecurePhase = "keys";
    phaseDeadline: number;
    private readonly metrics = new Map<string, UploadMetrics>();
    private readonly server: SecureAggregationServer;
    private readonly journal: string;
    private replaying = false;

    private constructor(readonly dir: string, readonly round: number, readonly sampled: string[], previous: LoraAdapter,
        members: RegisteredClient[], threshold: number | undefined, readonly keysDeadline: number, readonly phaseMs: number,
        readonly method: AggregationMethod, maskedMetrics: boolean) {
        this.server = new SecureAggregationServer(previous, members.map((m) => ({id: m.id, weight: m.weight, layerMap: m.layerMap})),
            {round, threshold: threshold !== undefined ? Math.min(threshold, members.length) : undefined, method, maskedMetrics});
        this.phaseDeadline = keysDeadline;
        this.journal = path.join(dir, "journal.jsonl");
    }

    get threshold(): number { return this.server.threshold; }
    get scaleBits(): number { return this.server.scaleBits; }

    /** The host of an open secure round: new, or rebuilt from its journal after a restart. */
    static async open(o: {dataDir: string; round: number; sampled: string[]; previous: LoraAdapter; members: RegisteredClient[];
        threshold?: number; keysDeadline: number; phaseTimeoutMs: number; method: AggregationMethod; now?: number;
        /** The plan carries the clients' metrics as masked coordinates (secure.ts metricsTarget). */
        maskedMetrics?: boolean}): Promise<SecureRoundHost> {
        const dir = secureRoundDir(o.dataDir, o.round);
        await fs.promises.mkdir(dir, {recursive: true});
        await fsyncDir(path.dirname(dir));
        const host = new SecureRoundHost(dir, o.round, o.sampled, o.previous, o.members, o.threshold, o.keysDeadline, o.phaseTimeoutMs, o.method, o.maskedMetrics ?? false);
        let text = fs.existsSync(host.journal) ? await fs.promises.readFile(host.journal, "utf8") : "";
        // a line torn by a kill is cut off (its message was not acknowledged; the client sends it again)
        if (text && !text.endsWith("\n")) {
            text = text.slice(0, text.lastIndexOf("\n") + 1);
            await writeFileDurable(host.journal, text);
        }
        host.replaying = true;
        for (const [i, line] of text.split("\n").filter(Boolean).entries()) {
            try {
                await host.apply(JSON.parse(line) as JournalEntry);
            } catch (err) {
                throw new Error(`${host.journal}:${i + 1}: cannot replay (${(err as Error).message})`);
            }
        }
        host.replaying = false;
        if (host.phase !== "keys")
            host.phaseDeadline = (o.now ?? Date.now()) + o.phaseTimeoutMs;
        return host;
    }

    private async record(entry: JournalEntry): Promise<void> {
        if (!this.replaying)
            // fsynced before the message is acknowledged: an accepted message survives a kill or a power cut
            await appendDurable(this.journal, JSON.stringify(entry) + "\n");
    }

    /** Applies a journal entry (new or replayed): the same calls on the state machine in the same order. */
    private async apply(e: JournalEntry): Promise<void> {
        switch (e.op) {
            case "keys":
                this.server.advertise({id: e.id, cPub: Buffer.from(e.c, "base64"), sPub: Buffer.from(e.s, "base64")});
                break;
            case "roster":
                this.server.roster();
                this.enter("shares", e.at);
                break;
            case "shares":
                this.server.submitShares(e.id, e.boxes.map((b) => ({from: e.id, to: b.to, box: Buffer.from(b.box, "base64")})));
                break;
            case "plan":
                this.server.plan();
                this.enter("masked", e.at);
                break;
            case "masked": {
                const body = await fs.promises.readFile(path.join(this.dir, e.file));
                this.server.submitMasked(e.id, this.parseMasked(e.id, body));
                this.metrics.set(e.id, e.metrics);
                break;
            }
            case "unmask_request":
                this.server.unmaskRequest();
                this.enter("unmask", e.at);
                break;
            case "unmask":
                this.server.submitUnmask(e.id, unmaskFromWire(e));
                break;
        }
        await this.record(e);
    }

    private enter(phase: SecurePhase, at: number): void {
        this.phase = phase;
        this.phaseDeadline = at + this.phaseMs;
    }

    private rosterIds(): string[] {
        return this.phase === "keys" ? [] : this.server.roster().map((a) => a.id);
    }

    /** Roster clients that sent their shares. */
    private sharerIds(): string[] {
        return this.server.sharers();
    }

    private requireSampled(id: string): void {
        if (!this.sampled.includes(id))
            throw new SecureRoundError("dropped", `client ${id} is not sampled in round ${this.round}`);
    }

    /** keys phase: a client's two X25519 public keys (raw, 32 bytes each). */
    async advertise(id: string, cPub: Buffer, sPub: Buffer, now = Date.now()): Promise<void> {
        this.requireSampled(id);
        if (cPub.length !== 32 || sPub.length !== 32)
            throw new SecureRoundError("invalid", "c_pub and s_pub must be raw X25519 public keys of 32 bytes (base64)");
        if (this.phase !== "keys") {
            const mine = this.server.roster().find((a) => a.id === id);
            if (mine && mine.cPub.equals(cPub) && mine.sPub.equals(sPub))
                return; // a retry of an acknowledged message
            throw new SecureRoundError(mine ? "phase" : "dropped", `client ${id}: round ${this.round}'s keys phase is over` +
                (mine ? " (these are not the keys it sent)" : "; it is not in the roster and takes part in the next round it is sampled in"));
        }
        await this.apply({op: "keys", id, c: b64(cPub), s: b64(sPub), at: now});
    }

    hasAdvertised(id: string): boolean {
        return this.server.advertised(id);
    }

    /** shares phase: the client's sealed boxes, one for every other roster member. */
    async submitShares(id: string, boxes: {to: string; box: Buffer}[], now = Date.now()): Promise<void> {
        if (this.phase === "keys")
            throw new SecureRoundError("phase", `round ${this.round} is in its keys phase; shares come after the roster`);
        const roster = this.rosterIds();
        if (!roster.includes(id))
            throw new SecureRoundError("dropped", `client ${id} is not in round ${this.round}'s roster (it sent no keys in time)`);
        if (this.phase !== "shares") {
            if (this.sharerIds().includes(id))
                return;
            throw new SecureRoundError("dropped", `client ${id}: round ${this.round}'s shares phase is over`);
        }
        const want = roster.filter((x) => x !== id);
        const to = boxes.map((b) => b.to).sort();
        if (to.length !== want.length || to.some((x, i) => x !== want[i]))
            throw new SecureRoundError("invalid", `client ${id}: one share box for each other roster member (${want.join(", ")}) is needed, got ${to.join(", ") || "none"}`);
        await this.apply({op: "shares", id, boxes: boxes.map((b) => ({to: b.to, box: b64(b.box)})), at: now});
    }

    /** masked phase: the client's masked matrices as one body (plan order, lora_a then lora_b, uint32 little-endian). */
    async submitMasked(id: string, body: Buffer, metrics: UploadMetrics, now = Date.now()): Promise<void> {
        if (this.phase === "keys" || this.phase === "shares")
            throw new SecureRoundError("phase", `round ${this.round} is in its ${this.phase} phase; masked input comes after the plan`);
        if (!this.sharerIds().includes(id))
            throw new SecureRoundError("dropped", `client ${id} shared no keys in round ${this.round}; its masked input cannot be unmasked`);
        if (this.phase !== "masked") {
            if (this.server.unmaskRequest().survivors.includes(id))
                return;
            throw new SecureRoundError("dropped", `client ${id}: round ${this.round}'s masked phase is over; it counts as dropped`);
        }
        this.parseMasked(id, body);
        const file = `masked-${id}.bin`;
        await writeFileDurable(path.join(this.dir, file), body);
        await this.apply({op: "masked", id, file, metrics, at: now});
    }

    /** The lengths a client's masked body must have, in order (tensor name, values). */
    maskedLayout(id: string): {name: string; length: number}[] {
        return this.server.plan().targets.filter((t) => t.holders.includes(id))
            .flatMap((t) => ["a", "b"].map((part) => ({name: `${t.target}.lora_${part}`, length: this.server.lengthOf(`${t.target}.lora_${part}`)})));
    }

    private parseMasked(id: string, body: Buffer): Map<string, Uint32Array> {
        const layout = this.maskedLayout(id);
        const want = layout.reduce((s, x) => s + x.length * 4, 0);
        if (body.length !== want)
            throw new SecureRoundError("invalid", `client ${id}: the masked input must be ${want} bytes (${layout.length} matrices as uint32), got ${body.length}`);
        const out = new Map<string, Uint32Array>();
        let at = 0;
        for (const {name, length} of layout) {
            const lanes = new Uint32Array(length);
            for (let i = 0; i < length; i++, at += 4)
                lanes[i] = body.readUInt32LE(at);
            out.set(name, lanes);
        }
        return out;
    }

    /** unmask phase: a survivor's shares (self-mask seeds of survivors for the layers with ≥ 2 surviving holders, keys of the dropped). */
    async submitUnmask(id: string, b: WireSeedShare[], s: WireShare[], now = Date.now()): Promise<void> {
        if (this.phase !== "unmask")
            throw new SecureRoundError(this.phase === "keys" || this.phase === "shares" || this.phase === "masked" ? "phase" : "dropped",
                `round ${this.round} is in its ${this.phase} phase; unmasking shares come last`);
        const {survivors, dropped} = this.server.unmaskRequest();
        if (!survivors.includes(id))
            throw new SecureRoundError("dropped", `client ${id} sent no masked input in round ${this.round}; only survivors unmask`);
        const open = this.server.unmaskable();
        for (const x of b) {
            if (!survivors.includes(x.id))
                throw new SecureRoundError("invalid", `a self-mask share names ${x.id}, which is not a survivor`);
            if (!open.get(x.layer)?.includes(x.id))
                throw new SecureRoundError("invalid", `a self-mask share of ${x.id} for ${x.layer === null ? "the non-layer tensors" : `layer ${x.layer}`}, ` +
                    "which is not a layer it holds with at least two surviving holders (a seed of a layer with one survivor is never released)");
        }
        for (const x of s)
            if (!dropped.includes(x.id))
                throw new SecureRoundError("invalid", `a key share names ${x.id}, which did not drop`);
        const shares = unmaskFromWire({b, s});
        if (this.server.sameUnmask(id, shares))
            return; // a retry of an acknowledged message
        try {
            this.server.checkUnmask(id, shares);
        } catch (err) {
            throw new SecureRoundError("invalid", (err as Error).message);
        }
        await this.apply({op: "unmask", id, b, s, at: now});
    }

    /** What a client reads in each phase; undefined while the phase it needs has not come yet. */
    rosterView(id: string): {threshold: number; scale_bits: number; roster: {id: string; x: number; c_pub: string; s_pub: string}[]} | undefined {
        if (this.phase === "keys")
            return undefined;
        const roster = this.server.roster();
        if (!roster.some((a) => a.id === id))
            throw new SecureRoundError("dropped", `client ${id} is not in round ${this.round}'s roster (it sent no keys in time)`);
        return {threshold: this.threshold, scale_bits: this.scaleBits, roster: roster.map((a: Advert) => ({id: a.id, x: a.x, c_pub: b64(a.cPub), s_pub: b64(a.sPub)}))};
    }

    sharesView(id: string): {boxes: {from: string; box: string}[]; targets: {target: string; holders: string[]; p: number[]}[]} | undefined {
        if (this.phase === "keys" || this.phase === "shares")
            return undefined;
        if (!this.sharerIds().includes(id))
            throw new SecureRoundError("dropped", `client ${id} shared no keys in time in round ${this.round}`);
        const plan: MaskPlan = this.server.plan();
        return {
            boxes: this.server.sharesFor(id).map((b) => ({from: b.from, box: b64(b.box)})),
            targets: plan.targets.map((t) => ({target: t.target, holders: t.holders, p: t.holders.map((h) => t.p.get(h)!)})),
        };
    }

    unmaskView(id: string): {survivors: string[]; dropped: string[]} | undefined {
        if (this.phase !== "unmask")
            return undefined;
        const req = this.server.unmaskRequest();
        if (!req.survivors.includes(id))
            throw new SecureRoundError("dropped", `client ${id} sent no masked input in time in round ${this.round}`);
        return req;
    }

    private recordOf(aborted?: string, summedTargets = 0): SecureRoundRecord {
        const plan = this.phase === "masked" || this.phase === "unmask" ? this.server.plan() : undefined;
        const req = this.phase === "unmask" ? this.server.unmaskRequest() : undefined;
        const targets = new Set(this.server.previous.tensors.map((t) => parseLoraTensorName(t.name)?.target ?? t.name)).size;
        return {
            threshold: this.threshold, scaleBits: this.scaleBits,
            roster: this.phase === "keys" ? [] : this.server.roster().map((a) => a.id),
            dropped: req?.dropped ?? [],
            contributors: [],
            unmasked: this.server.unmaskers(),
            maskedTargets: plan?.targets.filter((t) => t.target !== metricsTarget).length ?? 0,
            keptTargets: targets - summedTargets,
            layers: this.server.layerOutcomes(aborted),
            ...(aborted ? {aborted} : {}),
        };
    }

    /**
     * Advances the round when the open phase is complete or past its deadline: events for the phase
     * changes, and the outcome once the round is over (unmasked, or abandoned with the reason).
     */
    async advance(now = Date.now()): Promise<{events: SecureHostEvent[]; outcome?: SecureRoundOutcome}> {
        const events: SecureHostEvent[] = [];
        const over = now > this.phaseDeadline;
        const abort = (why: string) => ({events, outcome: {record: this.recordOf(why), metrics: Object.fromEntries(this.metrics)}});
        const entered = (phase: SecurePhase, clients: string[]) =>
            events.push({event: "secagg_phase", round: this.round, phase, deadline: this.phaseDeadline, clients});
        if (this.phase === "keys") {
            if (!over && !this.sampled.every((id) => this.server.advertised(id)))
                return {events};
            const n = this.sampled.filter((id) => this.server.advertised(id)).length;
            if (n < this.threshold)
                return abort(`${n} client(s) sent keys by the deadline, fewer than the threshold ${this.threshold}`);
            await this.apply({op: "roster", at: now});
            entered("shares", this.rosterIds());
        }
        if (this.phase === "shares") {
            const roster = this.rosterIds();
            if (now <= this.phaseDeadline && !roster.every((id) => this.sharerIds().includes(id)))
                return {events};
            if (this.sharerIds().length < this.threshold)
                return abort(`${this.sharerIds().length} client(s) sent shares in time, fewer than the threshold ${this.threshold}`);
            await this.apply({op: "plan", at: now});
            entered("masked", this.sharerIds());
        }
        if (this.phase === "masked") {
            if (now <= this.phaseDeadline && !this.sharerIds().every((id) => this.server.maskedFrom(id)))
                return {events};
            await this.apply({op: "unmask_request", at: now});
            const {survivors} = this.server.unmaskRequest();
            entered("unmask", survivors);
            if (survivors.length < this.threshold)
                return abort(`${survivors.length} client(s) sent masked input in time, fewer than the threshold ${this.threshold}`);
        }
        // unmask
        const {survivors} = this.server.unmaskRequest();
        if (now <= this.phaseDeadline && !survivors.every((id) => this.server.unmaskers().includes(id)))
            return {events};
        try {
            const {layers, metrics, ...result} = this.server.result();
            const record = {...this.recordOf(undefined, result.targets.length), contributors: result.contributors, layers,
                ...(metrics ? {maskedMetrics: metrics} : {})};
            return {events, outcome: {result, record, metrics: Object.fromEntries(this.metrics)}};
        } catch (err) {
            return abort((err as Error).message);
        }
    }

    /** Every byte the state machine was given (for audits and tests). */
    get received(): Buffer[] {
        return this.server.received;
    }

    noteReceived(id: string, step: SecurePhase, bytes: number): SecureHostEvent {
        return {event: "secagg_received", round: this.round, client: id, step, bytes};
    }
}
