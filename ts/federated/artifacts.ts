// Content-addressed artifacts: every stored stage output is a file named by its sha256 under
// <data-dir>/artifacts/<first two hex>/<sha256>. A file enters the store by being hashed and then
// hard-linked (or renamed) into place, so a reader never sees a partial artifact.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {fileSha256} from "../privacy/kit.js";
import {commitFile, fsyncPath, writeFileDurable} from "../durable-file.js";

export interface ArtifactRef {
    sha256: string;
    size: number;
}

/** sha256 and size of a file, streamed (one implementation: the perturbation kit's). */
export const hashFile: (file: string) => Promise<ArtifactRef> = fileSha256;

export class ArtifactStore {
    readonly dir: string;
    readonly tmpDir: string;

    constructor(dataDir: string) {
        this.dir = path.join(dataDir, "artifacts");
        this.tmpDir = path.join(dataDir, "tmp");
        fs.mkdirSync(this.dir, {recursive: true});
        fs.mkdirSync(this.tmpDir, {recursive: true});
    }

    pathOf(sha256: string): string {
        if (!/^[0-9a-f]{64}$/.test(sha256))
            throw new Error(`not a sha256: ${sha256}`);
        return path.join(this.dir, sha256.slice(0, 2), sha256);
    }

    has(sha256: string): boolean {
        return fs.existsSync(this.pathOf(sha256));
    }

    /**
     * Adds `file` (left in place; hard-linked when possible, else copied) and returns its reference.
     * The content is fsynced before it becomes visible under its name. `copy` for a file that may
     * still be appended to (a link would let that change the artifact under its hash).
     */
    async addFile(file: string, options: {copy?: boolean} = {}): Promise<ArtifactRef> {
        await fsyncPath(file);
        const ref = await hashFile(file);
        const dest = this.pathOf(ref.sha256);
        if (fs.existsSync(dest))
            return ref;
        await fs.promises.mkdir(path.dirname(dest), {recursive: true});
        const tmp = path.join(this.tmpDir, `${ref.sha256}.${process.pid}.${crypto.randomBytes(4).toString("hex")}`);
        let linked = false;
        if (!options.copy) {
            try {
                await fs.promises.link(file, tmp);
                linked = true;
            } catch {
                // another filesystem, or no hard links: copy
            }
        }
        if (!linked) {
            await fs.promises.copyFile(file, tmp);
            await fsyncPath(tmp);
        }
        await commitFile(tmp, dest);
        return ref;
    }

    /** Adds bytes (durable-file.ts: a temporary file, fsynced, renamed into place, the folder fsynced). */
    async addBytes(bytes: Uint8Array): Promise<ArtifactRef> {
        const sha256 = crypto.createHash("sha256").update(bytes).digest("hex");
        const dest = this.pathOf(sha256);
        if (!fs.existsSync(dest)) {
            await fs.promises.mkdir(path.dirname(dest), {recursive: true});
            await writeFileDurable(dest, bytes);
        }
        return {sha256, size: bytes.length};
    }

    async remove(sha256: string): Promise<void> {
        await fs.promises.rm(this.pathOf(sha256), {force: true});
    }

    /** Every artifact on disk. */
    list(): string[] {
        const out: string[] = [];
        for (const sub of fs.readdirSync(this.dir))
            for (const name of fs.readdirSync(path.join(this.dir, sub)))
                if (/^[0-9a-f]{64}$/.test(name))
                    out.push(name);
        return out;
    }
}
