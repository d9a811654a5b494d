// The README's CLI examples, run on the tiny model (models/tiny-sd), scaled down: every command
// line in the README's "The CLI" block runs with its paths pointed at the tiny model and a
// temporary folder, and with fewer steps and images (the SCALE table says exactly what changes).
// Then the checks of issue 18 that need a trained adapter: points 2, 3, 5, 6, 7, 8, 11.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeSubjectPhotos, makeTinyModel, TINY_DINO } from '../../scripts/make-tiny-model.ts';
import { BIN, REPO, runCli as run, runCliClosingStdout, STACK, type CliResult } from './run.ts';
import { tempDir } from '../helpers/tempDir.ts';

/** Model runs: up to 10 minutes each on a busy machine. */
const runCli = (args: readonly string[], opts: { env?: Record<string, string> } = {}) =>
  run(args, { ...opts, timeoutMs: 600_000 });

const tmp = tempDir('singlora-readme');
const TINY_B = join(REPO, 'test/fixtures/tiny-b/model');
let tiny = '';

/** The README's CLI block: one command per entry, continuation lines joined, comments dropped. */
function readmeCommands(): string[] {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const block = /## The CLI[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)![1];
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l.startsWith('singlora '));
}

/** The README's paths, pointed at the tiny model and the temporary folder. */
function localPath(arg: string): string {
  if (arg === '~/sd/stable-diffusion-v1-5') return tiny;
  if (arg === '~/sd/v1-5-pruned-emaonly.safetensors') return join(tmp, 'tiny-single.safetensors'); // made from the tiny model below
  if (/^(photos|runs|images)\b|^rex(-merged)?\.safetensors$/.test(arg))
    return join(tmp, arg.replace(/step-000800/, 'step-000003'));
  return arg;
}

/** A README command line as arguments (double quotes group words), scaled down for the tiny model. */
function scale(line: string): string[] {
  const words = Array.from(line.matchAll(/"([^"]*)"|(\S+)/g), (m) => m[1] ?? m[2])
    .slice(1)
    .map(localPath);
  const more: Record<string, string[]> = {
    train: ['--steps', '3', '--checkpoint-every', '1', '--sample-every', '0'],
    generate: [],
    eval: ['--dino-model', TINY_DINO],
    export: [],
  };
  return [...words, ...(more[words[0]] ?? [])];
}

beforeAll(async () => {
  tiny = await makeTinyModel();
  await makeSubjectPhotos(join(tmp, 'photos/rex'));
});

function ok(r: CliResult, what: string): void {
  expect(r.code, `${what}\nstdout: ${r.stdout.slice(-2000)}\nstderr: ${r.stderr.slice(-2000)}`).toBe(0);
  expect(r.stderr).not.toMatch(STACK);
}

