// ppc-gpt/federated/internal: UNSTABLE. Helpers of the federated layer shared by the CLI, the tests and
// the benchmarks (token hashing, spec checks, PruFed layer alignment, round files, ...). Names here may
// change or go away in any release without notice; the supported surface is "ppc-gpt/federated".
export {serverBase} from "./client/http.js";
export {waitForJob, fetchModel, readState, runFingerprint} from "./client/flow.js";
export {checkUploadable} from "./client/data.js";
export {tokenHash, authenticate} from "./tokens.js";
export {isPostgresUrl} from "./store-postgres.js";
export {StageWorker, DistributedRunner, queueDefaults, stageQueue} from "./distributed.js";
export {jobItemsProblem, jobStrategies, stageNames, privacyMechanisms, epsilonRange} from "./protocol.js";
export {parseLoraTensorName, layoutOfBase, layoutOfAdapter, clientLayerMap, toBaseNumbering, toClientNumbering, validateUpload,
    readUpload} from "./prufed/align.js";
export {clientPart, initialGlobal, strategies, strategyFor} from "./prufed/aggregate.js";
export {recomputeRound, roundFile} from "./prufed/rounds.js";
export {heldOutAccuracy, clientRoundFiles} from "./prufed/client.js";
export {accuracyByDepth, simulationModes} from "./prufed/simulate.js";
export type {MaskPlan, Advert, SharedBox} from "./prufed/secure.js";
export {roundsSvg} from "./prufed/plot.js";
export {SecureRoundError} from "./prufed/secure-host.js";
export {compareTable} from "./prufed/compare.js";
// moved from the public surface (issue 23: under 80 stable values)
export {LateUpload} from "./prufed/rounds.js";
export {flRoutes} from "./prufed/http-protocol.js";
export {SecureClient, SecureAggregationServer} from "./prufed/secure.js";
export {SecureRoundHost} from "./prufed/secure-host.js";
