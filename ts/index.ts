// ppc-gpt public API: the stage functions and their option/result types. Curated: every value here
// has a TSDoc line and is listed in api/ppc-gpt.api.json (test/api/surface.test.ts fails when the two
// disagree; `node scripts/api-report.mjs --write` regenerates the report). Helpers the CLI, tests and
// benchmarks share are the unstable subpath "ppc-gpt/internal" (ts/internal.ts).

// Models and GGUF files
export {loadModel} from "./model.js";
export type {LoadedModel} from "./model.js";
export {nativeSelection} from "./native.js";
export type {NativeSelection, NativeVerdict} from "./native-loader.js";
export type {GgufFileInfo, GgufMetadataEntry, GgufTensorInfo, NativeModelInfo, NativeModelOptions, ProgressCallback} from "./native.js";
export {inspectModel} from "./gguf/inspect.js";
export type {ModelInspection, LayerSummary} from "./gguf/inspect.js";
export {readGguf} from "./gguf/read.js";
export {writeGguf} from "./gguf/write.js";
export type {GgufKv, GgufValue, GgufScalarType, GgufTensorSpec} from "./gguf/write.js";
export {writeSyntheticModel} from "./gguf/synthetic.js";
export type {SyntheticArchitecture, SyntheticModelOptions} from "./gguf/synthetic.js";

// Pruning: Block Influence, the plan, layer removal
export {scoreLayers, blockInfluence} from "./prune/block-influence.js";
export type {LayerScores, LayerScoreOptions, LayerMetric, TokenSequence, BlockInfluenceReport, BlockInfluenceOptions,
    ModelIdentity} from "./prune/block-influence.js";
export {planPruning} from "./prune/plan.js";
export type {PruningPlan, PruningPlanOptions, PruningStrategy} from "./prune/plan.js";
export {removeLayers} from "./prune/remove.js";
export type {LayerRemovalResult, RemoveLayersOptions} from "./prune/remove.js";

// Evaluation and task data
export {evaluate, perplexity, LoglikScorer} from "./eval/index.js";
export type {EvalItemResult, EvalResult, EvalSummary, EvaluateOptions, ContinuationScore, LoglikScorerOptions, LoraAdapterSpec,
    ScoreOptions, TokenRequest, PerplexityOptions, PerplexityResult, EvalTaskName} from "./eval/index.js";
export {loadTask} from "./data/loaders/index.js";
export type {DatasetName, LoadTaskOptions} from "./data/loaders/index.js";
export {readTaskItems, DataError} from "./data/jsonl.js";
export type {TaskItem, TaskChoice, SyntheticItem} from "./data/task-item.js";

// Quantization (llama.cpp's quantizer) and importance matrices from the task
export {quantizeModel, quantizationTypes} from "./quantize/quantize.js";
export type {QuantizeModelOptions, QuantizeModelResult, QuantizationType, ImatrixSource} from "./quantize/quantize.js";
export {readImatrixFile, writeImatrixGguf} from "./quantize/imatrix.js";
export {taskImatrix} from "./quantize/collect.js";
export type {ImportanceMatrix, ImatrixEntry} from "./quantize/imatrix.js";

// Generation and synthesis
export {BatchGenerator} from "./generate/batch-generator.js";
export type {BatchGeneratorOptions, GenerationRequest, GenerationResult} from "./generate/batch-generator.js";
export {synthesize} from "./synth/pipeline.js";
export type {SynthesizeOptions, SynthSummary, SynthProgress, SynthTemperatures, SynthMaxTokens} from "./synth/pipeline.js";
export {GeneratorError} from "./synth/generator.js";
export type {Generator, GenerateRequest, GenerateResult, ChatMessage, JsonSchema, FinishReason} from "./synth/generator.js";
export {createEmbeddedGenerator} from "./synth/embedded.js";
export type {EmbeddedGeneratorOptions} from "./synth/embedded.js";
export {createRemoteGenerator} from "./synth/remote.js";
export type {RemoteGeneratorOptions, RemoteGeneratorStats} from "./synth/remote.js";
export {SyntheticStore} from "./synth/store.js";
export type {StoreRecovery, RejectionRecord, RunRecord} from "./synth/store.js";

// LoRA training (DP-SGD), adapters, merging
export {trainLora, LoraTrainer, readLoraAdapter, writeLoraAdapter, mergeLora} from "./train/index.js";
export type {TrainOptions, TrainResult, TrainEvent, LoraTrainerOptions, LoraAdapter, LoraConfig, LoraTensor, EvalRecord, StepRecord,
    MergeOptions, MergeResult, LrScheduler} from "./train/index.js";
// The library's defaults and option errors: what --help shows and what a left-out option becomes.
export {loraDefaults, trainDefaults, resolveTrainOptions} from "./train/index.js";
export {OptionError} from "./options.js";
export {synthDefaults} from "./synth/defaults.js";
export type {DpReport} from "./train/train.js";
export {dpSgdEpsilon, noiseMultiplierFor} from "./train/dp-accountant.js";
export type {DpSgdAccounting} from "./train/dp-accountant.js";

// Privacy: text perturbation, release, the perturbation kit
export {createPerturber, perturbFile} from "./privacy/perturb.js";
export type {DatasetReport, MechanismName, MechanismReport, PerturbedItem, PerturberOptions, PerturbFileOptions, PerturbReport,
    RecordReport, TextPerturbation, TextPerturber} from "./privacy/perturb.js";
export {exponentialMechanism} from "./privacy/mechanism.js";
export type {ExponentialMechanismOptions, PrivacyGuarantee, TokenDistribution, TokenMechanism, TokenUtilities} from "./privacy/mechanism.js";
export type {UniformSource} from "./random.js";
export {releaseItems, readIdMap} from "./privacy/release.js";
export type {ReleasedItem, IdMapEntry} from "./privacy/release.js";
export {writePerturbationKit} from "./privacy/kit.js";

// Experiments: the paper's grid of cells and its tables
export {runExperiment} from "./experiment/runner.js";
export type {ExperimentOptions, ExperimentEvent, ExperimentSummary} from "./experiment/runner.js";
export {builtinConfigs, loadExperimentConfig} from "./experiment/config.js";
export type {ExperimentConfig, MethodName, Settings, TaskSpec} from "./experiment/config.js";

// The federated layer (job server and client, scale-out workers, PruFed) is the subpath export
// "ppc-gpt/federated" (ts/federated/index.ts), so importing the stages does not load Fastify, libsql or pg.
