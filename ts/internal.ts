// ppc-gpt/internal: UNSTABLE. Helpers shared by the CLI, the tests and the benchmarks (the raw addon,
// encoders, statistics, RNGs, prompt and parse helpers, ...). Names here may change or go away in any
// release without notice; the supported surface is "ppc-gpt" (ts/index.ts) and "ppc-gpt/federated".
export {native} from "./native.js";
export {userCacheDir} from "./native-loader.js";
export type {GgmlTypeInfo, NativeModel} from "./native.js";
export {GgufModelFile} from "./gguf/read.js";
export {ggmlType, tensorBytes} from "./gguf/write.js";
export {syntheticModel} from "./gguf/synthetic.js";
export {strategyOrder, layerMagnitudes, parseScores, readScoresFile, pruningStrategies} from "./prune/plan.js";
export {evaluateItems, loadEvalItems, selectItems, PairEncoder, vocabInfo, scoreLoglikelihoods, argmax, charLength,
    choiceMetrics, mean, meanStderr, sampleStddev, summarizeAccuracy, rollingWindows, evalTaskNames, evalTasks} from "./eval/index.js";
export type {SelectOptions, EncodedPair, EncodeOptions, AccuracySummary, ChoiceMetrics, EvalTaskSpec, FormattedItem} from "./eval/index.js";
export {taskFile, datasets, datasetNames, defaultDataDir, loadAi2Jsonl, loadArc, loadOpenBookQa, loadCommonsenseQa,
    loadFiqaPosts, loadFinloraSentiment, loadPhraseBank, fiqaScoreClass, sentimentChoices, sentimentClasses, sentimentInstructions} from "./data/loaders/index.js";
export type {Ai2LoadOptions, SentimentClass} from "./data/loaders/index.js";
export {blockInfluenceSvg, exampleSequence, textSequences, metricValues, modelIdentity, layerMetrics} from "./prune/block-influence.js";
export type {CountedPositions} from "./prune/block-influence.js";
export {formatInput, labelExample, rationaleExample, labelTaskPrefix, rationaleTaskPrefix, promptFormatVersion, taskFormats,
    taskFormatNames, defaultTaskFormat, formatItem, promptMetadataKeys, readPromptRecord, recordedLabelPrefix} from "./data/prompt.js";
export type {PromptExample, PromptOptions, PromptRecord, TaskFormatName} from "./data/prompt.js";
export {computeRdp, subsampledGaussianRdp, rdpToEpsilon, defaultRdpOrders} from "./train/dp-accountant.js";
export type {RdpConversion} from "./train/dp-accountant.js";
export {privateGradient, applyAdamW, poissonSample, GaussianNoise} from "./train/dp-sgd.js";
export {expandCells, cellKey} from "./experiment/runner.js";
export {smallConfig, paperConfig, methodNames} from "./experiment/config.js";
export {flows} from "./experiment/flows.js";
export type {Cell, FlowResult} from "./experiment/flows.js";
export {buildTables} from "./experiment/tables.js";
export {estimateGpuTime} from "./experiment/estimate.js";
export {readJsonl, writeJsonlAtomic} from "./data/jsonl.js";
export {taskItemProblem} from "./data/task-item.js";
export {synthesizeOne, readParents, deriveSeed, syntheticId, defaultTemperatures, defaultMaxTokens} from "./synth/pipeline.js";
export type {AttemptOutcome, AttemptContext} from "./synth/pipeline.js";
export {Semaphore} from "./synth/generator.js";
export type {StructuredOutputSupport} from "./synth/generator.js";
export {EmbeddedGenerator} from "./synth/embedded.js";
export {RemoteGenerator, chatCompletionsUrl, parseRetryAfter, defaultApiKeyEnv} from "./synth/remote.js";
export type {ResponseFormatLevel, RetryInfo} from "./synth/remote.js";
export {PROMPT_VERSION, promptVersion, questionMessages, answerMessages, rationaleMessages, questionSchema, answerSchema,
    rationaleSchema, RATIONALE_END} from "./synth/prompts.js";
export type {PromptFormat, DraftQuestion} from "./synth/prompts.js";
export {parseQuestionReply, parseAnswerReply, parseRationaleReply, extractJsonObject, answerLetter} from "./synth/parse.js";
export {rejectionReasons, validateDraft, agreeVotes, questionKey} from "./synth/validate.js";
export type {RejectionReason} from "./synth/validate.js";
export {journalPath} from "./synth/store.js";
export {readWeightedItems, validationLoss, initLoraAdapter, loraTargets, defaultTargetModules, loadCheckpoint, saveCheckpoint,
    ExampleEncoder, itemExamples, packMicroBatches, stepTokenWeights, learningRateAt, lrSchedulers} from "./train/index.js";
export type {TrainerState, LoraTarget, CheckpointMeta, EncodedExample, ExampleEncodeOptions, ExampleKind, MicroBatch, TrainTask,
    WeightedItem, LrSchedule} from "./train/index.js";
export {exponentialDistribution} from "./privacy/mechanism.js";
export {buildCusTextIndex, clusterSizes, cusTextMechanism, cusTextUtilities} from "./privacy/custext.js";
export type {CusTextIndex, CusTextIndexOptions, EmbeddingMatrix, SimilarityMetric} from "./privacy/custext.js";
export {sanTextMechanism, sanTextUtilities} from "./privacy/santext.js";
export {loadEmbeddings} from "./privacy/embeddings.js";
export type {LoadEmbeddingsOptions, TokenEmbeddings} from "./privacy/embeddings.js";
export {perturbationDomain, readVocabulary} from "./privacy/vocab.js";
export type {TokenVocabulary} from "./privacy/vocab.js";
export {datasetReport, mechanismNames} from "./privacy/perturb.js";
export {secureUniform} from "./random.js";
export {defaultCacheDir} from "./privacy/cache.js";
export {idMapPath, writeIdMap, releasedIdPattern} from "./privacy/release.js";
export {isPerturbationKit, fileSha256, KIT_TENSOR} from "./privacy/kit.js";
export {quantizationType, quantizationOverrides} from "./quantize/quantize.js";
export {imatrixValues} from "./quantize/imatrix.js";
export {imatrixTextChunks} from "./quantize/collect.js";
// moved from the public surface (issue 23: under 80 stable values)
export {textImatrix} from "./quantize/collect.js";
export {seededUniform} from "./random.js";
export {writeTables} from "./experiment/tables.js";
