// Durable writes: a file counts only once its bytes and its name are on disk. One helper for the
// whole project (temp file, fsync the file, rename, fsync the folder), so that a kill -9 or a power
// cut leaves either the old file or the new one, never a torn or missing one whose write was
// acknowledged. Appends (journals) fsync the file after each whole line, and the folder when the
// file is new.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

/** fsync of a file (or folder) by name. */
export async function fsyncPath(p: string): Promise<void> {
    const fh = await fs.promises.open(p, "r");
    try {
        await fh.sync();
    } finally {
        await fh.close();
    }
}

/** Makes a rename or a new file in `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
    try {
        await fsyncPath(dir);
    } catch {
        // some filesystems do not fsync folders; the rename itself is still atomic
    }
}

const tempName = (file: string) =>
    path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`);

/** Moves a complete (fsynced) temporary file into place durably: rename, then fsync the folder. */
export async function commitFile(tmp: string, file: string): Promise<void> {
    await fs.promises.rename(tmp, file);
    await fsyncDir(path.dirname(file));
}

/** Writes `data` to `file` atomically and durably (temp file in the same folder, fsync, rename, fsync folder). */
export async function writeFileDurable(file: string, data: string | Uint8Array): Promise<void> {
    await writeFileDurableWith(file, (fh) => fh.writeFile(data));
}

/**
 * Streams a file into place atomically and durably: `write` fills a temporary file in the same
 * folder through its handle (for outputs too big to hold in memory), then it is fsynced, renamed
 * over `file` and the folder fsynced. On any error the temporary file is removed and the error
 * rethrown; `file` is untouched.
 */
export async function writeFileDurableWith(file: string, write: (fh: fs.promises.FileHandle) => Promise<void>): Promise<void> {
    const tmp = tempName(file);
    const fh = await fs.promises.open(tmp, "wx");
    try {
        await write(fh);
        await fh.sync();
    } catch (err) {
        await fh.close().catch(() => {});
        await fs.promises.rm(tmp, {force: true});
        throw err;
    }
    await fh.close();
    await commitFile(tmp, file);
}

/** writeFileDurable for synchronous callers (caches, state files written between synchronous steps). */
export function writeFileDurableSync(file: string, data: string | Uint8Array): void {
    const tmp = tempName(file);
    const fd = fs.openSync(tmp, "wx");
    try {
        fs.writeFileSync(fd, data);
        fs.fsyncSync(fd);
    } catch (err) {
        fs.closeSync(fd);
        fs.rmSync(tmp, {force: true});
        throw err;
    }
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
    try {
        const dir = fs.openSync(path.dirname(file), "r");
        try {
            fs.fsyncSync(dir);
        } finally {
            fs.closeSync(dir);
        }
    } catch {
        // some filesystems do not fsync folders; the rename itself is still atomic
    }
}

/** JSON of `value` written with writeFileDurable. */
export async function writeJsonDurable(file: string, value: unknown, indent?: number): Promise<void> {
    await writeFileDurable(file, JSON.stringify(value, null, indent));
}

/** Copies `src` to `dest` atomically and durably. */
export async function copyFileDurable(src: string, dest: string): Promise<void> {
    const tmp = tempName(dest);
    try {
        await fs.promises.copyFile(src, tmp);
        await fsyncPath(tmp);
    } catch (err) {
        await fs.promises.rm(tmp, {force: true});
        throw err;
    }
    await commitFile(tmp, dest);
}

/** Appends one whole record to `file` and fsyncs it (and its folder when the file is new) before returning. */
export async function appendDurable(file: string, data: string | Uint8Array): Promise<void> {
    const created = !fs.existsSync(file);
    const fh = await fs.promises.open(file, "a");
    try {
        await fh.writeFile(data); // appends: the file is open in "a" mode
        await fh.sync();
    } finally {
        await fh.close();
    }
    if (created)
        await fsyncDir(path.dirname(file));
}
