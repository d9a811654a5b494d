/**
 * Prompts as AUTOMATIC1111's web UI reads them: any length, in 75-token chunks, with `(word)`,
 * `(word:1.2)` and `[word]` emphasis and the `BREAK` keyword.
 *
 * Reference: stable-diffusion-webui `modules/prompt_parser.py` (`parse_prompt_attention`),
 * `modules/sd_hijack_clip.py` (`tokenize_line`, `forward`, `process_tokens`) and
 * `modules/sd_emphasis.py` (`EmphasisOriginal`, the default "Original" emphasis).
 *
 * | here              | A1111                              |
 * | ----------------- | ---------------------------------- |
 * | `CHUNK_TOKENS`    | `chunk_length` (75)                |
 * | `COMMA_BACKTRACK` | `opts.comma_padding_backtrack` (20)|
 * | `weights`         | `multipliers`                      |
 * | `z`               | the text encoder's output           |
 *
 * For each prompt:
 *   1. parse the emphasis into (text, weight) pieces: `(x)` multiplies by 1.1, `[x]` by 1/1.1,
 *      `(x:w)` by w, nested brackets multiply, `\(` is a literal bracket, an unclosed bracket
 *      runs to the end, `BREAK` ends the chunk;
 *   2. tokenize each piece on its own; fill chunks of 75 tokens (when a chunk fills up and a comma
 *      is among its last 20 tokens, the chunk ends after the comma and the rest moves on);
 *   3. each chunk becomes `<|startoftext|>` + 75 tokens + `<|endoftext|>`, padded as the
 *      tokenizer pads (77 ids), with weight 1 on the special and padding tokens.
 * For a batch of prompts (e.g. [negative, prompt]):
 *   4. every prompt gets as many chunks as the longest; missing ones are the empty prompt's
 *      chunk (A1111 pads so only with its "Pad prompt/negative prompt" option, off by default; by
 *      default it runs the two lengths as two UNet passes: textToImage's negativePadding 'none');
 *   5. encode every chunk (77 tokens) with the text encoder;
 *   6. emphasis: z <- z * weight per token, then z <- z * mean(z_before) / mean(z_after) over the
 *      chunk, so the overall mean stays what it was (A1111 "Original");
 *   7. concatenate each prompt's chunks along the sequence axis: [B, chunks * 77, hidden].
 * A prompt of at most 75 tokens without emphasis gives exactly the single 77-token encoding.
 *
 * Not supported (read as plain text, with a warning from `promptWarnings`): prompt editing
 * `[from:to:when]`, alternation `[a|b]`, extra-network tags `<lora:name:1>` (use --adapter), and
 * textual-inversion embeddings.
 */
import { tf, type Tensor } from '../backend/tf.ts';

export const CHUNK_TOKENS = 75;
export const COMMA_BACKTRACK = 20;
const ROUND = 1.1;
const SQUARE = 1 / 1.1;

/** One piece of parsed prompt text and its weight; `weight === -1` with text 'BREAK' ends a chunk. */
export type PromptPiece = [text: string, weight: number];

// A1111's patterns are Python `re` patterns on str, which are Unicode-aware; JavaScript's `\s`,
// `\d` and `\b` are not the same sets, so each is spelled out as Python defines it:
//   - `\s`: str.isspace(), i.e. [ \t\n\v\f\r], \x1c-\x1f, \x85 and the Unicode spaces (Zs, U+2028/9);
//     JavaScript's also has U+FEFF and lacks \x1c-\x1f and \x85;
//   - `\d`: every decimal digit (Unicode category Nd: `１`, `٣`, ...), which Python's float() reads;
//   - `\b`: a boundary between a word character (str.isalnum() or '_': letters and numbers of every
//     script, [\p{L}\p{N}_]) and another character, so `caféBREAK` and `猫BREAK犬` hold no boundary.
const PY_SPACE = '[\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PY_WORD = '[\\p{L}\\p{N}_]';

// A1111's re_attention, token by token.
const RE_ATTENTION = new RegExp(
  `\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]|\\\\\\\\|\\\\|\\(|\\[|:${PY_SPACE}*([+-]?[.\\p{Nd}]+)${PY_SPACE}*\\)|\\)|\\]|[^\\\\()[\\]:]+|:`,
  'gu',
);
// A1111's re_break, `\s*\bBREAK\b\s*`.
const RE_BREAK = new RegExp(`${PY_SPACE}*(?<!${PY_WORD})BREAK(?!${PY_WORD})${PY_SPACE}*`, 'u');

/** Python's float() of a `[+-]?[.\d]+` match: Unicode decimal digits read as their values. */
function pythonFloat(text: string): number {
  const ascii = text.replace(/\p{Nd}/gu, (d) => String(digitValue(d)));
  return /^[+-]?(\d+\.?\d*|\.\d+)$/.test(ascii) ? Number(ascii) : Number.NaN;
}