describe('the README CLI examples on the tiny model', () => {
  it('lists the commands the README shows', () => {
    const cmds = readmeCommands();
    expect(cmds.length).toBeGreaterThan(12);
  });

  it('train, resume (extend), eval, generate, export, inspect', { timeout: 1_800_000 }, async () => {
    const lines = readmeCommands();
    const find = (re: RegExp) => lines.find((l) => re.test(l))!;

    // train (line-based progress: stderr is a pipe here, point 8)
    const train = await runCli(scale(find(/^singlora train .*--images/)), { env: { SINGLORA_PROGRESS_SECONDS: '0' } });
    ok(train, 'train');
    expect(train.stderr).toMatch(/^step 1\/3 \(33%\) .*ETA .* loss /m);
    expect(train.stdout).toMatch(/average speed: .* steps\/s/);

    // a single-file checkpoint of the tiny model, for the README's single-file generate line (point 6)
    ok(
      await runCli([
        'export',
        '--adapter',
        join(tmp, 'runs/rex/checkpoints/step-000003/adapter.safetensors'),
        '--format',
        'merged',
        '--base',
        tiny,
        '--out',
        join(tmp, 'tiny-single.safetensors'),
      ]),
      'single file',
    );

    // the same --out without --resume: refused with the two ways forward (point 2)
    const again = await runCli(scale(find(/^singlora train .*--images/)));
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(
      /add --resume to continue it \(--resume --steps N to extend it\), or choose a new --out/,
    );

    // --resume reads base and photos from run.json; on a finished run --steps N extends it (point 2)
    const resumeLine = scale(find(/--resume/));
    const withoutSteps = resumeLine.filter((a, i, all) => a !== '--steps' && all[i - 1] !== '--steps');
    const finished = await runCli(withoutSteps);
    expect(finished.code).toBe(2);
    expect(finished.stderr).toMatch(/already completed 3 steps; add --steps N/);
    const extend = await runCli([...withoutSteps, '--steps', '4']);
    ok(extend, 'resume --steps 4');
    expect(extend.stdout).toMatch(/completed: 4\/4 steps/);

    // eval --run: the plan and the estimate first (point 8); tiny DINO, 1 prompt, 1 image, 2 steps
    const prompts = join(tmp, 'prompts.txt');
    writeFileSync(prompts, 'a photo of sks dog\n');
    const evalRun = await runCli([
      ...scale(find(/^singlora eval --run/)),
      '--prompts',
      prompts,
      '--images-per-prompt',
      '1',
      '--steps',
      '2',
      '--checkpoints',
      'latest',
    ]);
    ok(evalRun, 'eval --run');
    expect(evalRun.stderr).toMatch(
      /^plan: the base model and 1 checkpoint\(s\) x 1 prompts x 1 images = 2 images at 2 steps \(the time it takes follows the second image, from the inference speed measured here\)$/m,
    );
    expect(evalRun.stdout).toMatch(/1 prompts given by the caller/);
    expect(evalRun.stdout).not.toMatch(/prompt set v1/); // point 11

    // generate: model-native size (64 for the tiny model) when --width/--height are left out (point 7)
    const gen = await runCli(
      scale(find(/^singlora generate/)).map((a, i, all) =>
        all[i - 1] === '--count' ? '1' : all[i - 1] === '--steps' ? '2' : a,
      ),
    );
    ok(gen, 'generate (single file with --config-dir, a weighted prompt)');
    expect(gen.stdout).toMatch(/\(seed 42, 64x64\)/);

    const evalFolders = await runCli(scale(find(/^singlora eval --photos/)));
    ok(evalFolders, 'eval --photos --generated');
    expect(JSON.parse(evalFolders.stdout.trim().split('\n').pop()!).dino).toBeTypeOf('number');

    // export and inspect
    for (const line of lines.filter((l) => /^singlora (export|inspect)/.test(l))) {
      const args = scale(line);
      if (args.includes('...'))
        args.splice(args.indexOf('...'), 1, join(tmp, 'runs/rex/checkpoints/step-000003/adapter.safetensors'));
      ok(await runCli(args), line);
    }
    // inspect on a merged checkpoint: not an adapter (point 11)
    const merged = await runCli(['inspect', join(tmp, 'rex-merged.safetensors')]);
    ok(merged, 'inspect merged');
    expect(merged.stdout).toMatch(/not an adapter .*: a model checkpoint with sha256:[0-9a-f]{64} merged in/);
    expect(merged.stdout).not.toMatch(/rank: +0/);
  });

  it('doctor, bench, projects, serve', { timeout: 1_200_000 }, async () => {
    const lines = readmeCommands();
    ok(await runCli(scale(lines.find((l) => l === 'singlora doctor')!)), 'doctor');
    ok(
      await runCli([
        ...scale(lines.find((l) => l.startsWith('singlora bench unet'))!),
        '--config',
        join(tiny, 'unet'),
        '--iters',
        '1',
        '--warmup',
        '0',
      ]),
      'bench unet',
    );
    ok(
      await runCli([
        ...scale(lines.find((l) => l.startsWith('singlora bench generate'))!).map((a, i, all) =>
          all[i - 1] === '--steps' ? '2' : a,
        ),
        '--images',
        '1',
      ]),
      'bench generate',
    );
    ok(
      await runCli([
        ...scale(lines.find((l) => l.startsWith('singlora bench train'))!).map((a, i, all) =>
          all[i - 1] === '--steps' ? '1' : all[i - 1] === '--resolution' ? '64' : a,
        ),
        '--warmup',
        '0',
      ]),
      'bench train',
    );
    ok(
      await runCli([...scale(lines.find((l) => l === 'singlora projects list')!), '--data-dir', join(tmp, 'data')]),
      'projects list',
    );

    // serve: starts, prints its URL, stops on SIGINT
    const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--data-dir', join(tmp, 'data'), '--json'], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const first = await new Promise<string>((resolve) => child.stdout.once('data', (d) => resolve(String(d))));
    expect(JSON.parse(first).url).toMatch(/^http:\/\/127\.0\.0\.1:\d+/);
    // Ctrl-C stops the server: exit 0 (its stop handler is in place before it starts listening).
    const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on('close', (code, signal) => resolve({ code, signal }));
      child.kill('SIGINT');
    });
    expect(ended).toEqual({ code: 0, signal: null });
  });
});

