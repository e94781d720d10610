// The part of node-postgres (`pg`, pure JavaScript, no types of its own) that ppc-gpt uses.
declare module "pg" {
    export interface QueryResult<R = Record<string, unknown>> {
        rows: R[];
        rowCount: number | null;
    }
    export interface PoolConfig {
        connectionString?: string;
        max?: number;
        connectionTimeoutMillis?: number;
        idleTimeoutMillis?: number;
        application_name?: string;
    }
    export interface PoolClient {
        query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
        release(err?: Error | boolean): void;
    }
    export class Pool {
        constructor(config?: PoolConfig);
        query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
        connect(): Promise<PoolClient>;
        end(): Promise<void>;
        on(event: "error", listener: (err: Error) => void): this;
    }
    const pg: {Pool: typeof Pool};
    export default pg;
}
