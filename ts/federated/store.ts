// The server's persistent state: client tokens (hashes only), jobs, their stages and idempotency
// keys. `JobStore` is the interface the server uses; `SqliteJobStore` implements it on an embedded
// SQLite database (libsql) in WAL mode with synchronous=FULL, so a committed row survives kill -9
// and power loss, and a second process (`ppc-gpt server token …`) can read and write while the
// server runs.
import fs from "node:fs";
import path from "node:path";
import Database from "libsql";
import {stageNames, type FilledJobSpec, type JobState, type StageName, type StageState} from "./protocol.js";
import {makePrivateDir} from "./private-dir.js";

export interface TokenRecord {
    id: string;
    name: string;
    token_sha256: string;
    admin: boolean;
    created_at: string;
    revoked_at: string | null;
}

export interface JobRecord {
    id: string;
    client_id: string;
    status: JobState;
    stage: StageName | null;
    spec: FilledJobSpec;
    items: number;
    /** sha256 of the job's input items (a JSONL artifact). */
    items_sha256: string;
    created_at: string;
    updated_at: string;
    error: string | null;
}

export interface StageRecord {
    job_id: string;
    name: StageName;
    status: StageState;
    started_at: string | null;
    finished_at: string | null;
    seconds: number | null;
    /** The stage's output artifact. */
    artifact_sha256: string | null;
    /** Stage-specific result (synth counts, BI report, pruning plan, model facts), JSON. */
    result: unknown;
    /**
     * The claim that last started the stage (its fencing token): while the stage is running only
     * that claim may record it; kept after a hand-back so the next claim knows whose folder to continue.
     */
    claim_id: string | null;
}

export interface NewJob {
    id: string;
    client_id: string;
    spec: FilledJobSpec;
    items: number;
    items_sha256: string;
    /** Stages the job will skip from the start (e.g. train and merge without server retraining). */
    skipped: StageName[];
    idempotency?: {key: string; body_sha256: string};
}

export type IdempotencyHit = {job_id: string; body_sha256: string};

/** A value, or a promise of it: the embedded store answers at once, the PostgreSQL one over the network. */
export type Awaitable<T> = T | Promise<T>;

/**
 * What the server needs of a store: `SqliteJobStore` (embedded, the default) and
 * `PostgresJobStore` (store-postgres.ts, shared by a server and its workers) implement it.
 * Callers await every answer.
 */
export interface JobStore {
    createToken(token: Omit<TokenRecord, "revoked_at">): Awaitable<void>;
    /** The live (not revoked) token with this hash. */
    tokenByHash(sha256: string): Awaitable<TokenRecord | undefined>;
    /** Revokes by name or id; returns the revoked records (none when nothing matched). */
    revokeToken(nameOrId: string, at: string): Awaitable<TokenRecord[]>;
    listTokens(): Awaitable<TokenRecord[]>;

    idempotencyHit(clientId: string, key: string): Awaitable<IdempotencyHit | undefined>;
    /**
     * Creates the job, its stage rows and its idempotency key in one transaction; throws
     * TooManyJobsError when the client already has `maxActive` queued or running jobs.
     */
    createJob(job: NewJob, now: string, maxActive: number): Awaitable<void>;
    job(id: string): Awaitable<JobRecord | undefined>;
    jobsOf(clientId: string): Awaitable<JobRecord[]>;
    /** Jobs in these states, oldest first. */
    jobsIn(states: JobState[]): Awaitable<JobRecord[]>;
    activeJobCount(clientId: string): Awaitable<number>;
    updateJob(id: string, fields: Partial<Pick<JobRecord, "status" | "stage" | "error">>, now: string): Awaitable<void>;
    stages(jobId: string): Awaitable<StageRecord[]>;
    /**
     * Updates a stage row. With `claim`, only while that claim holds it (the row is running under
     * it): false when another claim took the stage or it was handed on (the caller lost its lease).
     */
    updateStage(jobId: string, name: StageName, fields: Partial<Omit<StageRecord, "job_id" | "name" | "claim_id">>, claim?: string): Awaitable<boolean>;
    /**
     * Starts a stage under a new claim, in one transaction: the stage row running under `claim`,
     * the job running at that stage. Returns the claim that held it before (null: none), or
     * undefined when the stage is done or skipped, or (PostgreSQL) no live worker lists `claim`.
     */
    claimStage(jobId: string, name: StageName, claim: string, at: string): Awaitable<{previous: string | null} | undefined>;
    /**
     * Marks the job succeeded when every stage is done or skipped and it is not finished yet;
     * false when it was not (another claim finished it first, or a stage is left): a job finishes once.
     */
    finishJob(id: string, now: string): Awaitable<boolean>;
    /** Deletes the job's rows (job, stages, idempotency keys); returns the artifacts it referenced. */
    deleteJob(id: string): Awaitable<string[]>;
    /** Every artifact some job still references. */
    referencedArtifacts(): Awaitable<Set<string>>;
    allJobIds(): Awaitable<Set<string>>;
    close(): Awaitable<void>;
}