describe('issue 18 checks on trained adapters', () => {
  const runDir = join(tmp, 'runs/adapter-checks');
  const adapter = join(runDir, 'checkpoints/step-000002/adapter.safetensors');

  beforeAll(async () => {
    const r = await runCli([
      'train',
      '--base',
      tiny,
      '--images',
      join(tmp, 'photos/rex'),
      '--out',
      runDir,
      '--steps',
      '2',
      '--checkpoint-every',
      '2',
      '--sample-every',
      '0',
    ]);
    ok(r, 'train for the adapter checks');
  }, 600_000);

  it('an adapter made for another base: warning; a partly usable file is an error unless --allow-partial, which lists every unused tensor with its reason; --strict refuses (point 3, issue 27 item 36)', {
    timeout: 600_000,
  }, async () => {
    const args = [
      'generate',
      '--base',
      TINY_B,
      '--prompt',
      'a photo of sks dog',
      '--steps',
      '1',
      '--seed',
      '1',
      '--adapter',
      adapter,
      '--out',
      join(tmp, 'mismatch'),
      '--allow-partial',
    ];
    const text = await runCli(args);
    ok(text, 'generate with a mismatched adapter');
    expect(text.stderr).toMatch(/warning: adapter\.safetensors was trained on .* not on this base model/);
    const unused = /warning: (\d+) tensor\(s\) of adapter\.safetensors not used:/.exec(text.stderr);
    const applied = /applied (\d+) of (\d+) tensors/.exec(text.stderr)!;
    const partial = Number(applied[1]) < Number(applied[2]);
    if (partial) {
      expect(Number(unused![1])).toBe(Number(applied[2]) - Number(applied[1]));
      expect(text.stderr.split('\n').filter((l) => /^ {2}unet\..*: /.test(l))).toHaveLength(Number(unused![1]));
    }
    const json = await runCli([...args, '--json']);
    ok(json, 'generate --json');
    const event = json.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((e) => e.event === 'adapter');
    expect(event.baseMismatch).toMatch(/was trained on/);
    expect(event.unapplied).toHaveLength(event.totalTensors - event.appliedTensors);
    const whole = await runCli(args.slice(0, -1));
    if (partial) {
      expect(whole.code).toBe(1);
      expect(whole.stderr.trim()).toMatch(
        /^error: adapter\.safetensors: only \d+ of \d+ tensors can be applied \(unet\..*--allow-partial/,
      );
    } else ok(whole, 'generate with an adapter that fits whole');
    const strict = await runCli([...args, '--strict']);
    expect(strict.code).toBe(1);
    expect(strict.stderr.trim()).toMatch(/^error: refused under strict checking: adapter\.safetensors was trained on/);
    // the two --allow-partial runs above (and the plain one when the file fits whole), none from --strict
    expect(readdirSync(join(tmp, 'mismatch')).filter((f) => f.endsWith('.png'))).toHaveLength(partial ? 2 : 3);
  });

  it('export --format merged onto another base warns; --strict refuses and writes nothing (point 3)', {
    timeout: 600_000,
  }, async () => {
    const out = join(tmp, 'mismatch-merged.safetensors');
    const strict = await runCli([
      'export',
      '--adapter',
      adapter,
      '--format',
      'merged',
      '--base',
      TINY_B,
      '--out',
      out,
      '--strict',
    ]);
    expect(strict.code).toBe(1);
    expect(strict.stderr).toMatch(/refused under --strict: .* was trained on/);
    expect(existsSync(out)).toBe(false);
  });

  it('a single-file checkpoint with --config-dir generates; without it the error names --config-dir (point 6)', {
    timeout: 600_000,
  }, async () => {
    const single = join(tmp, 'tiny-single.safetensors');
    ok(
      await runCli(['export', '--adapter', adapter, '--format', 'merged', '--base', tiny, '--out', single, '--force']),
      'merged single file',
    );
    const withDir = await runCli([
      'generate',
      '--base',
      single,
      '--config-dir',
      tiny,
      '--prompt',
      'a photo of sks dog',
      '--steps',
      '1',
      '--seed',
      '3',
      '--out',
      join(tmp, 'single'),
    ]);
    ok(withDir, 'generate --config-dir');
    expect(withDir.stdout).toMatch(/64x64/);
    const without = await runCli([
      'generate',
      '--base',
      single,
      '--prompt',
      'x',
      '--steps',
      '1',
      '--out',
      join(tmp, 'single'),
    ]);
    expect(without.code).toBe(1);
    expect(without.stderr).toMatch(/--config-dir/);
    expect(without.stderr).not.toMatch(/\bconfigDir\b/); // the API name only as "(in code: ...)"
  });

  it('export --out <a folder> is refused and leaves no temp file (point 10)', async () => {
    const dir = join(tmp, 'export-here');
    const r = await runCli(['export', '--adapter', adapter, '--format', 'kohya', '--out', tmp.replace(/$/, '/runs')]);
    expect(r.code).toBe(2);
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(join(tmp, 'runs')).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('--json piped into a reader that closes early ends quietly (point 5)', { timeout: 600_000 }, async () => {
    const { code, stderr } = await runCliClosingStdout([
      'generate',
      '--base',
      tiny,
      '--prompt',
      'x',
      '--steps',
      '20',
      '--seed',
      '1',
      '--out',
      join(tmp, 'epipe'),
      '--json',
    ]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});
