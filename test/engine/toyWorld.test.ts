/**
 * The toy world's data (issue 26): the base world never shows a two-colour object, so every
 * subject (a two-colour ball, square or triangle) is a concept the base model has not seen.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { TOY_CONFIG } from '../../scripts/build-toy-model.ts';
import { toyBackgroundCaption } from '../../src-main/engine/eval/toyFidelity.ts';
import { encodeImage } from '../../src-main/engine/image/sharp.ts';
import { loadDataset } from '../../src-main/engine/train/dataset.ts';
import {
  DEMO_SUBJECT,
  drawScene,
  OBJECT_COLOURS,
  OTHER_SUBJECTS,
  PALETTE,
  subjectScenes,
  type ToyImage,
  toyDataset,
} from '../../src-main/engine/toy/toyWorld.ts';

/** The palette colours that some pixel of `img` has exactly (edges are blends and match none). */
function paletteColours(img: ToyImage): string[] {
  const found = new Set<string>();
  for (let i = 0; i < img.data.length; i += 3)
    for (const [name, c] of Object.entries(PALETTE))
      if (img.data[i] === c[0] && img.data[i + 1] === c[1] && img.data[i + 2] === c[2]) found.add(name);
  return [...found].sort();
}

describe('the toy world', () => {
  const set = toyDataset(TOY_CONFIG.images, TOY_CONFIG.seed);

  it("the build's training set never shows a two-colour object", () => {
    for (const ex of set) {
      expect(ex.scene.pattern).toBeUndefined();
      expect(paletteColours(ex.image)).toEqual([ex.scene.colour, ex.scene.background].sort());
    }
  });

  it('its captions name one object colour and a shape, never a subject token', () => {
    const grammar = /^(a photo of a (red|green|blue|yellow) (ball|square|triangle)( on a \w+ background)?)?$/;
    for (const ex of set) expect(ex.caption).toMatch(grammar);
    const share = (p: (c: string) => boolean) => set.filter((e) => p(e.caption)).length / set.length;
    expect(share((c) => c === '')).toBeGreaterThan(0.05); // the unconditional caption guidance needs
    expect(share((c) => c.endsWith('background'))).toBeGreaterThan(0.7);
  });

  it('every subject is two object colours on one shape, photographed on backgrounds of neither colour', () => {
    for (const subject of [DEMO_SUBJECT, ...Object.values(OTHER_SUBJECTS)]) {
      const [top, bottom] = subject.pattern;
      expect(top).not.toBe(bottom);
      expect(OBJECT_COLOURS).toContain(top);
      expect(OBJECT_COLOURS).toContain(bottom);
      for (const scene of subjectScenes(6, 17, subject)) {
        expect(scene.kind).toBe(subject.kind);
        expect(subject.pattern).not.toContain(scene.background);
        expect(paletteColours(drawScene(scene))).toEqual([top, bottom, scene.background].sort());
      }
    }
    const kinds = new Set([DEMO_SUBJECT, ...Object.values(OTHER_SUBJECTS)].map((s) => s.kind));
    expect(kinds.size, 'the subjects cover every shape').toBe(3);
  });
});

/** Whether the pixels that are not exactly `bg` form one 4-connected region. */
function oneForeground(img: ToyImage, bg: readonly number[]): boolean {
  const n = img.width * img.height;
  const fg = (i: number) => img.data[3 * i] !== bg[0] || img.data[3 * i + 1] !== bg[1] || img.data[3 * i + 2] !== bg[2];
  const all = Array.from({ length: n }, (_, i) => i).filter(fg);
  const seen = new Set([all[0]]);
  const queue = [all[0]];
  while (queue.length > 0) {
    const i = queue.pop() as number;
    const [x, y] = [i % img.width, Math.floor(i / img.width)];
    const next = [x > 0 ? i - 1 : -1, x < img.width - 1 ? i + 1 : -1, y > 0 ? i - img.width : -1, i + img.width];
    for (const j of next)
      if (j >= 0 && j < n && !seen.has(j) && fg(j)) {
        seen.add(j);
        queue.push(j);
      }
  }
  return seen.size === all.length;
}

describe("the build's stage 4 set (compositions)", () => {
  const share = TOY_CONFIG.compose.compositions;
  const set = toyDataset(TOY_CONFIG.images, TOY_CONFIG.seed + 300, TOY_CONFIG.imageSize, share);
  const compositions = set.filter((e) => e.scene.under);

  it('holds the configured share of compositions (within 4 binomial standard deviations)', () => {
    const sd = Math.sqrt((share * (1 - share)) / set.length);
    expect(Math.abs(compositions.length / set.length - share)).toBeLessThan(4 * sd);
  });

  it('every object is one colour: a composition shows exactly its two object colours and its background', () => {
    for (const ex of set) {
      expect(ex.scene.pattern).toBeUndefined();
      const colours = [ex.scene.colour, ...(ex.scene.under ? [ex.scene.under.colour] : []), ex.scene.background];
      expect(new Set(colours).size).toBe(colours.length);
      expect(paletteColours(ex.image)).toEqual(colours.sort());
    }
  });

  it("a composition's two objects stand together, one above the other, and its caption says so", () => {
    const grammar =
      /^(a photo of a (red|green|blue|yellow) (ball|square|triangle) above a (red|green|blue|yellow) (ball|square|triangle)( on a \w+ background)?)?$/;
    for (const ex of compositions) {
      const under = ex.scene.under as NonNullable<typeof ex.scene.under>;
      expect(under.cy).toBeGreaterThan(ex.scene.cy);
      expect(oneForeground(ex.image, PALETTE[ex.scene.background])).toBe(true);
      expect(ex.caption).toMatch(grammar);
      if (ex.caption) expect(ex.caption).toContain(`a ${ex.scene.colour} ${ex.scene.kind} above a ${under.colour}`);
    }
  });
});

describe('captionBackground (the toy model default)', () => {
  it('captions each photo with the background read off it; a caption .txt still wins', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'toy-captions-'));
    const scenes = subjectScenes(6, 17, OTHER_SUBJECTS['zwx-square']);
    for (const [k, scene] of scenes.entries())
      writeFileSync(join(dir, `p${k}.png`), await encodeImage(drawScene(scene), 'png'));
    writeFileSync(join(dir, 'p5.txt'), 'a photo of zwx square');
    const ds = await loadDataset(dir, {
      resolution: 64,
      crop: 'center',
      flip: false,
      instancePrompt: 'a photo of zwx square',
      contextCaption: toyBackgroundCaption,
    });
    const captions = ds.images.map((i) => i.caption);
    expect(captions).toEqual([
      ...scenes.slice(0, 5).map((s) => `a photo of zwx square on a ${s.background} background`),
      'a photo of zwx square',
    ]);
    expect(new Set(captions.slice(0, 3)).size, 'three backgrounds read').toBe(3);
  });
});