/** A client already has the maximum number of queued or running jobs. */
export class TooManyJobsError extends Error {
    override name = "TooManyJobsError";
}

const schema = `
create table if not exists tokens (
    id text primary key,
    name text not null,
    token_sha256 text not null unique,
    admin integer not null default 0,
    created_at text not null,
    revoked_at text
);
create unique index if not exists tokens_live_name on tokens(name) where revoked_at is null;
create table if not exists jobs (
    id text primary key,
    client_id text not null,
    status text not null,
    stage text,
    spec text not null,
    items integer not null,
    items_sha256 text not null,
    created_at text not null,
    updated_at text not null,
    error text
);
create index if not exists jobs_client on jobs(client_id, created_at);
create index if not exists jobs_status on jobs(status, created_at);
create table if not exists stages (
    job_id text not null references jobs(id) on delete cascade,
    name text not null,
    position integer not null,
    status text not null,
    started_at text,
    finished_at text,
    seconds real,
    artifact_sha256 text,
    result text,
    claim_id text,
    primary key (job_id, name)
);
create table if not exists idempotency_keys (
    client_id text not null,
    key text not null,
    body_sha256 text not null,
    job_id text not null references jobs(id) on delete cascade,
    created_at text not null,
    primary key (client_id, key)
);
`;

type Row = Record<string, unknown>;

/**
 * Jobs (and idempotency keys) belong to a client's name, so a rotated token keeps them. Databases
 * made when they belonged to a token id are moved over (a token id names no live client's jobs).
 */
const ownerByName = `
update jobs set client_id = (select name from tokens where tokens.id = jobs.client_id) where client_id in (select id from tokens);
update idempotency_keys set client_id = (select name from tokens where tokens.id = idempotency_keys.client_id) where client_id in (select id from tokens);
`;

function tokenOf(r: Row): TokenRecord {
    return {id: String(r.id), name: String(r.name), token_sha256: String(r.token_sha256), admin: Number(r.admin) === 1,
        created_at: String(r.created_at), revoked_at: r.revoked_at == null ? null : String(r.revoked_at)};
}

function jobOf(r: Row): JobRecord {
    return {id: String(r.id), client_id: String(r.client_id), status: r.status as JobState, stage: (r.stage ?? null) as StageName | null,
        spec: JSON.parse(String(r.spec)), items: Number(r.items), items_sha256: String(r.items_sha256), created_at: String(r.created_at),
        updated_at: String(r.updated_at), error: r.error == null ? null : String(r.error)};
}

function stageOf(r: Row): StageRecord {
    return {job_id: String(r.job_id), name: r.name as StageName, status: r.status as StageState,
        started_at: r.started_at == null ? null : String(r.started_at), finished_at: r.finished_at == null ? null : String(r.finished_at),
        seconds: r.seconds == null ? null : Number(r.seconds), artifact_sha256: r.artifact_sha256 == null ? null : String(r.artifact_sha256),
        result: r.result == null ? null : JSON.parse(String(r.result)), claim_id: r.claim_id == null ? null : String(r.claim_id)};
}

/** The embedded job store (libsql) in the server's data directory. */
export class SqliteJobStore implements JobStore {
    private readonly db: Database.Database;

    private constructor(db: Database.Database) {
        this.db = db;
    }

