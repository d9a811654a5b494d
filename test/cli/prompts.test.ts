// Issue 18 point 9: prompts as A1111 reads them (engine/pipeline/prompts.ts). Before, a prompt
// over 75 tokens was cut silently (pixel-identical images) and (word:1.2) was read as text.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { ClipTokenizer } from '../../src-main/engine/models/clipTokenizer.ts';
import {
  encodeWeightedPrompts,
  parsePromptAttention,
  promptChunks,
  promptWarnings,
  type ChunkTokenizer,
} from '../../src-main/engine/pipeline/prompts.ts';
import { makeTinyModel } from '../../scripts/make-tiny-model.ts';

/** A tokenizer with one id per word (ids from 10), ',' = 5; BOS 1, EOS 2, pad 3. */
const words: ChunkTokenizer = {
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 3,
  modelMaxLength: 77,
  encode: (text) =>
    text
      .split(/(,)|\s+/)
      .filter((w) => w)
      .map((w) => (w === ',' ? 5 : 10 + Number(w.replace(/\D/g, '') || 0))),
};

/** One test per case: parsePromptAttention gives its texts, and its weights to 10 decimals. */
function attentionTests(cases: Array<[string, Array<[string, number]>]>): void {
  for (const [text, want] of cases) {
    it(JSON.stringify(text), () => {
      const got = parsePromptAttention(text);
      expect(got.map((p) => p[0])).toEqual(want.map((p) => p[0]));
      got.forEach((p, i) => expect(p[1]).toBeCloseTo(want[i][1], 10));
    });
  }
}

describe('parsePromptAttention (A1111 prompt_parser.py docstring cases)', () => {
  const cases: Array<[string, Array<[string, number]>]> = [
    ['normal text', [['normal text', 1]]],
    [
      'an (important) word',
      [
        ['an ', 1],
        ['important', 1.1],
        [' word', 1],
      ],
    ],
    ['(unbalanced', [['unbalanced', 1.1]]],
    ['\\(literal\\]', [['(literal]', 1]]],
    ['(unnecessary)(parens)', [['unnecessaryparens', 1.1]]],
    [
      'a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).',
      [
        ['a ', 1],
        ['house', 1.573],
        [' ', 1.1],
        ['on', 1],
        [' a ', 1.1],
        ['hill', 0.55],
        [', sun, ', 1.1],
        ['sky', 1.4641],
        ['.', 1.1],
      ],
    ],
    ['[faint]', [['faint', 1 / 1.1]]],
    [
      'a BREAK b',
      [
        ['a', 1],
        ['BREAK', -1],
        ['b', 1],
      ],
    ],
    ['', [['', 1]]],
  ];
  attentionTests(cases);
});

describe("parsePromptAttention reads characters as Python's Unicode-aware re does (issue 27 item 37)", () => {
  // Expected values worked out from Python's definitions (A1111's patterns run on str):
  // \b needs a non-word character (str.isalnum() or '_' is a word character, in any script),
  // \d is any decimal digit and float() reads it, \s is str.isspace().
  const cases: Array<[string, Array<[string, number]>]> = [
    // é and 猫/犬 are word characters: no boundary, no BREAK
    ['caféBREAK dog', [['caféBREAK dog', 1]]],
    ['猫BREAK犬', [['猫BREAK犬', 1]]],
    ['ΣBREAK', [['ΣBREAK', 1]]],
    // a combining mark (Mn) is not a word character in Python: the boundary is there
    [
      'e\u0301BREAK b',
      [
        ['e\u0301', 1],
        ['BREAK', -1],
        ['b', 1],
      ],
    ],
    // ideographic space, NBSP and \x1c are whitespace to Python: eaten around BREAK
    [
      'a\u3000BREAK\u00a0b',
      [
        ['a', 1],
        ['BREAK', -1],
        ['b', 1],
      ],
    ],
    [
      'a\x1cBREAK\x85b',
      [
        ['a', 1],
        ['BREAK', -1],
        ['b', 1],
      ],
    ],
    // U+FEFF is whitespace to JavaScript, not to Python: it stays, and is not a word character
    [
      'a\ufeffBREAK b',
      [
        ['a\ufeff', 1],
        ['BREAK', -1],
        ['b', 1],
      ],
    ],
    // fullwidth and Arabic-Indic digits are \d; float() reads them
    ['(cat:１.５)', [['cat', 1.5]]],
    ['(cat:٢)', [['cat', 2]]],
    ['(cat:\u3000０.５\u3000)', [['cat', 0.5]]],
  ];
  attentionTests(cases);
});

