// ppc-gpt public API.
export {native, nativeSelection} from "./native.js";
export {userCacheDir, type NativeSelection, type NativeVerdict} from "./native-loader.js";
export type {GgufFileInfo, GgufMetadataEntry, GgufTensorInfo, GgmlTypeInfo, NativeModel, NativeModelInfo, NativeModelOptions,
    ProgressCallback} from "./native.js";
export {readGguf, GgufModelFile} from "./gguf/read.js";
export {inspectModel} from "./gguf/inspect.js";
export type {ModelInspection, LayerSummary} from "./gguf/inspect.js";
export {writeGguf, ggmlType, tensorBytes} from "./gguf/write.js";
export type {GgufKv, GgufValue, GgufScalarType, GgufTensorSpec} from "./gguf/write.js";
export {syntheticModel, writeSyntheticModel} from "./gguf/synthetic.js";
export type {SyntheticArchitecture, SyntheticModelOptions} from "./gguf/synthetic.js";
export {planPruning, strategyOrder, layerMagnitudes, parseScores, readScoresFile, pruningStrategies} from "./prune/plan.js";
export type {PruningPlan, PruningPlanOptions, PruningStrategy} from "./prune/plan.js";
export {removeLayers} from "./prune/remove.js";
export type {LayerRemovalResult, RemoveLayersOptions} from "./prune/remove.js";
export {loadModel} from "./model.js";
export {BatchGenerator} from "./generate/batch-generator.js";
export type {BatchGeneratorOptions, GenerationRequest, GenerationResult} from "./generate/batch-generator.js";
export type {LoadedModel} from "./model.js";
export {evaluate, evaluateItems, loadEvalItems, selectItems, PairEncoder, vocabInfo, LoglikScorer, scoreLoglikelihoods, argmax, charLength,
    choiceMetrics, mean, meanStderr, sampleStddev, summarizeAccuracy, perplexity, rollingWindows, evalTaskNames, evalTasks} from "./eval/index.js";
export type {EvalItemResult, EvalResult, EvalSummary, EvaluateOptions, SelectOptions, EncodedPair, EncodeOptions, ContinuationScore,
    LoglikScorerOptions, LoraAdapterSpec, ScoreOptions, TokenRequest, AccuracySummary, ChoiceMetrics, PerplexityOptions, PerplexityResult,
    EvalTaskName, EvalTaskSpec, FormattedItem} from "./eval/index.js";
export {loadTask, taskFile, datasets, datasetNames, defaultDataDir, loadAi2Jsonl, loadArc, loadOpenBookQa, loadCommonsenseQa, loadFiqaPosts,
    loadFinloraSentiment, loadPhraseBank, fiqaScoreClass, sentimentChoices, sentimentClasses, sentimentInstructions} from "./data/loaders/index.js";
export type {DatasetName, LoadTaskOptions, Ai2LoadOptions, SentimentClass} from "./data/loaders/index.js";
export {scoreLayers, blockInfluence, blockInfluenceSvg, exampleSequence, textSequences, metricValues, modelIdentity,
    layerMetrics} from "./prune/block-influence.js";
export type {LayerScores, LayerScoreOptions, LayerMetric, TokenSequence, CountedPositions, BlockInfluenceReport,
    BlockInfluenceOptions, ModelIdentity} from "./prune/block-influence.js";
export {formatInput, labelExample, rationaleExample, labelTaskPrefix, rationaleTaskPrefix, promptFormatVersion, taskFormats, taskFormatNames,
    defaultTaskFormat, formatItem, promptMetadataKeys, readPromptRecord, recordedLabelPrefix} from "./data/prompt.js";
