// ppc-gpt/federated: the federated system (ts/federated): the PPC-GPT job server and its client,
// scale-out workers on PostgreSQL, and PruFed. A separate entry point from "ppc-gpt" because it loads
// Fastify, libsql and pg, which the stage libraries do not need.
export {FederatedClient, FederatedError, readToken, serverBase} from "./client/http.js";
export type {FederatedClientOptions, TrafficCounters, DownloadResult, DownloadOptions, WaitOptions} from "./client/http.js";
export {ClientFlow, preparePerturbedUpload, waitForJob, fetchModel, readState, runFingerprint} from "./client/flow.js";
export type {ClientSettings, ClientEvent, ClientState, PerturbSettings, PreparedUpload, RunSummary} from "./client/flow.js";
export {loadPrivateData, checkUploadable} from "./client/data.js";
export type {PrivateData, PrivateDataOptions} from "./client/data.js";
export {finishModel} from "./client/finish.js";
export type {FinishOptions, FinishReport, StageAccuracy} from "./client/finish.js";
export {startFederatedServer, serverDefaults} from "./server.js";
export type {FederatedServer, FederatedServerOptions, GeneratorConfig} from "./server.js";
export {SqliteJobStore, TooManyJobsError} from "./store.js";
export type {JobStore, JobRecord, StageRecord, TokenRecord, NewJob} from "./store.js";
export {createToken, tokenHash, authenticate} from "./tokens.js";
export {PostgresJobStore, StoreUnavailableError, openJobStore, isPostgresUrl} from "./store-postgres.js";
export type {PostgresStoreOptions, WorkerRecord, WorkerClaim} from "./store-postgres.js";
export {StageWorker, DistributedRunner, queueDefaults, stageQueue} from "./distributed.js";
export type {QueueSettings} from "./distributed.js";
export {startWorker} from "./worker.js";
export type {WorkerOptions, RunningWorker} from "./worker.js";
export {protocolVersion, routes, jobSpecDefaults, fillJobSpec, jobItemsProblem, jobStrategies, stageNames, privacyMechanisms,
    epsilonRange} from "./protocol.js";
export type {JobSpec, FilledJobSpec, JobItem, JobStatus, ServerInfo, SubmitJobRequest, SubmitJobResponse, StageName,
    JobState} from "./protocol.js";
// PruFed: federated LoRA tuning across clients pruned to different depths (ts/federated/prufed)
export {parseLoraTensorName, layoutOfBase, layoutOfAdapter, clientLayerMap, toBaseNumbering, toClientNumbering, validateUpload, readUpload,
    UploadRejected} from "./prufed/align.js";
export type {AdapterLayout, LayoutTarget, ClientDeclaration, UploadLimits} from "./prufed/align.js";
export {aggregate, aggregationMethods, clientPart, initialGlobal} from "./prufed/aggregate.js";
export type {AggregationMethod, AggregateOptions, AggregateResult, ClientUpdate, TargetAggregation} from "./prufed/aggregate.js";
export {FederationServer, LateUpload, recomputeRound, roundFile} from "./prufed/rounds.js";
export type {FederationConfig, RegisteredClient, RoundState, RoundSummary, SecureRoundRecord, UploadMetrics} from "./prufed/rounds.js";
export {runLocalRound, heldOutAccuracy, clientRoundFiles} from "./prufed/client.js";
export type {HeldOutSettings, LocalRoundOptions, LocalRoundResult, LocalTrainSettings} from "./prufed/client.js";
export {simulate, accuracyByDepth, simulationModes} from "./prufed/simulate.js";
export {compareFederations, compareTable} from "./prufed/compare.js";
export type {CompareOptions, CompareResult, DepthComparison} from "./prufed/compare.js";
export {startFlServer} from "./prufed/http-server.js";
export type {FlServer, FlServerEvent, FlServerOptions} from "./prufed/http-server.js";
export {runFlClient} from "./prufed/http-client.js";
export type {FlClientOptions, FlClientRound} from "./prufed/http-client.js";
export {flRoutes} from "./prufed/http-protocol.js";
export type {SimulateOptions, SimulateResult, SimulatedRound, SimulateEvent, SimulationMode} from "./prufed/simulate.js";
export {secureAggregateRound, SecureClient, SecureAggregationServer} from "./prufed/secure.js";
export type {SecureParticipant, SecureMember, SecureRoundOptions, SecureRoundReport, SecureRoundResult, MaskPlan, Advert, SharedBox} from "./prufed/secure.js";
export {roundsSvg} from "./prufed/plot.js";
export {SecureRoundHost, SecureRoundError} from "./prufed/secure-host.js";
export type {SecurePhase, SecureHostEvent, SecureRoundOutcome} from "./prufed/secure-host.js";
