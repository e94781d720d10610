// The job store on PostgreSQL: the same JobStore as the embedded SQLite default, shared by one HTTP
// server and any number of workers on other machines (`ppc-gpt server|worker --store postgres://…`).
// Tables live in their own schema (`ppcgpt` by default); pg-boss keeps its queues in `pgboss`.
// Besides the JobStore tables it holds `workers` (heartbeats and what each worker holds) and
// `settings` (the source model a server serves, which workers check theirs against).
//
// A lost connection (PostgreSQL stopped, restarted, unreachable) surfaces as StoreUnavailableError,
// which the HTTP server answers with 503. A worker opens the store with `retryUnavailableMs`, so
// its writes wait for the database to come back instead of losing a finished stage.
import pg, {type Pool, type QueryResult} from "pg";
import {stageNames, type JobState, type StageName} from "./protocol.js";
import {TooManyJobsError, type IdempotencyHit, type JobRecord, type JobStore, type NewJob, type StageRecord, type TokenRecord} from "./store.js";

/** The PostgreSQL job store cannot be reached. */
export class StoreUnavailableError extends Error {
    override name = "StoreUnavailableError";
}

/** True for a store given as a PostgreSQL URL (anything else is an embedded data dir). */
export function isPostgresUrl(store: string | undefined): store is string {
    return store !== undefined && /^postgres(ql)?:\/\//i.test(store);
}

/** The URL without its password, for logs and messages. */
export function redactUrl(url: string): string {
    try {
        const u = new URL(url);
        if (u.password)
            u.password = "***";
        return u.toString();
    } catch {
        return "postgres://…";
    }
}

export interface PostgresStoreOptions {
    /** Schema of the tables (default "ppcgpt"). */
    schema?: string;
    /** How long a query waits for a lost database before it throws StoreUnavailableError (default 0: at once). */
    retryUnavailableMs?: number;
    /** Pool size (default 10). */
    max?: number;
    /** Shows in pg_stat_activity. */
    applicationName?: string;
}

