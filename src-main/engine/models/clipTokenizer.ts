/**
 * CLIP's byte-level BPE tokenizer, as the slow transformers `CLIPTokenizer` runs it without ftfy.
 *
 * Mirrors transformers v4.38 `models/clip/tokenization_clip.py` (`bytes_to_unicode`, `get_pairs`,
 * `CLIPTokenizer.bpe`, `_tokenize`), `models/bert/tokenization_bert.py` (`BasicTokenizer` with
 * do_lower_case=True, strip_accents=False, do_split_on_punc=False: the fallback used when ftfy is
 * not installed, which is what the reference fixtures record), and the parts of
 * `tokenization_utils.py` (`PreTrainedTokenizer.tokenize`: special tokens are split off first)
 * and `tokenization_utils_base.py` (truncation, padding) that SD pipelines use.
 * Original: openai/CLIP `clip/simple_tokenizer.py`.
 *
 * Pipeline for one text:
 *   1. split off special tokens (`<|startoftext|>`, `<|endoftext|>`) found verbatim in the text;
 *   2. normalise each remaining piece (BasicTokenizer): drop control characters, whitespace -> ' ',
 *      spaces around CJK ideographs, NFC, split on whitespace, Python `str.lower()`, join with ' ';
 *   3. split into words with CLIP's regex;
 *   4. map each word's UTF-8 bytes to printable characters (`bytes_to_unicode`);
 *   5. BPE with the end-of-word marker `</w>`, then look the pieces up in `vocab.json`.
 * `call()` adds `<|startoftext|>` ... `<|endoftext|>`, truncates to `maxLength` (keeping the
 * final `<|endoftext|>`) and pads with the pad token (`<|endoftext|>` in SD 1.5).
 *
 * Unicode data: character classes, NFC and lower-casing come from the JS engine (Node 20 ships
 * a newer Unicode than the Python 3.11 / Unicode 14.0 that wrote the fixtures). For every
 * character assigned in Unicode 14.0, JS `toLowerCase()` equals Python's `str.lower()` (checked
 * over all code points, including the final-sigma context rule); characters assigned later may
 * tokenize differently (Python 3.11 drops them as unassigned, category Cn).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** CLIP's context length: 75 prompt tokens between `<|startoftext|>` and `<|endoftext|>`. */
export const CLIP_MAX_LENGTH = 77;

/** openai/CLIP reads at most 49152 - 256 - 2 merges (transformers slices the file the same way). */
const MAX_MERGES = 49152 - 256 - 2;

/** transformers' "no limit" sentinel and anything like it: not a usable context length. */
const MAX_SANE_MODEL_MAX_LENGTH = 1_000_000;

/** CLIP's pre-tokenizer (`CLIPTokenizer.pat`, compiled with re.IGNORECASE by the `regex` module). */
const CLIP_PATTERN = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

/**
 * U+0345 COMBINING GREEK YPOGEGRAMMENI is not a letter, but case-folds to one (iota). Under
 * Python `regex` with IGNORECASE it matches neither `[\p{L}]` nor `[^\s\p{L}\p{N}]`, so findall
 * skips it like a space; under JS /iu it matches `[\p{L}]`. It is the only such character
 * (checked over all code points assigned in Unicode 14.0), so it is turned into a space first.
 */
const SKIPPED_BY_CLIP_PATTERN = /\u0345/g;

