// `ppc-gpt server` and `ppc-gpt fl server` with TLS files that cannot work: a missing file, a file
// that is not PEM, a key of another certificate. Each exits 1 naming the flag and the file,
// before anything listens.
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {hasShared, runCli, stories260K, tempDir} from "../helpers.js";

(hasShared ? test : test.skip)("server and fl server name a TLS file that is missing, not PEM, or the key of another certificate", async (t) => {
    const dir = tempDir(t);
    const pair = (name: string) => {
        const cert = path.join(dir, `${name}-cert.pem`), key = path.join(dir, `${name}-key.pem`);
        execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
            "-subj", "/CN=127.0.0.1"], {stdio: "ignore"});
        return {cert, key};
    };
    const a = pair("a"), b = pair("b");
    const junk = path.join(dir, "junk.pem");
    fs.writeFileSync(junk, "not a certificate\n");
    const cases: [string, string, RegExp][] = [
        [path.join(dir, "none.pem"), a.key, /--tls-cert .*none\.pem: cannot read \(no such file\)/],
        [junk, a.key, /--tls-cert .*junk\.pem: not a PEM certificate/],
        [a.cert, junk, /--tls-key .*junk\.pem: not a PEM private key/],
        [a.cert, b.key, /--tls-key .*b-key\.pem is not the private key of --tls-cert .*a-cert\.pem/],
    ];
    for (const [cert, key, message] of cases) {
        for (const verb of [["server", "--data-dir", path.join(dir, "srv"), "--model", stories260K, "--generator-model", stories260K],
            ["fl", "server", "--base", stories260K, "--data-dir", path.join(dir, "fl")]]) {
            const r = await runCli([...verb, "--port", "0", "--tls-cert", cert, "--tls-key", key]);
            t.is(r.code, 1, `${verb[0]} ${cert} ${key}: ${r.stderr}`);
            t.regex(r.stderr, message);
            t.notRegex(r.stdout, /listening/);
        }
    }
});
