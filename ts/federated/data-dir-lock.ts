// One server per data dir, by an exclusive lock that the kernel releases when the holder dies.
//
// Node has no flock(). The lock is an SQLite database, `server.lock`, opened with
// `locking_mode=EXCLUSIVE` and written once: SQLite then keeps its exclusive file lock (POSIX fcntl
// on Unix, LockFileEx on Windows) until the connection closes, and the kernel drops such locks when
// the process exits, however it exits (kill -9 included; a zombie already holds none). No pid is
// checked for liveness, so a reused pid or a stale `server.pid` cannot block a restart. libsql is
// already a dependency, so this needs no native code. Two POSIX-lock pitfalls are avoided: nothing
// else in this process ever opens `server.lock` (closing any descriptor of a file drops the process's
// fcntl locks on it; SQLite's own connections share one descriptor per file for that reason), and
// the file is never deleted (a server could lock the unlinked inode while the next one creates a new
// file). `server.pid` is written after the lock is held and is information only: it names the holder
// in the refusal.
import fs from "node:fs";
import path from "node:path";
import Database from "libsql";

/** The lock database and the pid file, in the data dir. */
export const dataDirLockFiles = {lock: "server.lock", pid: "server.pid"} as const;

/**
 * How long a start waits for the lock. Two servers starting at the same instant can each take
 * SQLite's shared lock before either takes the exclusive one; waiting a moment lets exactly one win.
 */
const lockWaitMs = 500;

/** Lock connections held by this process: referenced here so that no collector closes one (and drops its lock). */
const held = new Set<Database.Database>();

/** Another live process holds the data dir. */
export class DataDirBusy extends Error {}

/** Takes the data dir's lock, or throws DataDirBusy naming the holder's pid; returns the release. */
export function lockDataDir(dataDir: string): () => void {
    const db = takeLock(dataDir);
    held.add(db);
    const pidFile = path.join(dataDir, dataDirLockFiles.pid);
    try {
        writePidFile(pidFile);
    } catch (err) {
        held.delete(db);
        db.close();
        throw err;
    }
    let released = false;
    return () => {
        if (released)
            return;
        released = true;
        // the pid file goes first: once the lock is free, the next holder's pid file must stay
        if (readPid(pidFile) === String(process.pid))
            fs.rmSync(pidFile, {force: true});
        held.delete(db);
        db.close();
    };
}

/** Opens `server.lock` and holds its exclusive lock; SQLITE_BUSY means another process holds it. */
function takeLock(dataDir: string): Database.Database {
    fs.mkdirSync(dataDir, {recursive: true});
    const file = path.join(dataDir, dataDirLockFiles.lock);
    const db = new Database(file, {timeout: lockWaitMs});
    try {
        db.exec("PRAGMA locking_mode = EXCLUSIVE");
        // BEGIN EXCLUSIVE takes the exclusive lock now; in EXCLUSIVE locking mode COMMIT keeps it until close
        db.exec("BEGIN EXCLUSIVE");
        db.exec("CREATE TABLE IF NOT EXISTS holder (note TEXT)");
        db.exec("COMMIT");
        return db;
    } catch (err) {
        db.close();
        if ((err as {code?: string}).code === "SQLITE_BUSY") {
            const pid = readPid(path.join(dataDir, dataDirLockFiles.pid));
            throw new DataDirBusy(`another server (pid ${pid && /^\d+$/.test(pid) ? pid : "unknown"}) is using ${dataDir}; ` +
                `stop it first, or give another --data-dir`);
        }
        throw new Error(`cannot lock ${dataDir} (${file}: ${(err as Error).message})`);
    }
}

/** `server.pid`, replaced atomically: a reader sees the old pid or the new one, never a part. */
function writePidFile(file: string): void {
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, `${process.pid}\n`);
    fs.renameSync(tmp, file);
}

function readPid(file: string): string | undefined {
    try {
        return fs.readFileSync(file, "utf8").trim();
    } catch {
        return undefined;
    }
}