/** Python `str.split()` whitespace (the characters for which `str.isspace()` is true). */
const PY_WHITESPACE = /[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

const CONTROL = /^\p{C}$/u; // unicodedata.category(c).startswith('C')
const SPACE_SEPARATOR = /^\p{Zs}$/u; // unicodedata.category(c) == 'Zs'

export interface ClipTokenizerFiles {
  /** `vocab.json`: token -> id. */
  vocab: Readonly<Record<string, number>>;
  /** `merges.txt` contents, header line included. */
  merges: string;
  /** `tokenizer_config.json`, if present. */
  tokenizerConfig?: Record<string, unknown>;
  /** `special_tokens_map.json`, if present (overrides tokenizer_config, as transformers does). */
  specialTokensMap?: Record<string, unknown>;
  /** Names the folder in error messages. */
  source?: string;
}

export interface CallOptions {
  /** Length to truncate and pad to; default `modelMaxLength` (77 for SD 1.5). */
  maxLength?: number;
  /** 'max_length' pads every row to maxLength, 'longest' to the longest row, false not at all. */
  padding?: 'max_length' | 'longest' | false;
  /** Cut rows longer than maxLength, keeping `<|startoftext|>` and the final `<|endoftext|>`. */
  truncation?: boolean;
}

export interface TokenUsage {
  /** Prompt tokens, without `<|startoftext|>` / `<|endoftext|>`. */
  used: number;
  /** Prompt tokens that fit (75 for CLIP's 77). */
  limit: number;
  /** True when `used > limit`: the tail of the prompt is cut off. */
  truncated: boolean;
}

export class ClipTokenizer {
  readonly bosToken: string;
  readonly eosToken: string;
  readonly padToken: string;
  readonly unkToken: string;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  readonly unkTokenId: number;
  /** `model_max_length` from tokenizer_config.json (77 when absent). */
  readonly modelMaxLength: number;

  private readonly encoder: ReadonlyMap<string, number>;
  private readonly decoder: ReadonlyMap<number, string>;
  /** "first second" -> merge rank. */
  private readonly bpeRanks: ReadonlyMap<string, number>;
  private readonly byteEncoder: readonly string[];
  /** Special tokens that are split off the raw text before normalisation, longest first. */
  private readonly specialSplit: RegExp;
  private readonly specialIds: ReadonlyMap<string, number>;
  private readonly cache = new Map<string, string[]>();

  constructor(files: ClipTokenizerFiles) {
    const source = files.source ?? 'tokenizer';
    this.encoder = parseVocab(files.vocab, `${source}/vocab.json`);
    this.decoder = new Map([...this.encoder].map(([tok, id]) => [id, tok]));
    this.bpeRanks = parseMerges(files.merges, `${source}/merges.txt`);
    this.byteEncoder = bytesToUnicode();

    // transformers: special_tokens_map.json entries override tokenizer_config.json's.
    const settings = { ...(files.tokenizerConfig ?? {}), ...(files.specialTokensMap ?? {}) };
    const where = `${source}/tokenizer_config.json or special_tokens_map.json`;
    this.bosToken = tokenContent(settings.bos_token, '<|startoftext|>', 'bos_token', where);
    this.eosToken = tokenContent(settings.eos_token, '<|endoftext|>', 'eos_token', where);
    this.padToken = tokenContent(settings.pad_token, '<|endoftext|>', 'pad_token', where);
    this.unkToken = tokenContent(settings.unk_token, '<|endoftext|>', 'unk_token', where);
    this.modelMaxLength = parseModelMaxLength(
      files.tokenizerConfig?.model_max_length,
      `${source}/tokenizer_config.json`,
    );

    const specialIds = new Map<string, number>();
    for (const [field, token] of [
      ['bos_token', this.bosToken],
      ['eos_token', this.eosToken],
      ['pad_token', this.padToken],
      ['unk_token', this.unkToken],
    ] as const) {
      const id = this.encoder.get(token);
      if (id === undefined) throw new Error(`${source}: ${field} '${token}' is not in vocab.json`);
      specialIds.set(token, id);
    }
    for (const [id, content] of addedTokens(
      files.tokenizerConfig?.added_tokens_decoder,
      `${source}/tokenizer_config.json`,
    )) {
      specialIds.set(content, id);
    }
    this.specialIds = specialIds;
    this.bosTokenId = specialIds.get(this.bosToken)!;
    this.eosTokenId = specialIds.get(this.eosToken)!;
    this.padTokenId = specialIds.get(this.padToken)!;
    this.unkTokenId = specialIds.get(this.unkToken)!;
    const alternatives = [...specialIds.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp);
    this.specialSplit = new RegExp(`(${alternatives.join('|')})`);
  }

  /** Loads a tokenizer folder in the SD 1.5 layout (`vocab.json`, `merges.txt`, optional configs). */
  static async load(folder: string): Promise<ClipTokenizer> {
    const vocabText = await readRequired(join(folder, 'vocab.json'), 'the CLIP vocabulary');
    const merges = await readRequired(join(folder, 'merges.txt'), 'the CLIP BPE merges');
    return new ClipTokenizer({
      vocab: parseJsonObject(vocabText, join(folder, 'vocab.json')) as Record<string, number>,
      merges,
      tokenizerConfig: await readOptionalJson(join(folder, 'tokenizer_config.json')),
      specialTokensMap: await readOptionalJson(join(folder, 'special_tokens_map.json')),
      source: folder,
    });
  }

  get vocabSize(): number {
    return this.encoder.size;
  }

  /** Token strings of `text`, without `<|startoftext|>` / `<|endoftext|>` (transformers `tokenize`). */
  tokenize(text: string): string[] {
    const out: string[] = [];
    // Step 1: special tokens written in the text stay whole; the pieces between them are tokenized.
    for (const [i, piece] of text.split(this.specialSplit).entries()) {
      if (i % 2 === 1) out.push(piece);
      else if (piece) out.push(...this.tokenizePiece(piece));
    }
    return out;
  }

  /** Token ids of `text`: untruncated, without `<|startoftext|>` / `<|endoftext|>`. */
  encode(text: string): number[] {
    return this.tokenize(text).map((tok) => this.specialIds.get(tok) ?? this.encoder.get(tok) ?? this.unkTokenId);
  }

  /** Token strings of ids (transformers `convert_ids_to_tokens`); unknown ids give the unk token. */
  idsToTokens(ids: readonly number[]): string[] {
    return ids.map((id) => this.decoder.get(id) ?? this.unkToken);
  }

  /**
   * `tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids`:
   * `<|startoftext|>` + ids + `<|endoftext|>`, truncated and padded.
   */
  call(text: string, options?: CallOptions): number[];
  call(text: readonly string[], options?: CallOptions): number[][];
  call(text: string | readonly string[], options: CallOptions = {}): number[] | number[][] {
    const { maxLength = this.modelMaxLength, padding = 'max_length', truncation = true } = options;
    if (!Number.isInteger(maxLength) || maxLength < 2) {
      throw new Error(
        `ClipTokenizer.call: maxLength must be an integer >= 2 (room for <|startoftext|> and <|endoftext|>), got ${maxLength}`,
      );
    }
    const texts = typeof text === 'string' ? [text] : text;
    const rows = texts.map((t) => {
      let ids = this.encode(t);
      if (truncation && ids.length > maxLength - 2) ids = ids.slice(0, maxLength - 2);
      return [this.bosTokenId, ...ids, this.eosTokenId];
    });
    const padTo =
      padding === 'max_length' ? maxLength : padding === 'longest' ? Math.max(0, ...rows.map((r) => r.length)) : 0;
    for (const row of rows) while (row.length < padTo) row.push(this.padTokenId);
    return typeof text === 'string' ? rows[0] : rows;
  }

  /** How many of the usable prompt tokens `text` takes (for the prompt box's counter). */
  tokenUsage(text: string, maxLength = this.modelMaxLength): TokenUsage {
    const used = this.encode(text).length;
    const limit = maxLength - 2;
    return { used, limit, truncated: used > limit };
  }

  /** Steps 2-5 for a piece of text without special tokens. */
  private tokenizePiece(piece: string): string[] {
    const out: string[] = [];
    for (const word of preTokenize(piece)) {
      // Step 4: UTF-8 bytes -> printable symbols, so BPE never sees spaces or control bytes.
      let symbols = '';
      for (const byte of Buffer.from(word, 'utf8')) symbols += this.byteEncoder[byte];
      out.push(...this.bpe(symbols));
    }
    return out;
  }

  /** Step 5: `CLIPTokenizer.bpe`: apply merges in rank order until none applies. */
  private bpe(token: string): string[] {
    if (token === '<|startoftext|>' || token === '<|endoftext|>') return [token]; // transformers' seeded cache
    const cached = this.cache.get(token);
    if (cached) return cached;
    const chars = Array.from(token);
    let word = [...chars.slice(0, -1), `${chars[chars.length - 1]}</w>`];
    if (word.length === 1) return word;

    for (;;) {
      // The adjacent pair with the lowest merge rank.
      let best: [string, string] | null = null;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.bpeRanks.get(`${word[i]} ${word[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = [word[i], word[i + 1]];
        }
      }
      if (!best) break;
      const [first, second] = best;
      // Merge every non-overlapping occurrence, left to right.
      const next: string[] = [];
      let i = 0;
      while (i < word.length) {
        const j = word.indexOf(first, i);
        if (j === -1) {
          next.push(...word.slice(i));
          break;
        }
        next.push(...word.slice(i, j));
        i = j;
        if (i < word.length - 1 && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else {
          next.push(word[i]);
          i += 1;
        }
      }
      word = next;
      if (word.length === 1) break;
    }
    this.cache.set(token, word);
    return word;
  }
}

/**
 * Step 2: BasicTokenizer(do_lower_case=True, strip_accents=False, do_split_on_punc=False)
 * followed by `" ".join(...)`, as `CLIPTokenizer._tokenize` does without ftfy.
 */
export function normalize(text: string): string {
  // 2a. `_clean_text`: drop NUL, U+FFFD and control characters; whitespace becomes ' '.
  // 2b. `_tokenize_chinese_chars`: spaces around CJK ideographs.
  let cleaned = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp === 0 || cp === 0xfffd || isControl(ch)) continue;
    if (isWhitespace(ch)) cleaned += ' ';
    else if (isCjkIdeograph(cp)) cleaned += ` ${ch} `;
    else cleaned += ch;
  }
  // 2c. NFC, 2d. split on whitespace (Python `str.split()`), lower-case each word, 2e. join.
  return cleaned
    .normalize('NFC')
    .split(PY_WHITESPACE)
    .filter((w) => w.length > 0)
    .map((w) => w.toLowerCase())
    .join(' ');
}

/** Steps 2-3: the normalised text split into words with CLIP's regex. */
export function preTokenize(text: string): string[] {
  return Array.from(normalize(text).replace(SKIPPED_BY_CLIP_PATTERN, ' ').matchAll(CLIP_PATTERN), (m) => m[0]);
}

/** `bert._is_control`: category C*, except tab, newline and carriage return. */
function isControl(ch: string): boolean {
  if (ch === '\t' || ch === '\n' || ch === '\r') return false;
  return CONTROL.test(ch);
}

/** `bert._is_whitespace`: space, tab, newline, carriage return, or category Zs. */
function isWhitespace(ch: string): boolean {
  return ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r' || SPACE_SEPARATOR.test(ch);
}

/** `BasicTokenizer._is_chinese_char`: the CJK Unified Ideographs blocks (not Hiragana, Katakana or Hangul). */
function isCjkIdeograph(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/**
 * `bytes_to_unicode`: byte -> a printable character. Printable Latin-1 bytes map to themselves;
 * the other 68 bytes map to U+0100.. in byte order.
 */
export function bytesToUnicode(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(printable(b) ? b : 256 + n++);
  return out;
}

function parseVocab(vocab: unknown, file: string): Map<string, number> {
  if (typeof vocab !== 'object' || vocab === null || Array.isArray(vocab))
    throw new Error(`${file}: expected a JSON object {token: id}`);
  const map = new Map<string, number>();
  for (const [tok, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || (id as number) < 0)
      throw new Error(
        `${file}: token ${JSON.stringify(tok)} has id ${JSON.stringify(id)}; ids must be non-negative integers`,
      );
    map.set(tok, id as number);
  }
  if (map.size === 0) throw new Error(`${file}: the vocabulary is empty`);
  return map;
}

/** `merges.txt`: a `#version` header line, then one `first second` pair per line, in rank order. */
function parseMerges(text: string, file: string): Map<string, number> {
  // transformers: `read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]` (the first line is skipped).
  const lines = text
    .trim()
    .split('\n')
    .slice(1, MAX_MERGES + 1);
  const ranks = new Map<string, number>();
  for (const [i, line] of lines.entries()) {
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 2)
      throw new Error(`${file}: line ${i + 2} is ${JSON.stringify(line)}; expected two symbols separated by a space`);
    const key = `${parts[0]} ${parts[1]}`;
    ranks.set(key, i); // a repeated pair keeps its last rank, as a Python dict does
  }
  return ranks;
}

/** A special token setting: a string, or a serialized `AddedToken` `{content, ...}`. */
function tokenContent(value: unknown, fallback: string, field: string, where: string): string {
  if (value === undefined || value === null) return fallback;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string')
    return (value as { content: string }).content;
  throw new Error(`${where}: ${field} must be a string or {"content": ...}, got ${JSON.stringify(value)}`);
}

function parseModelMaxLength(value: unknown, file: string): number {
  if (value === undefined || value === null) return CLIP_MAX_LENGTH;
  if (!Number.isInteger(value) || (value as number) < 2 || (value as number) > MAX_SANE_MODEL_MAX_LENGTH) {
    throw new Error(
      `${file}: model_max_length must be an integer in [2, ${MAX_SANE_MODEL_MAX_LENGTH}] (CLIP uses 77), got ${JSON.stringify(value)}`,
    );
  }
  return value as number;
}

/** `added_tokens_decoder` (tokenizer_config.json written by transformers >= 4.34): id -> {content}. */
function addedTokens(value: unknown, file: string): [number, string][] {
  if (value === undefined || value === null) return [];
  if (typeof value !== 'object' || Array.isArray(value))
    throw new Error(`${file}: added_tokens_decoder must be an object {id: {content, ...}}`);
  return Object.entries(value).map(([id, tok]) => {
    const content = (tok as { content?: unknown } | null)?.content;
    if (!/^\d+$/.test(id) || typeof content !== 'string') {
      throw new Error(
        `${file}: added_tokens_decoder entry ${JSON.stringify(id)} must map an integer id to {"content": string}`,
      );
    }
    return [Number(id), content];
  });
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function readRequired(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(
      `ClipTokenizer: cannot read ${path} (${what}): ${(err as Error).message}. A CLIP tokenizer folder holds vocab.json and merges.txt`,
    );
  }
}

async function readOptionalJson(path: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`ClipTokenizer: cannot read ${path}: ${(err as Error).message}`);
  }
  return parseJsonObject(text, path);
}

function parseJsonObject(text: string, path: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new Error(`${path}: expected a JSON object`);
  return value as Record<string, unknown>;
}
