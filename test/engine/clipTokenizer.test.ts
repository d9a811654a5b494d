/**
 * CLIP tokenizer: every case of `tokenizer_cases.json` (transformers' slow CLIPTokenizer without
 * ftfy) must match exactly (ids, tokens and untruncated length), in every PARITY_FIXTURES folder.
 * The remaining tests check call()/tokenUsage() behaviour against encode(), and the error messages.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ClipTokenizer, preTokenize } from '../../src-main/engine/models/clipTokenizer.ts';
import { FIXTURES, parityFolders, skipNote } from '../helpers/fixtures.ts';

interface TokenizerCase {
  text: string;
  input_ids: number[];
  tokens: string[];
  num_ids_untruncated: number;
  truncated: boolean;
}

interface TokenizerCases {
  bos_token_id: number;
  eos_token_id: number;
  pad_token_id: number;
  unk_token_id: number;
  vocab_size: number;
  model_max_length: number;
  cases: TokenizerCase[];
}

for (const folder of parityFolders()) {
  const casesPath = join(folder, 'tokenizer_cases.json');
  describe(`CLIP tokenizer cases: ${folder}`, () => {
    if (!existsSync(casesPath)) {
      it.skip(skipNote(folder, 'tokenizer_cases.json'), () => {});
      return;
    }
    const ref = JSON.parse(readFileSync(casesPath, 'utf8')) as TokenizerCases;
    let tokenizer: ClipTokenizer;
    beforeAll(async () => {
      tokenizer = await ClipTokenizer.load(join(folder, 'model', 'tokenizer'));
    });

    it('reads the special tokens, vocabulary size and model_max_length', () => {
      expect(tokenizer.bosTokenId).toBe(ref.bos_token_id);
      expect(tokenizer.eosTokenId).toBe(ref.eos_token_id);
      expect(tokenizer.padTokenId).toBe(ref.pad_token_id);
      expect(tokenizer.unkTokenId).toBe(ref.unk_token_id);
      expect(tokenizer.vocabSize).toBe(ref.vocab_size);
      expect(tokenizer.modelMaxLength).toBe(ref.model_max_length);
    });

    it('has cases', () => {
      expect(ref.cases.length).toBeGreaterThan(0);
    });

    for (const [i, c] of ref.cases.entries()) {
      it(`case ${i}: ${JSON.stringify(c.text).slice(0, 60)}`, () => {
        // The defaults are the reference call: padding='max_length', max_length=77, truncation=True.
        expect(tokenizer.call(c.text)).toEqual(c.input_ids);
        expect([tokenizer.bosToken, ...tokenizer.tokenize(c.text), tokenizer.eosToken]).toEqual(c.tokens);
        expect(tokenizer.encode(c.text).length + 2).toBe(c.num_ids_untruncated);
        expect(tokenizer.tokenUsage(c.text, c.input_ids.length).truncated).toBe(c.truncated);
      });
    }

    it('tokenizes a batch row by row', () => {
      const texts = ref.cases.map((c) => c.text);
      expect(tokenizer.call(texts)).toEqual(ref.cases.map((c) => c.input_ids));
    });
  });
}

describe('CLIP tokenizer behaviour (tiny-a tokenizer files)', () => {
  let tokenizer: ClipTokenizer;
  beforeAll(async () => {
    tokenizer = await ClipTokenizer.load(join(FIXTURES, 'tiny-a', 'model', 'tokenizer'));
  });
  const long = Array.from({ length: 40 }, () => 'a photo of a dog,').join(' ');

  it('call() = <|startoftext|> + encode() + <|endoftext|>, padded with the pad token', () => {
    const text = 'a photo of sks dog';
    const ids = tokenizer.encode(text);
    const row = tokenizer.call(text, { maxLength: 20 });
    expect(row).toEqual([
      tokenizer.bosTokenId,
      ...ids,
      tokenizer.eosTokenId,
      ...Array(18 - ids.length).fill(tokenizer.padTokenId),
    ]);
  });

  it('truncation keeps the first maxLength - 2 ids and ends in <|endoftext|>', () => {
    const ids = tokenizer.encode(long);
    expect(ids.length).toBeGreaterThan(75);
    const row = tokenizer.call(long);
    expect(row).toHaveLength(77);
    expect(row).toEqual([tokenizer.bosTokenId, ...ids.slice(0, 75), tokenizer.eosTokenId]);
    expect(tokenizer.call(long, { truncation: false })).toEqual([tokenizer.bosTokenId, ...ids, tokenizer.eosTokenId]);
  });

  it("padding 'longest' pads to the longest row; false does not pad", () => {
    const rows = tokenizer.call(['a dog', 'a photo of a dog on the moon'], { padding: 'longest' });
    expect(rows[0]).toHaveLength(rows[1].length);
    expect(tokenizer.call(['a dog'], { padding: false })[0]).toHaveLength(tokenizer.encode('a dog').length + 2);
  });

  it('special tokens written in the text stay whole', () => {
    expect(tokenizer.encode('a dog<|endoftext|>a cat')).toEqual([
      ...tokenizer.encode('a dog'),
      tokenizer.eosTokenId,
      ...tokenizer.encode('a cat'),
    ]);
    expect(tokenizer.tokenize('<|startoftext|>')).toEqual([tokenizer.bosToken]);
  });

  it('tokenUsage counts the prompt tokens against the 75 usable ones', () => {
    expect(tokenizer.tokenUsage('a photo of sks dog')).toEqual({
      used: tokenizer.encode('a photo of sks dog').length,
      limit: 75,
      truncated: false,
    });
    const usage = tokenizer.tokenUsage(long);
    expect(usage.used).toBe(tokenizer.encode(long).length);
    expect(usage.truncated).toBe(true);
  });

  it('U+0345 separates words the way Python regex (IGNORECASE) skips it', () => {
    expect(preTokenize('ab\u0345cd')).toEqual(preTokenize('ab cd'));
  });

  it('rejects a maxLength without room for the two special tokens', () => {
    expect(() => tokenizer.call('a', { maxLength: 1 })).toThrow(/maxLength must be an integer >= 2/);
  });

  it('names the missing file when a folder is not a tokenizer', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cliptok-'));
    try {
      await expect(ClipTokenizer.load(dir)).rejects.toThrow(/vocab\.json/);
      await writeFile(
        join(dir, 'vocab.json'),
        readFileSync(join(FIXTURES, 'tiny-a', 'model', 'tokenizer', 'vocab.json')),
      );
      await expect(ClipTokenizer.load(dir)).rejects.toThrow(/merges\.txt/);
      await writeFile(join(dir, 'merges.txt'), '#version: 0.2\ni n\nthree parts here\n');
      await expect(ClipTokenizer.load(dir)).rejects.toThrow(/merges\.txt: line 3/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
