// Issue 18 points 1, 2, 4, 10, 11: every command's bad arguments give one line naming the option
// and what it expects, exit status 2, no stack trace, with and without --json, before any model
// loads, and before anything on disk is touched.
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeSubjectPhotos } from '../../scripts/make-tiny-model.ts';
import { runCli, STACK, type CliResult } from './run.ts';
import { tempDir } from '../helpers/tempDir.ts';

const tmp = tempDir('singlora-cli');
const FILE = join(tmp, 'a-file.txt');
const EMPTY = join(tmp, 'empty');
const PHOTOS = join(tmp, 'photos');
const RUN = join(tmp, 'existing-run');
const FOREIGN = join(tmp, 'users-folder');
const DEMO = join(tmp, 'earlier-demo');
const MISSING = join(tmp, 'missing');
const NOT_IMAGES = join(tmp, 'not-images');

beforeAll(async () => {
  writeFileSync(FILE, 'not a model\n');
  mkdirSync(EMPTY);
  mkdirSync(RUN);
  writeFileSync(join(RUN, 'run.json'), '{}');
  mkdirSync(FOREIGN);
  writeFileSync(join(FOREIGN, 'thesis.txt'), 'keep me');
  mkdirSync(join(DEMO, 'run/checkpoints'), { recursive: true });
  writeFileSync(join(DEMO, '.singlora-demo'), '');
  writeFileSync(join(DEMO, 'run/checkpoints/keep'), 'an earlier demo run');
  await makeSubjectPhotos(PHOTOS);
  mkdirSync(NOT_IMAGES);
  for (const n of ['a.png', 'b.jpg']) writeFileSync(join(NOT_IMAGES, n), 'not an image\n');
});