/** The value of a decimal digit: Unicode puts each script's digits 0-9 in one run of 10 code points. */
function digitValue(d: string): number {
  let cp = d.codePointAt(0)!;
  let offset = 0;
  while (/\p{Nd}/u.test(String.fromCodePoint(cp - 1))) {
    cp--;
    offset++;
  }
  return offset % 10;
}

/** `parse_prompt_attention`: the prompt as (text, weight) pieces, equal neighbours merged. */
export function parsePromptAttention(text: string): PromptPiece[] {
  const res: PromptPiece[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, m: number) => {
    for (let p = start; p < res.length; p++) res[p][1] *= m;
  };
  for (const m of text.matchAll(RE_ATTENTION)) {
    const t = m[0];
    const weight = m[1];
    if (t.startsWith('\\')) res.push([t.slice(1), 1]);
    else if (t === '(') round.push(res.length);
    else if (t === '[') square.push(res.length);
    else if (weight !== undefined && round.length && Number.isFinite(pythonFloat(weight)))
      multiplyRange(round.pop()!, pythonFloat(weight));
    else if (t === ')' && round.length) multiplyRange(round.pop()!, ROUND);
    else if (t === ']' && square.length) multiplyRange(square.pop()!, SQUARE);
    else {
      t.split(RE_BREAK).forEach((part, i) => {
        if (i > 0) res.push(['BREAK', -1]);
        res.push([part, 1]);
      });
    }
  }
  for (const pos of round) multiplyRange(pos, ROUND);
  for (const pos of square) multiplyRange(pos, SQUARE);
  if (!res.length) return [['', 1]];
  for (let i = 0; i + 1 < res.length; ) {
    if (res[i][1] === res[i + 1][1]) {
      res[i][0] += res[i + 1][0];
      res.splice(i + 1, 1);
    } else i++;
  }
  return res;
}

/** What a prompt asks for that is not supported, or would surprise: shown to the user. */
export function promptWarnings(text: string): string[] {
  const out: string[] = [];
  if (/<(lora|lyco|hypernet):[^>]*>/i.test(text))
    out.push(
      'extra-network tags such as <lora:name:1> are not read from the prompt (they stay as text); pass the file with --adapter file:strength',
    );
  const groups = squareGroups(text);
  if (groups.some((g) => PROMPT_EDITING.test(g)))
    out.push('prompt editing [from:to:when] is not supported: the text inside is used as written, weighted 1/1.1');
  if (groups.some((g) => g.includes('|')))
    out.push('alternation [a|b] is not supported: the text inside is used as written, weighted 1/1.1');
  const bad = /\(([^()]*):\s*([+-]?[.\d]+)\s*\)/g;
  for (const m of text.matchAll(bad))
    if (!Number.isFinite(Number(m[2]))) out.push(`'${m[0]}': ${m[2]} is not a number; the text is used as written`);
  let round = 0;
  let square = 0;
  for (const m of text.matchAll(RE_ATTENTION)) {
    if (m[0] === '(') round++;
    else if (m[0] === ')' || m[1] !== undefined) round = Math.max(0, round - 1);
    else if (m[0] === '[') square++;
    else if (m[0] === ']') square = Math.max(0, square - 1);
  }
  if (round || square)
    out.push(
      `${round ? `${round} unclosed '('` : ''}${round && square ? ' and ' : ''}${square ? `${square} unclosed '['` : ''}: the weight runs to the end of the prompt (as in A1111)`,
    );
  return out;
}

/**
 * A1111's prompt-editing rule (`scheduled` in prompt_parser.py's grammar): `[to:when]` or
 * `[from:to:when]`, `when` a number, its colons at the square bracket's own level. `[(x:2)]` is
 * emphasis inside a bracket, not editing; `[a:b]` (no number) is text.
 */
const PROMPT_EDITING = /^[^:]*(?::[^:]*)?:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$/;

/**
 * The text of every `[...]` group at its own level: nested groups become one placeholder
 * character, escaped characters (`\:`) are not syntax.
 */
function squareGroups(text: string): string[] {
  const groups: string[] = [];
  const open: Array<{ square: boolean; text: string }> = [];
  const append = (c: string) => {
    if (open.length) open[open.length - 1].text += c;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') {
      i++;
      append('x');
    } else if (c === '[' || c === '(') open.push({ square: c === '[', text: '' });
    else if ((c === ']' || c === ')') && open.length) {
      const g = open.pop()!;
      if (g.square) groups.push(g.text);
      append('x');
    } else append(c);
  }
  return groups;
}

/** What chunking needs of the tokenizer (ClipTokenizer has all of it). */
export interface ChunkTokenizer {
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  readonly modelMaxLength: number;
  encode(text: string): number[];
}

