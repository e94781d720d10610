// A throwaway PostgreSQL cluster for tests: Debian's postgresql binaries, initdb into a temp
// directory, listening on 127.0.0.1 at a free port (unix socket in the temp dir), trust auth on
// loopback only. PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres`
// OS user. Missing binaries fail the test with a clear message, unless PPC_SKIP_POSTGRES=1.
import {execFile} from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {promisify} from "node:util";
import type {ExecutionContext} from "ava";

const run = promisify(execFile);

export const skipPostgres = process.env.PPC_SKIP_POSTGRES === "1";

/** The directory of initdb/pg_ctl: $PPC_PG_BIN, else the newest /usr/lib/postgresql/N/bin, else PATH. */
export function postgresBinDir(): string | undefined {
    const candidates: string[] = [];
    if (process.env.PPC_PG_BIN)
        candidates.push(process.env.PPC_PG_BIN);
    const debian = "/usr/lib/postgresql";
    if (fs.existsSync(debian))
        candidates.push(...fs.readdirSync(debian).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
            .map((v) => path.join(debian, v, "bin")));
    for (const p of (process.env.PATH ?? "").split(path.delimiter))
        candidates.push(p);
    return candidates.find((d) => fs.existsSync(path.join(d, "initdb")) && fs.existsSync(path.join(d, "pg_ctl")));
}

const asRoot = process.getuid?.() === 0;

async function freePort(): Promise<number> {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => {
            const port = (s.address() as net.AddressInfo).port;
            s.close(() => resolve(port));
        });
    });
}

export class PostgresCluster {
    private constructor(readonly dir: string, readonly bin: string, readonly port: number) {}

    get url(): string {
        return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
    }

    private get data(): string {
        return path.join(this.dir, "data");
    }

    /** Runs a PostgreSQL program as the cluster's owner. */
    private async pg(program: string, args: string[]): Promise<string> {
        const exe = path.join(this.bin, program);
        const [cmd, argv] = asRoot ? ["runuser", ["-u", "postgres", "--", exe, ...args]] : [exe, args];
        try {
            const r = await run(cmd, argv, {cwd: this.dir, timeout: 60_000});
            return r.stdout;
        } catch (err) {
            const e = err as {stderr?: string; stdout?: string; message: string};
            const log = fs.existsSync(path.join(this.dir, "server.log")) ? fs.readFileSync(path.join(this.dir, "server.log"), "utf8").slice(-2000) : "";
            throw new Error(`${program} ${args.join(" ")} failed: ${e.stderr || e.stdout || e.message}\n${log}`);
        }
    }

    /** initdb + start; stopped and deleted in the test's teardown. */
    static async create(t: Pick<ExecutionContext, "teardown">): Promise<PostgresCluster> {
        const bin = postgresBinDir();
        if (!bin)
            throw new Error("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package (apt-get install -y postgresql), " +
                "set PPC_PG_BIN to their directory, or set PPC_SKIP_POSTGRES=1 to skip the PostgreSQL tests");
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-pg-"));
        fs.chmodSync(dir, 0o755);
        if (asRoot)
            await run("chown", ["-R", "postgres:postgres", dir]);
        const cluster = new PostgresCluster(dir, bin, await freePort());
        t.teardown(() => cluster.destroy());
        await cluster.pg("initdb", ["-D", cluster.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"]);
        // loopback only, a socket in the temp dir (not /var/run/postgresql), small and quick
        fs.appendFileSync(path.join(cluster.data, "postgresql.conf"), [
            "listen_addresses = '127.0.0.1'", `port = ${cluster.port}`, `unix_socket_directories = '${dir}'`,
            "max_connections = 100", "shared_buffers = 16MB", "fsync = on", "log_min_messages = warning", ""].join("\n"));
        await cluster.start();
        return cluster;
    }

    async start(): Promise<void> {
        await this.pg("pg_ctl", ["-D", this.data, "-l", path.join(this.dir, "server.log"), "-w", "-t", "60", "start"]);
    }

    /** A clean, fast shutdown (connections are cut, nothing committed is lost). */
    async stop(): Promise<void> {
        await this.pg("pg_ctl", ["-D", this.data, "-m", "fast", "-w", "-t", "60", "stop"]);
    }

    async destroy(): Promise<void> {
        if (fs.existsSync(path.join(this.data, "postmaster.pid")))
            await this.pg("pg_ctl", ["-D", this.data, "-m", "immediate", "-w", "stop"]).catch(() => {});
        fs.rmSync(this.dir, {recursive: true, force: true});
    }
}