export type {PromptExample, PromptOptions, PromptRecord, TaskFormatName} from "./data/prompt.js";
export {computeRdp, subsampledGaussianRdp, rdpToEpsilon, dpSgdEpsilon, noiseMultiplierFor, defaultRdpOrders} from "./train/dp-accountant.js";
export type {DpSgdAccounting, RdpConversion} from "./train/dp-accountant.js";
export {privateGradient, applyAdamW, poissonSample, GaussianNoise} from "./train/dp-sgd.js";
export type {DpReport} from "./train/train.js";
export {runExperiment, expandCells, cellKey} from "./experiment/runner.js";
export type {ExperimentOptions, ExperimentEvent, ExperimentSummary} from "./experiment/runner.js";
export {smallConfig, paperConfig, builtinConfigs, loadExperimentConfig, methodNames} from "./experiment/config.js";
export type {ExperimentConfig, MethodName, Settings, TaskSpec} from "./experiment/config.js";
export {flows} from "./experiment/flows.js";
export type {Cell, FlowResult} from "./experiment/flows.js";
export {buildTables, writeTables} from "./experiment/tables.js";
export {estimateGpuTime} from "./experiment/estimate.js";
export {readJsonl, readTaskItems, writeJsonlAtomic, DataError} from "./data/jsonl.js";
export {taskItemProblem} from "./data/task-item.js";
export type {TaskItem, TaskChoice, SyntheticItem} from "./data/task-item.js";
export {synthesize, synthesizeOne, readParents, deriveSeed, syntheticId, defaultTemperatures, defaultMaxTokens} from "./synth/pipeline.js";
export type {SynthesizeOptions, SynthSummary, SynthProgress, SynthTemperatures, SynthMaxTokens, AttemptOutcome, AttemptContext} from "./synth/pipeline.js";
export {GeneratorError, Semaphore} from "./synth/generator.js";
export type {Generator, GenerateRequest, GenerateResult, ChatMessage, JsonSchema, FinishReason, StructuredOutputSupport} from "./synth/generator.js";
export {createEmbeddedGenerator, EmbeddedGenerator} from "./synth/embedded.js";
export type {EmbeddedGeneratorOptions} from "./synth/embedded.js";
export {createRemoteGenerator, RemoteGenerator, chatCompletionsUrl, parseRetryAfter, defaultApiKeyEnv} from "./synth/remote.js";
export type {RemoteGeneratorOptions, RemoteGeneratorStats, ResponseFormatLevel, RetryInfo} from "./synth/remote.js";
export {PROMPT_VERSION, promptVersion, questionMessages, answerMessages, rationaleMessages, questionSchema, answerSchema, rationaleSchema,
    RATIONALE_END} from "./synth/prompts.js";
export type {PromptFormat, DraftQuestion} from "./synth/prompts.js";
export {parseQuestionReply, parseAnswerReply, parseRationaleReply, extractJsonObject, answerLetter} from "./synth/parse.js";
export {rejectionReasons, validateDraft, agreeVotes, questionKey} from "./synth/validate.js";
export type {RejectionReason} from "./synth/validate.js";
export {SyntheticStore, journalPath} from "./synth/store.js";
export type {StoreRecovery, RejectionRecord, RunRecord} from "./synth/store.js";
export {trainLora, readWeightedItems, validationLoss, LoraTrainer, initLoraAdapter, loraTargets, readLoraAdapter, writeLoraAdapter,
    defaultTargetModules, loadCheckpoint, saveCheckpoint, ExampleEncoder, itemExamples, packMicroBatches, stepTokenWeights, mergeLora,
    learningRateAt, lrSchedulers} from "./train/index.js";
export type {TrainOptions, TrainResult, TrainEvent, LoraTrainerOptions, TrainerState, LoraAdapter, LoraConfig, LoraTarget, LoraTensor,
    CheckpointMeta, EvalRecord, StepRecord, EncodedExample, ExampleEncodeOptions, ExampleKind, MicroBatch, TrainTask, WeightedItem,
    MergeOptions, MergeResult, LrSchedule, LrScheduler} from "./train/index.js";
export {exponentialMechanism, exponentialDistribution} from "./privacy/mechanism.js";
export type {ExponentialMechanismOptions, PrivacyGuarantee, TokenDistribution, TokenMechanism, TokenUtilities} from "./privacy/mechanism.js";
export {buildCusTextIndex, clusterSizes, cusTextMechanism, cusTextUtilities} from "./privacy/custext.js";
export type {CusTextIndex, CusTextIndexOptions, EmbeddingMatrix, SimilarityMetric} from "./privacy/custext.js";
export {sanTextMechanism, sanTextUtilities} from "./privacy/santext.js";
export {loadEmbeddings} from "./privacy/embeddings.js";
export type {LoadEmbeddingsOptions, TokenEmbeddings} from "./privacy/embeddings.js";
export {perturbationDomain, readVocabulary} from "./privacy/vocab.js";
export type {TokenVocabulary} from "./privacy/vocab.js";
export {createPerturber, datasetReport, mechanismNames, perturbFile, TextPerturber} from "./privacy/perturb.js";
export type {DatasetReport, MechanismName, MechanismReport, PerturbedItem, PerturberOptions, PerturbFileOptions, PerturbReport, RecordReport,
    TextPerturbation} from "./privacy/perturb.js";
export {secureUniform, seededUniform} from "./privacy/rng.js";
export type {UniformSource} from "./privacy/rng.js";
export {defaultCacheDir} from "./privacy/cache.js";
export {releaseItems, idMapPath, readIdMap, writeIdMap, releasedIdPattern} from "./privacy/release.js";
export type {ReleasedItem, IdMapEntry} from "./privacy/release.js";
export {writePerturbationKit, isPerturbationKit, fileSha256, KIT_TENSOR} from "./privacy/kit.js";
// The federated layer (job server and client, scale-out workers, PruFed) is the subpath export
// "ppc-gpt/federated" (ts/federated/index.ts), so importing the stages does not load Fastify, libsql or pg.
