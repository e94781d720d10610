// The one internal schema for task data (DESIGN.md): every dataset loader produces it, every
// stage (perturbation, synthetic data, pruning scores, training, evaluation) consumes it.

export interface TaskChoice {
    /** "A".."E", or the dataset's own labels ("1".."4"). */
    label: string;
    text: string;
}

export interface TaskItem {
    id: string;
    question: string;
    choices: TaskChoice[];
    /** Label of the correct choice; absent for unlabelled data (e.g. CommonsenseQA test). */
    answer?: string;
    /** Chain-of-thought rationale explaining the answer. */
    rationale?: string;
    /** Where the item came from: dataset, file, line, original fields. */
    source?: Record<string, unknown>;
}

/** A synthetic item generated on the server from a perturbed one (METHOD.md step 2). */
export interface SyntheticItem extends TaskItem {
    parent_id: string;
    /** The final letters of the three chain-of-thought answers. */
    votes: string[];
    generator: string;
    prompt_version: string;
}

/** Checks one parsed JSON value against the TaskItem schema; returns a message or undefined. */
export function taskItemProblem(v: unknown): string | undefined {
    const problem = schemaProblem(v);
    return problem === undefined ? undefined : problem + originalLayoutHint(v);
}

/**
 * A dataset file in its original layout, given where task items are expected, is the first thing
 * a new user tries: say which layout it is and where the conversion is, not only the field.
 */
function originalLayoutHint(v: unknown): string {
    if (!v || typeof v !== "object" || Array.isArray(v))
        return "";
    const o = v as Record<string, unknown>;
    const q = o.question;
    const layout = q && typeof q === "object" && "stem" in q ? "the AI2 layout of ARC/OpenBookQA/CommonsenseQA"
        : typeof o.context === "string" && typeof o.target === "string" ? "FinLoRA's {context, target} layout"
        : undefined;
    return layout === undefined ? "" : ` (this line is in ${layout}, not a task item {id, question, choices: [{label, text}], answer?}; ` +
        "`ppc-gpt eval` and `ppc-gpt client` read it with --task <name>; to convert it see README.md, \"Task items\")";
}

function schemaProblem(v: unknown): string | undefined {
    if (!v || typeof v !== "object" || Array.isArray(v))
        return "not a JSON object";
    const o = v as Record<string, unknown>;
    if (typeof o.id !== "string" || o.id === "")
        return "\"id\" must be a non-empty string";
    if (typeof o.question !== "string")
        return "\"question\" must be a string";
    if (!Array.isArray(o.choices) || o.choices.length === 0)
        return "\"choices\" must be a non-empty array";
    const labels = new Set<string>();
    for (const [i, c] of o.choices.entries()) {
        if (!c || typeof c !== "object" || typeof c.label !== "string" || typeof c.text !== "string")
            return `choices[${i}] must be {"label": string, "text": string}`;
        if (labels.has(c.label))
            return `choice label "${c.label}" appears twice`;
        labels.add(c.label);
    }
    if (o.answer !== undefined && (typeof o.answer !== "string" || !labels.has(o.answer)))
        return `"answer" must be one of the choice labels (${[...labels].join(", ")})`;
    if (o.rationale !== undefined && typeof o.rationale !== "string")
        return "\"rationale\" must be a string";
    return undefined;
}
