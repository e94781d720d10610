// The client over HTTPS: a server with a self-signed certificate (made by openssl for the test) is
// refused until the client trusts it through NODE_EXTRA_CA_CERTS; then the whole exchange works.
import {execFileSync} from "node:child_process";
import path from "node:path";
import test from "ava";
import {hasShared, tempDir} from "../helpers.js";
import {createToken, spawnClient, startFederation, writePrivateItems} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("client over TLS: an unknown certificate is refused; trusted via NODE_EXTRA_CA_CERTS, a job runs and its model is fetched", async (t) => {
    const dir = tempDir(t);
    const cert = path.join(dir, "cert.pem"), key = path.join(dir, "key.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], {stdio: "ignore"});
    const {server, serverDir: srvDir} = await startFederation(t, dir, ["--tls-cert", cert, "--tls-key", key]);
    t.regex(server.url, /^https:/);
    const token = await createToken(srvDir, "acme");
    const refused = await spawnClient(["jobs", "--server", server.url], token).done;
    t.is(refused.code, 1);
    t.regex(refused.stderr, /cannot reach the server \((SELF_SIGNED|DEPTH_ZERO|UNABLE_TO_VERIFY)/);
    const priv = writePrivateItems(dir, 5, "acme");
    const r = await spawnClient(["run", "--server", server.url, "--data", priv.file, "--holdout", "0.2", "--k", "1", "--server-steps", "1",
        "--batch-size", "2", "--client-steps", "1", "--state-dir", path.join(dir, "state"), "--threads", "2", "--json"], token,
    {env: {NODE_EXTRA_CA_CERTS: cert}}).done;
    t.is(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    t.is(s.job_status.status, "succeeded");
    t.is(s.model.sha256, s.job_status.model.sha256);
});