/** SQLSTATE classes and socket errors that mean "the database is not there right now". */
function isConnectionError(err: unknown): boolean {
    const e = err as {code?: string; message?: string};
    if (typeof e?.code === "string" && (/^(08|57P)/.test(e.code) || ["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "ETIMEDOUT", "EPIPE", "ENOENT", "EAI_AGAIN"].includes(e.code)))
        return true;
    return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|not queryable|the database system is (starting up|shutting down)/i
        .test(e?.message ?? "");
}

type Row = Record<string, unknown>;
type Queryable = {query<R = Row>(text: string, values?: unknown[]): Promise<QueryResult<R>>};

const iso = (v: unknown): string | null => v == null ? null : v instanceof Date ? v.toISOString() : String(v);

function tokenOf(r: Row): TokenRecord {
    return {id: String(r.id), name: String(r.name), token_sha256: String(r.token_sha256), admin: Boolean(r.admin),
        created_at: String(r.created_at), revoked_at: r.revoked_at == null ? null : String(r.revoked_at)};
}

function jobOf(r: Row): JobRecord {
    return {id: String(r.id), client_id: String(r.client_id), status: r.status as JobState, stage: (r.stage ?? null) as StageName | null,
        spec: r.spec as JobRecord["spec"], items: Number(r.items), items_sha256: String(r.items_sha256), created_at: String(r.created_at),
        updated_at: String(r.updated_at), error: r.error == null ? null : String(r.error)};
}

function stageOf(r: Row): StageRecord {
    return {job_id: String(r.job_id), name: r.name as StageName, status: r.status as StageRecord["status"],
        started_at: r.started_at == null ? null : String(r.started_at), finished_at: r.finished_at == null ? null : String(r.finished_at),
        seconds: r.seconds == null ? null : Number(r.seconds), artifact_sha256: r.artifact_sha256 == null ? null : String(r.artifact_sha256),
        result: r.result ?? null, claim_id: r.claim_id == null ? null : String(r.claim_id)};
}

/** What one worker holds: a stage of a job, claimed at a time, with its progress. */
export interface WorkerClaim {
    /** The claim's fencing token: the stage row is recorded only under it (store.claimStage). */
    claim_id: string;
    job_id: string;
    stage: StageName;
    /** The pg-boss job id of the claim. */
    queue_job_id: string;
    claimed_at: string;
    progress: {done: number; total: number} | null;
}

export interface WorkerRecord {
    id: string;
    host: string;
    pid: number;
    stages: StageName[];
    concurrency: number;
    started_at: string;
    last_seen: string;
    /** Seconds since the last heartbeat, by the database's clock. */
    seconds_since_seen: number;
    draining: boolean;
    claims: WorkerClaim[];
}

function workerOf(r: Row): WorkerRecord {
    return {id: String(r.id), host: String(r.host), pid: Number(r.pid), stages: r.stages as StageName[], concurrency: Number(r.concurrency),
        started_at: iso(r.started_at)!, last_seen: iso(r.last_seen)!, seconds_since_seen: Number(r.seconds_since_seen ?? 0),
        draining: Boolean(r.draining), claims: (r.claims ?? []) as WorkerClaim[]};
}

/** The job store on PostgreSQL, shared by several servers and scale-out workers. */
export class PostgresJobStore implements JobStore {
    readonly pool: Pool;
    readonly schema: string;
    readonly url: string;
    private readonly retryUnavailableMs: number;
    private closed = false;

    private constructor(url: string, pool: Pool, schema: string, retryUnavailableMs: number) {
        this.url = url;
        this.pool = pool;
        this.schema = schema;
        this.retryUnavailableMs = retryUnavailableMs;
    }

    /** Connects and creates the tables if needed (waiting `retryUnavailableMs` for a database that is not up yet). */
    static async open(url: string, options: PostgresStoreOptions = {}): Promise<PostgresJobStore> {
        const schema = options.schema ?? "ppcgpt";
        if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema))
            throw new RangeError(`schema "${schema}" must be lower-case letters, digits and _`);
        const pool = new pg.Pool({connectionString: url, max: options.max ?? 10, connectionTimeoutMillis: 5000, idleTimeoutMillis: 10_000,
            application_name: options.applicationName ?? "ppc-gpt"});
        // an idle connection cut by a database restart must not crash the process; the next query reconnects
        pool.on("error", () => {});
        const store = new PostgresJobStore(url, pool, schema, options.retryUnavailableMs ?? 0);
        try {
            await store.migrate();
        } catch (err) {
            await pool.end().catch(() => {});
            const why = err instanceof StoreUnavailableError ? (err.cause as Error)?.message ?? err.message : (err as Error).message;
            throw new Error(`cannot open the job store ${redactUrl(url)}: ${why}`, {cause: err});
        }
        return store;
    }

    private async migrate(): Promise<void> {
        const s = this.schema;
        await this.transaction(async (q) => {
            // one migrator at a time (a server and workers may start together)
            await q.query("select pg_advisory_xact_lock(hashtext($1))", [`${s}.migrate`]);
            await q.query(`
                create schema if not exists ${s};
                create table if not exists ${s}.tokens (
                    id text primary key, name text not null, token_sha256 text not null unique, admin boolean not null default false,
                    created_at text not null, revoked_at text);
                create unique index if not exists tokens_live_name on ${s}.tokens(name) where revoked_at is null;
                create table if not exists ${s}.jobs (
                    id text primary key, client_id text not null, status text not null, stage text, spec jsonb not null,
                    items integer not null, items_sha256 text not null, created_at text not null, updated_at text not null, error text);
                create index if not exists jobs_client on ${s}.jobs(client_id, created_at);
                create index if not exists jobs_status on ${s}.jobs(status, created_at);
                create table if not exists ${s}.stages (
                    job_id text not null references ${s}.jobs(id) on delete cascade, name text not null, position integer not null,
                    status text not null, started_at text, finished_at text, seconds double precision, artifact_sha256 text, result jsonb,
                    primary key (job_id, name));
                create table if not exists ${s}.idempotency_keys (
                    client_id text not null, key text not null, body_sha256 text not null,
                    job_id text not null references ${s}.jobs(id) on delete cascade, created_at text not null,
                    primary key (client_id, key));
                create table if not exists ${s}.workers (
                    id text primary key, host text not null, pid integer not null, stages jsonb not null, concurrency integer not null,
                    started_at timestamptz not null default now(), last_seen timestamptz not null default now(),
                    draining boolean not null default false, claims jsonb not null default '[]');
                create table if not exists ${s}.settings (key text primary key, value jsonb not null);
                alter table ${s}.stages add column if not exists claim_id text;
                -- jobs belong to a client's name (a rotated token keeps them), not to a token id as they once did
                update ${s}.jobs j set client_id = t.name from ${s}.tokens t where j.client_id = t.id;
                update ${s}.idempotency_keys k set client_id = t.name from ${s}.tokens t where k.client_id = t.id;
            `);
        });
    }

    /** Runs a query, waiting up to `retryUnavailableMs` for a lost database. */
    async query<R = Row>(text: string, values?: unknown[]): Promise<QueryResult<R>> {
        return this.retry(() => this.pool.query<R>(text, values));
    }

    /**
     * Runs a query once, never waiting for a lost database: heartbeats and the reaper must not
     * act late on a judgement made before an outage.
     */
    private async once<R = Row>(text: string, values?: unknown[]): Promise<QueryResult<R>> {
        try {
            return await this.pool.query<R>(text, values);
        } catch (err) {
            if (isConnectionError(err))
                throw new StoreUnavailableError(`the job store ${redactUrl(this.url)} is unavailable: ${(err as Error).message}`, {cause: err});
            throw err;
        }
    }

    /** Runs `fn`, again and again while the database is unreachable, for up to `retryUnavailableMs`. */
    async retry<T>(fn: () => Promise<T>): Promise<T> {
        const until = Date.now() + this.retryUnavailableMs;
        let wait = 100;
        for (;;) {
            try {
                return await fn();
            } catch (err) {
                if (!isConnectionError(err))
                    throw err;
                if (this.closed || Date.now() + wait > until)
                    throw new StoreUnavailableError(`the job store ${redactUrl(this.url)} is unavailable: ${(err as Error).message}`, {cause: err});
                await new Promise((r) => setTimeout(r, wait));
                wait = Math.min(wait * 2, 2000);
            }
        }
    }

    /** Runs `fn` in one transaction (retried whole when the connection was lost before commit). */
    async transaction<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
        return this.retry(async () => {
            const client = await this.pool.connect();
            let broken: Error | undefined;
            try {
                await client.query("begin");
                const out = await fn(client);
                await client.query("commit");
                return out;
            } catch (err) {
                broken = err as Error;
                await client.query("rollback").catch(() => {});
                throw err;
            } finally {
                client.release(broken !== undefined && isConnectionError(broken) ? broken : undefined);
            }
        });
    }

    private t(name: string): string {
        return `${this.schema}.${name}`;
    }

    async createToken(t: Omit<TokenRecord, "revoked_at">): Promise<void> {
        try {
            await this.query(`insert into ${this.t("tokens")} (id, name, token_sha256, admin, created_at) values ($1, $2, $3, $4, $5)`,
                [t.id, t.name, t.token_sha256, t.admin, t.created_at]);
        } catch (err) {
            if ((err as {code?: string}).code === "23505")
                throw new Error(`a live token named "${t.name}" exists; revoke it first or choose another name`);
            throw err;
        }
    }

    async tokenByHash(sha256: string): Promise<TokenRecord | undefined> {
        const r = await this.query(`select * from ${this.t("tokens")} where token_sha256 = $1 and revoked_at is null`, [sha256]);
        return r.rows[0] ? tokenOf(r.rows[0]) : undefined;
    }

    async revokeToken(nameOrId: string, at: string): Promise<TokenRecord[]> {
        const r = await this.query(`update ${this.t("tokens")} set revoked_at = $2 where (name = $1 or id = $1) and revoked_at is null returning *`,
            [nameOrId, at]);
        return r.rows.map(tokenOf);
    }

    async listTokens(): Promise<TokenRecord[]> {
        return (await this.query(`select * from ${this.t("tokens")} order by created_at, id`)).rows.map(tokenOf);
    }

    async idempotencyHit(clientId: string, key: string): Promise<IdempotencyHit | undefined> {
        const r = await this.query(`select job_id, body_sha256 from ${this.t("idempotency_keys")} where client_id = $1 and key = $2`, [clientId, key]);
        return r.rows[0] ? {job_id: String(r.rows[0].job_id), body_sha256: String(r.rows[0].body_sha256)} : undefined;
    }

    async createJob(job: NewJob, now: string, maxActive: number): Promise<void> {
        await this.transaction(async (q) => {
            // one submission per client at a time, so the active-job count cannot be raced past
            await q.query("select pg_advisory_xact_lock(hashtext($1))", [`${this.schema}.client.${job.client_id}`]);
            const n = await q.query(`select count(*)::int as n from ${this.t("jobs")} where client_id = $1 and status in ('queued', 'running')`,
                [job.client_id]);
            if (Number(n.rows[0].n) >= maxActive)
                throw new TooManyJobsError(`this client already has ${maxActive} queued or running job(s); wait for one to finish`);
            await q.query(`insert into ${this.t("jobs")} (id, client_id, status, stage, spec, items, items_sha256, created_at, updated_at, error) ` +
                "values ($1, $2, 'queued', null, $3, $4, $5, $6, $6, null)",
            [job.id, job.client_id, JSON.stringify(job.spec), job.items, job.items_sha256, now]);
            for (const [i, name] of stageNames.entries())
                await q.query(`insert into ${this.t("stages")} (job_id, name, position, status) values ($1, $2, $3, $4)`,
                    [job.id, name, i, job.skipped.includes(name) ? "skipped" : "pending"]);
            if (job.idempotency)
                await q.query(`insert into ${this.t("idempotency_keys")} (client_id, key, body_sha256, job_id, created_at) values ($1, $2, $3, $4, $5)`,
                    [job.client_id, job.idempotency.key, job.idempotency.body_sha256, job.id, now]);
        }).catch((err) => {
            // the server's retry path looks for "constraint" (two submissions with one key at once)
            if ((err as {code?: string}).code === "23505")
                throw new Error(`unique constraint: ${(err as Error).message}`, {cause: err});
            throw err;
        });
    }

    async job(id: string): Promise<JobRecord | undefined> {
        const r = await this.query(`select * from ${this.t("jobs")} where id = $1`, [id]);
        return r.rows[0] ? jobOf(r.rows[0]) : undefined;
    }

    async jobsOf(clientId: string): Promise<JobRecord[]> {
        return (await this.query(`select * from ${this.t("jobs")} where client_id = $1 order by created_at, id`, [clientId])).rows.map(jobOf);
    }

    async jobsIn(states: JobState[]): Promise<JobRecord[]> {
        return (await this.query(`select * from ${this.t("jobs")} where status = any($1::text[]) order by created_at, id`, [states])).rows.map(jobOf);
    }

    async activeJobCount(clientId: string): Promise<number> {
        const r = await this.query(`select count(*)::int as n from ${this.t("jobs")} where client_id = $1 and status in ('queued', 'running')`, [clientId]);
        return Number(r.rows[0].n);
    }

    async updateJob(id: string, fields: Partial<Pick<JobRecord, "status" | "stage" | "error">>, now: string): Promise<void> {
        const keys = (Object.keys(fields) as (keyof typeof fields)[]).filter((k) => ["status", "stage", "error"].includes(k));
        const sets = [...keys.map((k, i) => `${k} = $${i + 1}`), `updated_at = $${keys.length + 1}`].join(", ");
        await this.query(`update ${this.t("jobs")} set ${sets} where id = $${keys.length + 2}`, [...keys.map((k) => fields[k] ?? null), now, id]);
    }

    async stages(jobId: string): Promise<StageRecord[]> {
        return (await this.query(`select * from ${this.t("stages")} where job_id = $1 order by position`, [jobId])).rows.map(stageOf);
    }

    async updateStage(jobId: string, name: StageName, fields: Partial<Omit<StageRecord, "job_id" | "name" | "claim_id">>, claim?: string): Promise<boolean> {
        const allowed = ["status", "started_at", "finished_at", "seconds", "artifact_sha256", "result"];
        const keys = (Object.keys(fields) as (keyof typeof fields)[]).filter((k) => allowed.includes(k));
        if (keys.length === 0)
            return true;
        const value = (k: keyof typeof fields) => k === "result" ? (fields.result == null ? null : JSON.stringify(fields.result)) : fields[k] ?? null;
        const n = keys.length;
        const r = await this.query(`update ${this.t("stages")} set ${keys.map((k, i) => `${k} = $${i + 1}`).join(", ")} ` +
            `where job_id = $${n + 1} and name = $${n + 2}` + (claim === undefined ? "" : ` and claim_id = $${n + 3} and status = 'running'`),
        [...keys.map(value), jobId, name, ...(claim === undefined ? [] : [claim])]);
        return (r.rowCount ?? 0) > 0;
    }

    /**
     * Starts a stage under `claim`, which a live worker row must list (its heartbeat carried it):
     * a worker declared dead (its row deleted by a reaper) cannot take back a stage it was holding.
     */
    async claimStage(jobId: string, name: StageName, claim: string, at: string): Promise<{previous: string | null} | undefined> {
        return this.transaction(async (q) => {
            const row = await q.query(`select status, claim_id from ${this.t("stages")} where job_id = $1 and name = $2 for update`, [jobId, name]);
            const status = row.rows[0]?.status;
            if (status === undefined || status === "done" || status === "skipped")
                return undefined;
            const listed = await q.query(`select 1 from ${this.t("workers")} where claims @> $1::jsonb for share`, [JSON.stringify([{claim_id: claim}])]);
            if (listed.rowCount === 0)
                return undefined;
            await q.query(`update ${this.t("stages")} set status = 'running', claim_id = $3, started_at = $4, finished_at = null, seconds = null ` +
                "where job_id = $1 and name = $2", [jobId, name, claim, at]);
            await q.query(`update ${this.t("jobs")} set status = 'running', stage = $2, error = null, updated_at = $3 where id = $1`, [jobId, name, at]);
            const previous = row.rows[0].claim_id;
            return {previous: previous == null ? null : String(previous)};
        });
    }

    async finishJob(id: string, now: string): Promise<boolean> {
        const r = await this.query(`update ${this.t("jobs")} j set status = 'succeeded', stage = null, updated_at = $2 ` +
            `where id = $1 and status in ('queued', 'running') and not exists ` +
            `(select 1 from ${this.t("stages")} s where s.job_id = j.id and s.status not in ('done', 'skipped'))`, [id, now]);
        return (r.rowCount ?? 0) > 0;
    }

    async deleteJob(id: string): Promise<string[]> {
        return this.transaction(async (q) => {
            const job = await q.query(`select items_sha256 from ${this.t("jobs")} where id = $1 for update`, [id]);
            if (!job.rows[0])
                return [];
            const arts = await q.query(`select artifact_sha256 from ${this.t("stages")} where job_id = $1 and artifact_sha256 is not null`, [id]);
            await q.query(`delete from ${this.t("idempotency_keys")} where job_id = $1`, [id]);
            await q.query(`delete from ${this.t("stages")} where job_id = $1`, [id]);
            await q.query(`delete from ${this.t("jobs")} where id = $1`, [id]);
            return [String(job.rows[0].items_sha256), ...arts.rows.map((r) => String(r.artifact_sha256))];
        });
    }

    async referencedArtifacts(): Promise<Set<string>> {
        const r = await this.query<{s: string}>(`select items_sha256 as s from ${this.t("jobs")} union select artifact_sha256 as s from ${this.t("stages")} ` +
            "where artifact_sha256 is not null");
        return new Set(r.rows.map((x) => String(x.s)));
    }

    async allJobIds(): Promise<Set<string>> {
        return new Set((await this.query<{id: string}>(`select id from ${this.t("jobs")}`)).rows.map((r) => String(r.id)));
    }

    // ---- beyond JobStore: what distributed workers share ----

    async setting<T>(key: string): Promise<T | undefined> {
        const r = await this.query(`select value from ${this.t("settings")} where key = $1`, [key]);
        return r.rows[0] ? r.rows[0].value as T : undefined;
    }

    async setSetting(key: string, value: unknown): Promise<void> {
        await this.query(`insert into ${this.t("settings")} (key, value) values ($1, $2) on conflict (key) do update set value = excluded.value`,
            [key, JSON.stringify(value)]);
    }

    async registerWorker(w: {id: string; host: string; pid: number; stages: StageName[]; concurrency: number}): Promise<void> {
        await this.query(`insert into ${this.t("workers")} (id, host, pid, stages, concurrency) values ($1, $2, $3, $4, $5) ` +
            "on conflict (id) do update set last_seen = now()", [w.id, w.host, w.pid, JSON.stringify(w.stages), w.concurrency]);
    }

    /** Writes a heartbeat; false when the row is gone (the worker was declared dead and lost its claims). */
    async heartbeat(id: string, claims: WorkerClaim[], draining: boolean): Promise<boolean> {
        const r = await this.once(`update ${this.t("workers")} set last_seen = now(), claims = $2, draining = $3 where id = $1`,
            [id, JSON.stringify(claims), draining]);
        return (r.rowCount ?? 0) > 0;
    }

    async removeWorker(id: string): Promise<void> {
        await this.query(`delete from ${this.t("workers")} where id = $1`, [id]);
    }

    async workers(): Promise<WorkerRecord[]> {
        return (await this.query(`select *, extract(epoch from now() - last_seen)::float8 as seconds_since_seen from ${this.t("workers")} ` +
            "order by started_at, id")).rows.map(workerOf);
    }

    /**
     * Removes the workers whose last heartbeat is older than `staleSeconds` (by the database's
     * clock) and returns them: one caller gets each, so their claims are handed on exactly once.
     */
    async reapStaleWorkers(staleSeconds: number): Promise<WorkerRecord[]> {
        const r = await this.once(`delete from ${this.t("workers")} where last_seen < now() - make_interval(secs => $1) ` +
            "returning *, extract(epoch from now() - last_seen)::float8 as seconds_since_seen", [staleSeconds]);
        return r.rows.map(workerOf);
    }

    /** Which of these jobs still exist. */
    async existingJobs(ids: string[]): Promise<Set<string>> {
        if (ids.length === 0)
            return new Set();
        const r = await this.query<{id: string}>(`select id from ${this.t("jobs")} where id = any($1::text[])`, [ids]);
        return new Set(r.rows.map((x) => String(x.id)));
    }

    /** A fingerprint per active or recently updated job that changes with its status, stage or stage rows (for event streams). */
    async jobFingerprints(since: string): Promise<Map<string, string>> {
        const r = await this.query<Row>(`select j.id, j.status, j.stage, j.updated_at, ` +
            `(select string_agg(s.status, ',' order by s.position) from ${this.t("stages")} s where s.job_id = j.id) as st from ${this.t("jobs")} j ` +
            "where j.status in ('queued', 'running') or j.updated_at >= $1", [since]);
        return new Map(r.rows.map((x) => [String(x.id), `${x.status}|${x.stage}|${x.updated_at}|${x.st}`]));
    }

    async close(): Promise<void> {
        if (this.closed)
            return;
        this.closed = true;
        await this.pool.end();
    }
}

/** Opens the store a `--store` value names: a postgres:// URL, or else an embedded data dir. */
export async function openJobStore(store: string, options: PostgresStoreOptions = {}): Promise<JobStore> {
    if (isPostgresUrl(store))
        return PostgresJobStore.open(store, options);
    const {SqliteJobStore} = await import("./store.js");
    return SqliteJobStore.open(store);
}
