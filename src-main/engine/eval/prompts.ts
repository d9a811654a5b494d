/**
 * The fixed evaluation prompt set, in the spirit of the DreamBooth benchmark (Ruiz et al. 2023,
 * §4.1 and the dataset's prompt lists): every checkpoint of every run is scored on the same prompts
 * with the same seeds, so scores compare across checkpoints and runs.
 *
 * - Two subject kinds: 'object' (toys, bags, cups, ...) and 'live' (pets and other animals); live
 *   subjects get outfits and poses instead of object-only edits.
 * - Three categories, as in the paper: recontextualization (new place or scene), accessorization
 *   (something added to the subject), property change (colour, material, shape, style).
 * - `{token}` is the rare identifier (e.g. 'sks'), `{class}` the class noun (e.g. 'dog').
 * - IMAGES_PER_PROMPT images per prompt, image k with seed EVAL_SEEDS[k]: the same seeds for every
 *   prompt, so the k-th image of two checkpoints starts from the same noise.
 *
 * The prompts are this project's own. Changing the list, the count or the seeds changes every score;
 * bump EVAL_PROMPT_SET_VERSION when you do, and store it with the scores.
 */

export const EVAL_PROMPT_SET_VERSION = 1;

export type SubjectKind = 'object' | 'live';
export type PromptCategory = 'recontextualization' | 'accessorization' | 'property';

export interface PromptTemplate {
  readonly template: string;
  readonly category: PromptCategory;
}

const t = (category: PromptCategory, ...templates: string[]): PromptTemplate[] =>
  templates.map((template) => ({ template, category }));

export const EVAL_PROMPTS: Readonly<Record<SubjectKind, readonly PromptTemplate[]>> = {
  object: [
    ...t(
      'recontextualization',
      'a {token} {class} on a wooden kitchen table',
      'a {token} {class} lying in fresh snow',
      'a {token} {class} on a sandy beach at sunset',
      'a {token} {class} on a bookshelf in a cozy library',
      'a {token} {class} floating in a swimming pool',
      'a {token} {class} on a mossy rock in a forest',
      'a {token} {class} on a city sidewalk at night with neon lights',
      'a {token} {class} on the dashboard of a car',
      'a {token} {class} on a picnic blanket in a park',
      'a {token} {class} on a desk next to a laptop',
      'a {token} {class} on the surface of the moon with the earth in the sky',
      'a {token} {class} in a glass display case in a museum',
    ),
    ...t(
      'accessorization',
      'a {token} {class} with a small bow tied around it',
      'a {token} {class} with fairy lights wrapped around it',
      'a {token} {class} next to a bouquet of tulips',
    ),
    ...t(
      'property',
      'a green {token} {class}',
      'a {token} {class} made of glass',
      'a {token} {class} made of gold',
      'a {token} {class} covered in colourful graffiti',
      'a watercolour painting of a {token} {class}',
      'a pencil sketch of a {token} {class}',
      'a tiny {token} {class} held in the palm of a hand',
      'a {token} {class} made of knitted wool',
      'a {token} {class} in the style of a vintage photograph',
      'a {token} {class} as a low-poly 3d render',
    ),
  ],
  live: [
    ...t(
      'recontextualization',
      'a {token} {class} sitting in a field of sunflowers',
      'a {token} {class} playing in deep snow',
      'a {token} {class} on a sandy beach at sunset',
      'a {token} {class} sitting on a sofa in a living room',
      'a {token} {class} in a forest clearing',
      'a {token} {class} on a city street at night with neon lights',
      'a {token} {class} looking out of a car window',
      'a {token} {class} on a wooden dock by a lake',
      'a {token} {class} on the surface of the moon with the earth in the sky',
      'a {token} {class} in front of a mountain landscape',
    ),
    ...t(
      'accessorization',
      'a {token} {class} wearing a knitted scarf',
      'a {token} {class} wearing round sunglasses',
      'a {token} {class} wearing a yellow raincoat',
      'a {token} {class} wearing a party hat',
      'a {token} {class} wearing an astronaut helmet',
      'a {token} {class} in a superhero cape',
      'a {token} {class} with a flower crown',
    ),
    ...t(
      'property',
      'a blue {token} {class}',
      'a {token} {class} made of clay',
      'a watercolour painting of a {token} {class}',
      'a pencil sketch of a {token} {class}',
      'a {token} {class} as a bronze statue',
      'a {token} {class} in the style of a vintage photograph',
      'a {token} {class} as a low-poly 3d render',
      'a sleeping {token} {class}',
    ),
  ],
};

/** Images generated per prompt. */
export const IMAGES_PER_PROMPT = 4;

/** Seed of image k of every prompt (k < IMAGES_PER_PROMPT). */
export const EVAL_SEEDS: readonly number[] = [1001, 2002, 3003, 4004];

export interface EvalJob {
  readonly promptIndex: number;
  readonly imageIndex: number;
  readonly category: PromptCategory;
  readonly prompt: string;
  readonly seed: number;
}

/** `{token}` and `{class}` filled in; both must be non-empty and contain no braces. */
export function fillPrompt(template: string, token: string, className: string): string {
  for (const [name, v] of [
    ['token', token],
    ['class', className],
  ] as const) {
    if (!v.trim() || /[{}]/.test(v))
      throw new Error(`fillPrompt: ${name} must be non-empty text without braces, got ${JSON.stringify(v)}`);
  }
  return template.replaceAll('{token}', token.trim()).replaceAll('{class}', className.trim());
}

/**
 * The quick check: the first prompt of each category, filled in (3 prompts). With one image per
 * prompt it scores a checkpoint in a few images: fast and noisy, not comparable with the full set.
 */
export function quickEvalPrompts(kind: SubjectKind, token: string, className: string): string[] {
  const prompts = EVAL_PROMPTS[kind];
  if (!prompts)
    throw new Error(`quickEvalPrompts: subject kind must be 'object' or 'live', got ${JSON.stringify(kind)}`);
  const first = new Map<PromptCategory, string>();
  for (const p of prompts) if (!first.has(p.category)) first.set(p.category, p.template);
  return [...first.values()].map((t) => fillPrompt(t, token, className));
}

/** Every (prompt, seed) pair to generate for a subject, in a fixed order: prompt-major, then seed. */
export function evalJobs(kind: SubjectKind, token: string, className: string): EvalJob[] {
  const prompts = EVAL_PROMPTS[kind];
  if (!prompts) throw new Error(`evalJobs: subject kind must be 'object' or 'live', got ${JSON.stringify(kind)}`);
  return prompts.flatMap((p, promptIndex) =>
    EVAL_SEEDS.slice(0, IMAGES_PER_PROMPT).map((seed, imageIndex) => ({
      promptIndex,
      imageIndex,
      category: p.category,
      prompt: fillPrompt(p.template, token, className),
      seed,
    })),
  );
}