/** [command line, what the one-line message must say]. All exit with status 2. */
const USAGE: Array<[string[], RegExp]> = [
  // train
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--steps', 'abc'],
    /'--steps <n>' argument 'abc' is invalid\. expected an integer from 1 to 100000/,
  ],
  [['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--steps', 'NaN'], /--steps.*expected an integer/],
  [['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--steps', '-5'], /--steps.*expected an integer/],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--steps', '0'],
    /--steps.*expected an integer from 1/,
  ],
  [['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--steps', '1.5'], /--steps.*expected an integer/],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--lr', 'abc'],
    /--lr <lr>' argument 'abc' is invalid\. expected a number > 0/,
  ],
  [['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--lr', '0'], /--lr.*expected a number > 0/],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--seed', 'abc'],
    /--seed.*expected an integer from 0 to 9007199254740991 \(2\^53 - 1\)/,
  ],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--seed', '9007199254740992'],
    /--seed.*expected an integer from 0 to 9007199254740991 \(2\^53 - 1\)/,
  ],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--rank', '0'],
    /--rank.*expected an integer from 1 to 256/,
  ],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--method', 'foo'],
    /--method <m>' argument 'foo' is invalid\. Allowed choices are singlora, lora/,
  ],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--resolution', '100'],
    /--resolution <px>' argument '100' is invalid\. expected a multiple of 64 from 64 to 2048/,
  ],
  [['train', '--base', EMPTY, '--images', PHOTOS], /required option '--out <run dir>' not specified/],
  [['train', '--images', PHOTOS, '--out', MISSING], /required option '--base <model>' not specified/],
  [['train', '--base', EMPTY, '--out', MISSING], /required option '--images <dir>' not specified/],
  [['train', '--base', MISSING, '--images', PHOTOS, '--out', join(tmp, 'new-run')], /--base: .* does not exist/],
  [['train', '--base', EMPTY, '--images', FILE, '--out', MISSING], /--images: .* is a file; expected a folder/],
  [['train', '--base', EMPTY, '--images', EMPTY, '--out', MISSING], /--images: no images in/],
  [['train', '--base', EMPTY, '--images', PHOTOS, '--out', FILE], /--out: .* is a file; expected a folder/],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', RUN],
    /already holds a run; add --resume to continue it .*or choose a new --out/,
  ],
  [['train', '--out', EMPTY, '--resume'], /--resume: .* has no run\.json/],
  // photos no one can read: refused before the model loads (issue 27 item 34; EMPTY is no model)
  [
    ['train', '--base', EMPTY, '--images', NOT_IMAGES, '--out', MISSING],
    /--images: no usable subject photos in .*not-images \(a\.png: not a readable image.*; b\.jpg: not a readable image/,
  ],
  // generate
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--width', 'big'],
    /--width <px>' argument 'big' is invalid\. expected a multiple of 8 from 8 to 2048/,
  ],
  [['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--width', '100'], /--width.*multiple of 8/],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--steps', '0'],
    /--steps.*expected an integer from 1 to 200/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--guidance', 'abc'],
    /--guidance.*expected a number >= 0 and <= 50/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--count', '0'],
    /--count.*expected an integer from 1 to 100/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--seed', '-2'],
    /--seed.*expected an integer from -1 to 9007199254740991/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--adapter', `${FILE}:-5`],
    /--adapter .* strength -5 is out of range: expected a number from -4 to 4/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--adapter', `${FILE}:4.5`],
    /strength 4\.5 is out of range: expected a number from -4 to 4/,
  ],
  // an unknown command: the nearest one, and the help that lists them all
  [['genrate', '--base', EMPTY], /unknown command 'genrate' \(Did you mean generate\?\)/],
  [['bench', 'trian'], /unknown command 'trian' \(Did you mean train\?\)/],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--scheduler', 'foo'],
    /--scheduler <name>' argument 'foo' is invalid\. Allowed choices are/,
  ],
  [['generate', '--base', EMPTY, '--out', MISSING], /required option '--prompt <text>' not specified/],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--adapter', 'x:abc'],
    /'abc' is not a strength: expected file\[:number\]/,
  ],
  [
    ['generate', '--base', EMPTY, '--prompt', 'x', '--out', MISSING, '--adapter', `${MISSING}.safetensors:0.5`],
    /the adapter file .* does not exist/,
  ],
  [['generate', '--base', MISSING, '--prompt', 'x', '--out', EMPTY], /--base: .* does not exist/],
  [['generate', '--base', EMPTY, '--prompt', 'x', '--out', FILE], /--out: .* is a file/],
  [
    ['generate', '--base', FILE, '--prompt', 'x', '--out', EMPTY, '--config-dir', FILE],
    /--config-dir: .* is a file; expected a folder/,
  ],
  // demo
  [['demo', '--out', DEMO, '--steps', 'abc'], /--steps <n>' argument 'abc' is invalid\. expected an integer from 2/],
  [['demo', '--out', DEMO, '--steps', '1'], /--steps.*expected an integer from 2/],
  [['demo', '--out', FILE], /--out: .* is a file/],
  [['demo', '--out', FOREIGN], /is not empty and was not made by the demo; choose a new folder, or add --force/],
  [['demo', '--out', DEMO, '--photos', FILE], /--photos: .* is a file; expected a folder/],
  [
    ['demo', '--out', DEMO, '--photos', NOT_IMAGES],
    /--photos: no usable subject photos in .*a\.png: not a readable image/,
  ],
  [['demo', '--out', DEMO, '--base', MISSING], /--base: .* does not exist/],
  // export / inspect
  [['export', '--adapter', FILE, '--out', join(tmp, 'x.safetensors')], /required option '--format <f>' not specified/],
  [
    ['export', '--adapter', FILE, '--format', 'foo', '--out', join(tmp, 'x.safetensors')],
    /--format <f>' argument 'foo' is invalid\. Allowed choices are singlora, kohya/,
  ],
  [
    ['export', '--adapter', EMPTY, '--format', 'kohya', '--out', join(tmp, 'x.safetensors')],
    /--adapter: .* is a folder; expected an adapter/,
  ],
  [
    ['export', '--adapter', FILE, '--format', 'kohya', '--out', EMPTY],
    /--out: .* is a folder; expected the output file's path/,
  ],
  [
    ['export', '--adapter', FILE, '--format', 'merged', '--out', join(tmp, 'm.safetensors')],
    /--base <model> is required by --format merged/,
  ],
  [['inspect', EMPTY], /is a folder; expected an adapter \.safetensors file/],
  [['inspect', MISSING], /does not exist/],
  // eval
  [['eval', '--run', RUN, '--images-per-prompt', '0'], /--images-per-prompt.*expected an integer from 1 to 16/],
  [['eval', '--run', RUN, '--steps', 'abc'], /--steps.*expected an integer/],
  [['eval', '--run', RUN, '--checkpoints', 'foo'], /Allowed choices are all, latest/],
  [['eval', '--run', RUN, '--subject', 'cat'], /Allowed choices are object, live/],
  [['eval', '--run', FILE], /--run: .* is a file; expected a folder/],
  [['eval', '--run', EMPTY], /--run: .* has no run\.json/],
  [['eval', '--photos', PHOTOS], /eval needs --photos <dir> and --generated <dir>, or --run <dir>/],
  [['eval', '--photos', PHOTOS, '--generated', FILE], /--generated: .* is a file/],
  [['eval', '--photos', PHOTOS, '--generated', PHOTOS, '--batch-size', 'abc'], /--batch-size.*expected an integer/],
  // bench
  [['bench', 'unet', '--batch', 'abc'], /--batch.*expected an integer from 1 to 64/],
  [['bench', 'unet', '--sizes', '3x'], /--sizes.*expected latent sizes like/],
  [['bench', 'unet'], /required option '--config <path>' not specified/],
  [['bench', 'generate', '--base', EMPTY, '--steps', 'abc'], /--steps.*expected an integer/],
  [['bench', 'train', '--base', EMPTY, '--resolution', '64', '--steps', 'abc'], /--steps.*expected an integer >= 1/],
  [['bench', 'train', '--base', EMPTY, '--resolution', '64', '--method', 'foo'], /Allowed choices are singlora, lora/],
  [['bench', 'train', '--base', EMPTY], /required option '--resolution <px>' not specified/],
  // serve, models, projects, doctor, the program
  [['serve', '--port', 'abc'], /--port <n>' argument 'abc' is invalid\. expected an integer from 0 to 65535/],
  [['serve', '--port', '70000'], /--port.*expected an integer from 0 to 65535/],
  [['serve', '--data-dir', FILE], /--data-dir: .* is a file/],
  [
    ['serve', '--queue', 'localhost:6379'],
    /--queue <url>' argument 'localhost:6379' is invalid\. expected a Redis URL/,
  ],
  [['worker', '--queue', 'http://h:6379', '--data-dir', EMPTY], /--queue <url>.*expected a Redis URL/],
  [['worker', '--data-dir', EMPTY], /--queue: give the Redis queue \(redis:\/\/host:port\), or set SINGLORA_QUEUE/],
  [['worker', '--queue', 'redis://127.0.0.1:1', '--data-dir', FILE], /--data-dir: .* is a file/],
  [
    ['worker', '--queue', 'redis://127.0.0.1:1', '--data-dir', EMPTY, '--provider', 'tpu'],
    /--provider <name>' argument 'tpu' is invalid\. Allowed choices are auto/,
  ],
  [['models', 'download', 'nope'], /'nope' is invalid for argument 'name'\. Allowed choices are dino, clip/],
  [['models', 'list', '--models-dir', FILE], /--models-dir: .* is a file/],
  [['projects', 'list', '--backend', 'cpu'], /unknown option '--backend'/],
  [['projects', 'delete', 'someone', '--data-dir', EMPTY], /add --yes to confirm/],
  [['doctor', '--backend', 'foo'], /--backend <name>' argument 'foo' is invalid\. Allowed choices are auto/],
  [['nope'], /unknown command 'nope'/],
  [
    ['train', '--base', EMPTY, '--images', PHOTOS, '--out', MISSING, '--config-dirx', EMPTY],
    /unknown option '--config-dirx'/,
  ],
];

function expectOneLineError(r: CliResult, message: RegExp, exitCode: number): void {
  expect(r.code, `exit status; stderr: ${r.stderr}`).toBe(exitCode);
  expect(r.stdout).toBe('');
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^error: /);
  expect(lines[0]).toMatch(message);
  expect(r.stderr).not.toMatch(STACK);
}

function expectJsonError(r: CliResult, message: RegExp, exitCode: number): void {
  expect(r.code, `exit status; stdout: ${r.stdout} stderr: ${r.stderr}`).toBe(exitCode);
  expect(r.stderr).toBe('');
  const lines = r.stdout.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  const e = JSON.parse(lines[0]) as { error: string; exitCode: number };
  expect(e.error).toMatch(message);
  expect(e.exitCode).toBe(exitCode);
}

describe.concurrent('bad arguments: one line, exit 2, no stack trace', () => {
  for (const [args, message] of USAGE) {
    it(args.map((a) => a.replace(tmp, '<tmp>')).join(' '), async () => {
      const text = await runCli(args);
      const json = await runCli([...args, '--json']);
      expectOneLineError(text, message, 2);
      expectJsonError(json, message, 2);
    });
  }
});

describe('an unknown command', () => {
  it('names the nearest command and the help that lists them all (issue 27 item 33)', async () => {
    const top = await runCli(['genrate', '--prompt', 'x']);
    expect(top.code).toBe(2);
    expect(top.stderr).toBe("error: unknown command 'genrate' (Did you mean generate?) (see singlora --help)\n");
    const sub = await runCli(['bench', 'trian']);
    expect(sub.stderr).toBe("error: unknown command 'trian' (Did you mean train?) (see singlora bench --help)\n");
  });
});

describe('nothing is touched before the options are checked (point 1)', () => {
  it('demo --steps abc keeps an earlier demo run; a foreign --out keeps its files', async () => {
    await runCli(['demo', '--out', DEMO, '--steps', 'abc']);
    expect(existsSync(join(DEMO, 'run/checkpoints/keep'))).toBe(true);
    await runCli(['demo', '--out', FOREIGN]);
    expect(readdirSync(FOREIGN)).toEqual(['thesis.txt']);
  });

  it('a refused train leaves no run folder', async () => {
    const out = join(tmp, 'never-made');
    await runCli(['train', '--base', MISSING, '--images', PHOTOS, '--out', out]);
    await runCli(['train', '--base', EMPTY, '--images', EMPTY, '--out', out]);
    expect(existsSync(out)).toBe(false);
  });
});

describe('failures that happen while running (point 10)', () => {
  it('a base model that cannot load: exit 1, a plain message, no empty run folder left behind', async () => {
    const out = join(tmp, 'bad-base-run');
    const r = await runCli(['train', '--base', EMPTY, '--images', PHOTOS, '--out', out, '--backend', 'cpu']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: /m);
    expect(r.stderr).not.toMatch(STACK);
    expect(existsSync(out)).toBe(false);
  });

  it('a failed model download leaves no empty model folder and names no missing .part file', async () => {
    const modelsDir = join(tmp, 'models');
    const r = await runCli([
      'models',
      'download',
      'dino',
      '--url',
      'http://127.0.0.1:9/model.onnx',
      '--models-dir',
      modelsDir,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: download http:\/\/127\.0\.0\.1:9\/model\.onnx: .*nothing was downloaded/);
    expect(r.stderr).not.toMatch(/\.part/);
    expect(r.stderr).not.toMatch(STACK);
    expect(existsSync(join(modelsDir, 'dino'))).toBe(false);
  });

  it('--debug adds the stack trace; without it there is none', async () => {
    const plain = await runCli(['inspect', FILE]);
    expect(plain.code).toBe(1);
    expect(plain.stderr.trimEnd().split('\n')).toHaveLength(1);
    const debug = await runCli(['inspect', FILE, '--debug']);
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/^\s+at /m);
  });
});
