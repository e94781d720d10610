// ppc-gpt/federated: the federated system (ts/federated): the PPC-GPT job server and its client,
// scale-out workers on PostgreSQL, and PruFed. A separate entry point from "ppc-gpt" because it loads
// Fastify, libsql and pg, which the stage libraries do not need. Curated like "ppc-gpt" (listed in
// api/ppc-gpt.api.json); helpers are the unstable subpath "ppc-gpt/federated/internal".

// PPC-GPT client: the HTTP client, the resumable client flow, private data, the local finish
export {FederatedClient, FederatedError, readToken} from "./client/http.js";
export type {FederatedClientOptions, TrafficCounters, DownloadResult, DownloadOptions, WaitOptions} from "./client/http.js";
export {ClientFlow, preparePerturbedUpload} from "./client/flow.js";
export type {ClientSettings, ClientEvent, ClientState, PerturbSettings, PreparedUpload, RunSummary} from "./client/flow.js";
export {loadPrivateData} from "./client/data.js";
export type {PrivateData, PrivateDataOptions} from "./client/data.js";
export {finishModel} from "./client/finish.js";
export type {FinishOptions, FinishReport, StageAccuracy} from "./client/finish.js";

// PPC-GPT job server, its stores and tokens, scale-out workers
export {startFederatedServer, serverDefaults} from "./server.js";
export type {FederatedServer, FederatedServerOptions, GeneratorConfig} from "./server.js";
export {SqliteJobStore, TooManyJobsError} from "./store.js";
export type {JobStore, JobRecord, StageRecord, TokenRecord, NewJob} from "./store.js";
export {PostgresJobStore, StoreUnavailableError, openJobStore} from "./store-postgres.js";
export type {PostgresStoreOptions, WorkerRecord, WorkerClaim} from "./store-postgres.js";
export {createToken} from "./tokens.js";
export {startWorker} from "./worker.js";
export type {WorkerOptions, RunningWorker} from "./worker.js";
export type {QueueSettings} from "./distributed.js";
export {protocolVersion, routes, jobSpecDefaults, fillJobSpec} from "./protocol.js";
export type {JobSpec, FilledJobSpec, JobItem, JobStatus, ServerInfo, SubmitJobRequest, SubmitJobResponse, StageName,
    JobState} from "./protocol.js";

// PruFed: federated LoRA tuning across clients pruned to different depths (ts/federated/prufed)
export {UploadRejected} from "./prufed/align.js";
export type {AdapterLayout, LayoutTarget, ClientDeclaration, UploadLimits} from "./prufed/align.js";
export {aggregate, aggregationMethods} from "./prufed/aggregate.js";
export type {AggregationMethod, AggregateOptions, AggregateResult, ClientUpdate, Strategy, TargetAggregation} from "./prufed/aggregate.js";
export {FederationServer} from "./prufed/rounds.js";
export type {FederationConfig, RegisteredClient, RoundState, RoundSummary, SecureRoundRecord, UploadMetrics} from "./prufed/rounds.js";
export {runLocalRound} from "./prufed/client.js";
export type {HeldOutSettings, LocalRoundOptions, LocalRoundResult, LocalTrainSettings} from "./prufed/client.js";
export {simulate} from "./prufed/simulate.js";
export type {SimulateOptions, SimulateResult, SimulatedRound, SimulateEvent, SimulationMode} from "./prufed/simulate.js";
export {prufedDefaults} from "./prufed/defaults.js";
export {compareFederations} from "./prufed/compare.js";
export type {CompareOptions, CompareResult, DepthComparison} from "./prufed/compare.js";
export {startFlServer} from "./prufed/http-server.js";
export type {FlServer, FlServerEvent, FlServerOptions} from "./prufed/http-server.js";
export {runFlClient} from "./prufed/http-client.js";
export type {FlClientOptions, FlClientRound} from "./prufed/http-client.js";
export {secureAggregateRound} from "./prufed/secure.js";
export type {SecureParticipant, SecureMember, SecureRoundOptions, SecureRoundReport, SecureRoundResult} from "./prufed/secure.js";
export type {SecurePhase, SecureHostEvent, SecureRoundOutcome} from "./prufed/secure-host.js";