    /** Opens (creating if needed) `<dataDir>/store.db`. */
    static open(dataDir: string): SqliteJobStore {
        makePrivateDir(dataDir);
        const file = path.join(dataDir, "store.db");
        let db: Database.Database;
        try {
            db = new Database(file);
        } catch (err) {
            throw new Error(`cannot open the job store ${file}: ${(err as Error).message}`);
        }
        // a second process (token admin) may hold the write lock for a moment
        db.pragma("busy_timeout = 10000");
        db.pragma("journal_mode = WAL");
        // FULL: every commit is fsynced, so an acknowledged job exists after kill -9 or power loss
        db.pragma("synchronous = FULL");
        db.pragma("foreign_keys = ON");
        db.exec(schema);
        // databases made before claims were fenced
        if (!(db.prepare("pragma table_info(stages)").all() as Row[]).some((c) => c.name === "claim_id"))
            db.exec("alter table stages add column claim_id text");
        db.exec(ownerByName);
        return new SqliteJobStore(db);
    }

    createToken(t: Omit<TokenRecord, "revoked_at">): void {
        try {
            this.db.prepare("insert into tokens (id, name, token_sha256, admin, created_at) values (?, ?, ?, ?, ?)")
                .run(t.id, t.name, t.token_sha256, t.admin ? 1 : 0, t.created_at);
        } catch (err) {
            if (/UNIQUE/i.test((err as Error).message))
                throw new Error(`a live token named "${t.name}" exists; revoke it first or choose another name`);
            throw err;
        }
    }

    tokenByHash(sha256: string): TokenRecord | undefined {
        const r = this.db.prepare("select * from tokens where token_sha256 = ? and revoked_at is null").get(sha256) as Row | undefined;
        return r ? tokenOf(r) : undefined;
    }

    revokeToken(nameOrId: string, at: string): TokenRecord[] {
        return this.db.transaction(() => {
            const rows = (this.db.prepare("select * from tokens where (name = ? or id = ?) and revoked_at is null").all(nameOrId, nameOrId) as Row[])
                .map(tokenOf);
            for (const r of rows)
                this.db.prepare("update tokens set revoked_at = ? where id = ?").run(at, r.id);
            return rows.map((r) => ({...r, revoked_at: at}));
        })();
    }

    listTokens(): TokenRecord[] {
        return (this.db.prepare("select * from tokens order by created_at, id").all() as Row[]).map(tokenOf);
    }

    idempotencyHit(clientId: string, key: string): IdempotencyHit | undefined {
        const r = this.db.prepare("select job_id, body_sha256 from idempotency_keys where client_id = ? and key = ?").get(clientId, key) as Row | undefined;
        return r ? {job_id: String(r.job_id), body_sha256: String(r.body_sha256)} : undefined;
    }

    createJob(job: NewJob, now: string, maxActive: number): void {
        this.db.transaction(() => {
            if (this.activeJobCount(job.client_id) >= maxActive)
                throw new TooManyJobsError(`this client already has ${maxActive} queued or running job(s); wait for one to finish`);
            this.db.prepare("insert into jobs (id, client_id, status, stage, spec, items, items_sha256, created_at, updated_at, error) " +
                "values (?, ?, 'queued', null, ?, ?, ?, ?, ?, null)")
                .run(job.id, job.client_id, JSON.stringify(job.spec), job.items, job.items_sha256, now, now);
            const insertStage = this.db.prepare("insert into stages (job_id, name, position, status) values (?, ?, ?, ?)");
            stageNames.forEach((name, i) => insertStage.run(job.id, name, i, job.skipped.includes(name) ? "skipped" : "pending"));
            if (job.idempotency)
                this.db.prepare("insert into idempotency_keys (client_id, key, body_sha256, job_id, created_at) values (?, ?, ?, ?, ?)")
                    .run(job.client_id, job.idempotency.key, job.idempotency.body_sha256, job.id, now);
        }).immediate();
    }

    job(id: string): JobRecord | undefined {
        const r = this.db.prepare("select * from jobs where id = ?").get(id) as Row | undefined;
        return r ? jobOf(r) : undefined;
    }

