/**
 * Subject fidelity, as the DreamBooth paper (Ruiz et al. 2023, §4.1) measures it: the mean cosine
 * similarity between the DINO ViT-S/16 CLS embeddings of every generated image and every real
 * subject photo ("DINO"). The same pairwise mean over CLIP image embeddings is CLIP-I; CLIP-T is
 * the mean cosine between each generated image and its prompt (see clip.ts).
 *
 * | symbol | meaning                                          |
 * | ------ | ------------------------------------------------ |
 * | g_i    | embedding of generated image i, i = 1..G         |
 * | r_j    | embedding of subject photo j, j = 1..R           |
 * | cos    | a·b / (‖a‖‖b‖)                                    |
 * | m_i    | (1/R) Σ_j cos(g_i, r_j), per-image mean           |
 * | DINO   | (1/(G·R)) Σ_i Σ_j cos(g_i, r_j) = (1/G) Σ_i m_i   |
 *
 * Pure math on Float32Arrays; the embedding models live in dino.ts and clip.ts.
 */

/** Cosine similarity, accumulated in float64. A zero vector is an error (its direction is undefined). */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`cosine: vectors have lengths ${a.length} and ${b.length}`);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  if (na === 0 || nb === 0) throw new Error(`cosine: zero vector (${na === 0 ? 'first' : 'second'} argument)`);
  return dot / Math.sqrt(na * nb);
}

/** `m[i][j] = cosine(rows[i], cols[j])`. */
export function cosineMatrix(
  rows: readonly ArrayLike<number>[],
  cols: readonly ArrayLike<number>[] = rows,
): number[][] {
  return rows.map((r) => cols.map((c) => cosine(r, c)));
}

export interface EmbeddedImage {
  readonly file: string;
  readonly embedding: ArrayLike<number>;
}

export interface SubjectFidelity {
  /** Mean cosine over all generated × subject pairs. */
  readonly dino: number;
  /** G·R, the number of pairs averaged. */
  readonly pairs: number;
  /** m_i per generated image, in input order. */
  readonly perImage: readonly { file: string; meanCosine: number }[];
}

/**
 * Mean pairwise cosine between generated and subject embeddings (DINO with DINO embeddings,
 * CLIP-I with CLIP image embeddings; the field is named `dino` after the main use).
 */
export function subjectFidelity(
  generated: readonly EmbeddedImage[],
  subject: readonly EmbeddedImage[],
): SubjectFidelity {
  if (generated.length === 0) throw new Error('subjectFidelity: no generated images');
  if (subject.length === 0) throw new Error('subjectFidelity: no subject photos');
  const perImage = generated.map((g) => {
    let sum = 0;
    for (const r of subject) sum += cosine(g.embedding, r.embedding);
    return { file: g.file, meanCosine: sum / subject.length };
  });
  const dino = perImage.reduce((s, p) => s + p.meanCosine, 0) / perImage.length;
  return { dino, pairs: generated.length * subject.length, perImage };
}

/** Something that embeds image files (DinoEmbedder, ClipModels' image tower). */
export interface ImageEmbedder {
  embed(files: readonly string[], onProgress?: (done: number, total: number) => void): Promise<Float32Array[]>;
}

/**
 * Embeds both folders' files with `embedder` and scores them. `onProgress(done, total)` counts
 * images over both sets (subject photos first).
 */
export async function scoreSubjectFidelity(
  embedder: ImageEmbedder,
  generatedFiles: readonly string[],
  subjectFiles: readonly string[],
  onProgress?: (done: number, total: number) => void,
): Promise<SubjectFidelity> {
  const total = generatedFiles.length + subjectFiles.length;
  const subject = await embedder.embed(subjectFiles, (d) => onProgress?.(d, total));
  const generated = await embedder.embed(generatedFiles, (d) => onProgress?.(subjectFiles.length + d, total));
  return subjectFidelity(
    generatedFiles.map((file, i) => ({ file, embedding: generated[i] })),
    subjectFiles.map((file, i) => ({ file, embedding: subject[i] })),
  );
}