export interface PromptChunk {
  /** modelMaxLength ids: start, up to 75 prompt tokens, end, padding. */
  ids: number[];
  /** One weight per id. */
  weights: number[];
}

/** Steps 1-3: a prompt's chunks (at least one). */
export function promptChunks(tok: ChunkTokenizer, text: string): PromptChunk[] {
  const chunkLength = tok.modelMaxLength - 2;
  const commaIds = tok.encode(',');
  const comma = commaIds.length === 1 ? commaIds[0] : -1;
  const chunks: PromptChunk[] = [];
  let tokens: number[] = [];
  let weights: number[] = [];
  let lastComma = -1;
  const nextChunk = () => {
    const ids = [tok.bosTokenId, ...tokens, tok.eosTokenId];
    const w = [1, ...weights, 1];
    while (ids.length < tok.modelMaxLength) ids.push(tok.padTokenId), w.push(1);
    chunks.push({ ids, weights: w });
    tokens = [];
    weights = [];
    lastComma = -1;
  };
  for (const [piece, weight] of parsePromptAttention(text)) {
    if (piece === 'BREAK' && weight === -1) {
      nextChunk();
      continue;
    }
    for (const id of tok.encode(piece)) {
      if (id === comma) lastComma = tokens.length;
      else if (tokens.length === chunkLength && lastComma !== -1 && tokens.length - lastComma <= COMMA_BACKTRACK) {
        const at = lastComma + 1;
        const movedTokens = tokens.slice(at);
        const movedWeights = weights.slice(at);
        tokens = tokens.slice(0, at);
        weights = weights.slice(0, at);
        nextChunk();
        tokens = movedTokens;
        weights = movedWeights;
      }
      if (tokens.length === chunkLength) nextChunk();
      tokens.push(id);
      weights.push(weight);
    }
  }
  if (tokens.length || !chunks.length) nextChunk();
  return chunks;
}

/**
 * Steps 4-7: prompt embeddings [B, chunks * modelMaxLength, hidden] for `prompts` as a TensorFlow.js
 * tensor, with `encode(ids)` the text encoder ([rows, modelMaxLength] ids -> [rows, modelMaxLength,
 * hidden], a tensor this function disposes). The caller owns the result.
 */
export async function encodeWeightedPrompts(
  tok: ChunkTokenizer,
  encode: (ids: number[][]) => Tensor,
  prompts: readonly string[],
): Promise<Tensor> {
  const rows = promptRows(tok, prompts);
  const z = encode(rows.map((r) => r.ids));
  let values: Float32Array;
  try {
    values = (await z.data()) as Float32Array;
  } finally {
    z.dispose();
  }
  const { data, dims } = combineChunks(values, rows, prompts.length, tok.modelMaxLength);
  return tf.tensor(data, dims, 'float32');
}

/** Steps 4-5: every prompt's chunks, padded with empty chunks to the longest prompt's count; prompt-major (row b*k + j). */
export function promptRows(tok: ChunkTokenizer, prompts: readonly string[]): PromptChunk[] {
  const perPrompt = prompts.map((p) => promptChunks(tok, p));
  const k = Math.max(1, ...perPrompt.map((c) => c.length));
  const empty = promptChunks(tok, '')[0];
  return perPrompt.flatMap((chunks) => Array.from({ length: k }, (_, j) => chunks[j] ?? empty));
}

/**
 * Steps 6-7: the encoder's output z [B*k, 77, H] (row-major) for `rows` -> [B, k*77, H], emphasis
 * applied (scaled per token, then the chunk's mean restored; the means in double). Prompt-major
 * rows side by side are already [B, k*77, H] in memory: only the weights change. Borrows z.
 */
export function combineChunks(
  z: Float32Array,
  rows: readonly PromptChunk[],
  count: number,
  modelMaxLength: number,
): { data: Float32Array; dims: number[] } {
  const hidden = z.length / (rows.length * modelMaxLength);
  const dims = [count, (rows.length / count) * modelMaxLength, hidden]; // [B, k*77, H]
  if (!rows.some((r) => r.weights.some((w) => w !== 1))) return { data: z, dims };
  const out = new Float32Array(z.length);
  const per = modelMaxLength * hidden; // one chunk [77, H]
  rows.forEach((row, r) => {
    let before = 0;
    let after = 0;
    for (let i = 0; i < per; i++) {
      const v = z[r * per + i];
      before += v;
      after += v * row.weights[Math.floor(i / hidden)];
    }
    const restore = before / per / (after / per);
    for (let i = 0; i < per; i++) out[r * per + i] = z[r * per + i] * row.weights[Math.floor(i / hidden)] * restore;
  });
  return { data: out, dims };
}