    jobsOf(clientId: string): JobRecord[] {
        return (this.db.prepare("select * from jobs where client_id = ? order by created_at, id").all(clientId) as Row[]).map(jobOf);
    }

    jobsIn(states: JobState[]): JobRecord[] {
        const marks = states.map(() => "?").join(", ");
        return (this.db.prepare(`select * from jobs where status in (${marks}) order by created_at, id`).all(...states) as Row[]).map(jobOf);
    }

    activeJobCount(clientId: string): number {
        const r = this.db.prepare("select count(*) as n from jobs where client_id = ? and status in ('queued', 'running')").get(clientId) as Row;
        return Number(r.n);
    }

    updateJob(id: string, fields: Partial<Pick<JobRecord, "status" | "stage" | "error">>, now: string): void {
        const keys = Object.keys(fields) as (keyof typeof fields)[];
        const sets = [...keys.map((k) => `${k} = ?`), "updated_at = ?"].join(", ");
        this.db.prepare(`update jobs set ${sets} where id = ?`).run(...keys.map((k) => fields[k] ?? null), now, id);
    }

    stages(jobId: string): StageRecord[] {
        return (this.db.prepare("select * from stages where job_id = ? order by position").all(jobId) as Row[]).map(stageOf);
    }

    updateStage(jobId: string, name: StageName, fields: Partial<Omit<StageRecord, "job_id" | "name" | "claim_id">>, claim?: string): boolean {
        const keys = (Object.keys(fields) as (keyof typeof fields)[]).filter((k) => k !== ("claim_id" as never));
        if (keys.length === 0)
            return true;
        const value = (k: keyof typeof fields) => k === "result" ? (fields.result == null ? null : JSON.stringify(fields.result)) : fields[k] ?? null;
        const r = this.db.prepare(`update stages set ${keys.map((k) => `${k} = ?`).join(", ")} where job_id = ? and name = ?` +
            (claim === undefined ? "" : " and claim_id = ? and status = 'running'"))
            .run(...keys.map(value), jobId, name, ...(claim === undefined ? [] : [claim]));
        return r.changes > 0;
    }

    claimStage(jobId: string, name: StageName, claim: string, at: string): {previous: string | null} | undefined {
        return this.db.transaction(() => {
            const row = this.db.prepare("select status, claim_id from stages where job_id = ? and name = ?").get(jobId, name) as Row | undefined;
            if (!row || row.status === "done" || row.status === "skipped")
                return undefined;
            this.db.prepare("update stages set status = 'running', claim_id = ?, started_at = ?, finished_at = null, seconds = null " +
                "where job_id = ? and name = ?").run(claim, at, jobId, name);
            this.db.prepare("update jobs set status = 'running', stage = ?, error = null, updated_at = ? where id = ?").run(name, at, jobId);
            return {previous: row.claim_id == null ? null : String(row.claim_id)};
        }).immediate();
    }

    finishJob(id: string, now: string): boolean {
        return this.db.prepare("update jobs set status = 'succeeded', stage = null, updated_at = ? where id = ? and status in ('queued', 'running') " +
            "and not exists (select 1 from stages where job_id = jobs.id and status not in ('done', 'skipped'))").run(now, id).changes > 0;
    }

    deleteJob(id: string): string[] {
        return this.db.transaction(() => {
            const job = this.job(id);
            if (!job)
                return [];
            const artifacts = [job.items_sha256, ...this.stages(id).map((s) => s.artifact_sha256).filter((x): x is string => x !== null)];
            this.db.prepare("delete from idempotency_keys where job_id = ?").run(id);
            this.db.prepare("delete from stages where job_id = ?").run(id);
            this.db.prepare("delete from jobs where id = ?").run(id);
            return artifacts;
        }).immediate();
    }

    referencedArtifacts(): Set<string> {
        const out = new Set<string>();
        for (const r of this.db.prepare("select items_sha256 as s from jobs union select artifact_sha256 as s from stages where artifact_sha256 is not null")
            .all() as Row[])
            out.add(String(r.s));
        return out;
    }

    allJobIds(): Set<string> {
        return new Set((this.db.prepare("select id from jobs").all() as Row[]).map((r) => String(r.id)));
    }

    close(): void {
        this.db.close();
    }
}