describe('promptChunks', () => {
  it('cuts 100 tokens into two 77-id chunks, each with start and end tokens, weights 1 on specials', () => {
    const text = Array.from({ length: 100 }, (_, i) => `w${i}`).join(' ');
    const chunks = promptChunks(words, text);
    expect(chunks).toHaveLength(2);
    for (const c of chunks) {
      expect(c.ids).toHaveLength(77);
      expect(c.weights).toHaveLength(77);
      expect(c.ids[0]).toBe(1);
    }
    expect(chunks[0].ids[76]).toBe(2); // a full chunk: 75 tokens then the end token
    expect(chunks[0].ids.slice(1, 76)).toEqual(Array.from({ length: 75 }, (_, i) => 10 + i));
    expect(chunks[1].ids.slice(1, 26)).toEqual(Array.from({ length: 25 }, (_, i) => 85 + i));
    expect(chunks[1].ids[26]).toBe(2);
    expect(chunks[1].ids.slice(27)).toEqual(Array(50).fill(3));
  });

  it('moves the words after a comma in the last 20 tokens to the next chunk (comma_padding_backtrack)', () => {
    const text = `${Array.from({ length: 70 }, (_, i) => `w${i}`).join(' ')} , ${Array.from({ length: 10 }, (_, i) => `w${100 + i}`).join(' ')}`;
    const chunks = promptChunks(words, text);
    expect(chunks).toHaveLength(2);
    expect(chunks[0].ids[71]).toBe(5); // the comma ends the first chunk
    expect(chunks[0].ids[72]).toBe(2);
    expect(chunks[1].ids.slice(1, 11)).toEqual(Array.from({ length: 10 }, (_, i) => 110 + i));
  });

  it('BREAK starts a new chunk; weights follow the emphasis', () => {
    const chunks = promptChunks(words, 'w1 (w2:1.5) BREAK [w3]');
    expect(chunks).toHaveLength(2);
    expect(chunks[0].ids.slice(0, 4)).toEqual([1, 11, 12, 2]);
    expect(chunks[0].weights.slice(0, 4)).toEqual([1, 1, 1.5, 1]);
    expect(chunks[1].weights[1]).toBeCloseTo(1 / 1.1, 12);
  });

  it('a short plain prompt gives exactly the tokenizer ids (the old single-chunk path)', async () => {
    const tok = await ClipTokenizer.load(join(await makeTinyModel(), 'tokenizer'));
    for (const p of ['a photo of sks dog', '', 'a painting, in the style of van gogh']) {
      const [c, ...rest] = promptChunks(tok, p);
      expect(rest).toHaveLength(0);
      expect(c.ids).toEqual(tok.call(p));
    }
  });
});

describe('encodeWeightedPrompts', () => {
  // A stand-in text encoder: the embedding of id i at position p is [i, p + 1].
  const encode = (ids: number[][]) =>
    tf.tensor3d(
      ids.flatMap((row) => row.flatMap((id, p) => [id, p + 1])),
      [ids.length, 77, 2],
    );

  it('concatenates chunks along the sequence axis and pads the shorter prompt with empty chunks', async () => {
    const long = Array.from({ length: 100 }, (_, i) => `w${i}`).join(' ');
    const z = await encodeWeightedPrompts(words, encode, ['', long]);
    expect(z.shape).toEqual([2, 154, 2]);
    const v = (await z.array()) as number[][][];
    expect(v[1][77][0]).toBe(1); // chunk 2 of the prompt starts with the start token
    expect(v[1][78][0]).toBe(85);
    expect(v[0][77][0]).toBe(1); // the negative's padding chunk is the empty prompt's
    expect(v[0][78][0]).toBe(2);
    expect(v[0][79][0]).toBe(3);
    z.dispose();
  });

  it('weights token embeddings, then restores the chunk mean (A1111 "Original" emphasis)', async () => {
    const plain = await encodeWeightedPrompts(words, encode, ['w1 w2']);
    const weighted = await encodeWeightedPrompts(words, encode, ['w1 (w2:2)']);
    const [p, w] = [(await plain.array()) as number[][][], (await weighted.array()) as number[][][]];
    const mean = (x: number[][][]) => x.flat(2).reduce((a, b) => a + b, 0) / x.flat(2).length;
    expect(mean(w)).toBeCloseTo(mean(p), 4);
    const ratio = w[0][2][0] / w[0][1][0] / (p[0][2][0] / p[0][1][0]);
    expect(ratio).toBeCloseTo(2, 5); // w2 twice as strong relative to w1
    tf.dispose([plain, weighted]);
  });

  it('a short plain prompt is unchanged: [1, 77, hidden]', async () => {
    const z = await encodeWeightedPrompts(words, encode, ['w1 w2']);
    expect(z.shape).toEqual([1, 77, 2]);
    z.dispose();
  });
});

describe('promptWarnings', () => {
  it('says what is not supported, and nothing for plain or weighted prompts', () => {
    expect(promptWarnings('a (photo:1.2) of [sks] dog, BREAK beach')).toEqual([]);
    expect(promptWarnings('a dog <lora:rex:0.8>')[0]).toMatch(/--adapter/);
    expect(promptWarnings('a [cat:dog:0.5]')[0]).toMatch(/prompt editing/);
    expect(promptWarnings('a [cat|dog]')[0]).toMatch(/alternation/);
    // A1111's grammar: editing needs `:when` (a number) at the square bracket's own level
    expect(promptWarnings('a [cat:10]')[0]).toMatch(/prompt editing/);
    expect(promptWarnings('a [[cat:dog:0.3]]')[0]).toMatch(/prompt editing/);
    expect(promptWarnings('[[[(x:2)]]]')).toEqual([]);
    expect(promptWarnings('a [(dog:1.2)] and [cat:dog]')).toEqual([]);
    expect(promptWarnings('[\\:0.5]')).toEqual([]);
    expect(promptWarnings('a (dog')[0]).toMatch(/unclosed/);
  });
});

describe('the tiny model reads past 75 tokens (point 9: before, the cut was silent)', () => {
  it('two prompts that differ only after token 75 give different embeddings, [1, 154, hidden]', async () => {
    const { StableDiffusion } = await import('../../src-main/engine/pipeline/stableDiffusion.ts');
    const { initBackend } = await import('../../src-main/engine/backend/tf.ts');
    await initBackend('cpu');
    const sd = await StableDiffusion.load(await makeTinyModel(), { components: ['textEncoder'] });
    try {
      const head = Array.from({ length: 80 }, () => 'dog').join(' ');
      const [a, b] = [
        await sd.encodePrompts([`${head} on the beach`]),
        await sd.encodePrompts([`${head} in the snow`]),
      ];
      expect(a.shape).toEqual([1, 154, sd.hiddenSize]);
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
      expect(diff).toBeGreaterThan(0);
      tf.dispose([a, b]);
    } finally {
      sd.dispose();
    }
  });
});
