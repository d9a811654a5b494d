/**
 * The whole app in a browser, as a user drives it: headless Chromium (playwright-core) against
 * `singlora serve` (startServer, in this process; the engine in its child process) on the tiny
 * model. One project, in order: create it, add photos (one of them not an image), train a few
 * steps with previews, evaluate the checkpoints with the tiny DINO, generate an image with the
 * run's adapter, export it for kohya and load the file with the engine's kohya importer.
 *
 * The page must stay clean: any console error, page error, or failed /api or /files request
 * fails the test. Every screen is captured at 1280x800 in the light and the dark theme into
 * test-artifacts/screenshots/<screen>.png and <screen>-dark.png.
 *
 * Needs Chromium (`.ci/run` installs Debian's `chromium`; elsewhere set SINGLORA_CHROMIUM); without
 * it the suite is skipped and says why. The renderer is built first when dist-renderer/ is
 * missing or older than its sources.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { inspectAdapter } from '../../src-main/engine/adapters/exportAdapter.ts';
import { planAdapter } from '../../src-main/engine/adapters/import.ts';
import { initBackend } from '../../src-main/engine/backend/tf.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { REPO_ROOT } from '../../src-main/engine/paths.ts';
import { startServer, type RunningServer } from '../../src-main/server.ts';
import { makeSubjectPhotos, makeTinyModel, TINY_DINO, TINY_MODEL_DIR } from '../../scripts/make-tiny-model.ts';

/** SINGLORA_CHROMIUM when set (and then only it), else Debian's or Ubuntu's path. */
const CHROMIUM_CANDIDATES = process.env.SINGLORA_CHROMIUM ? [process.env.SINGLORA_CHROMIUM] : ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const CHROMIUM = CHROMIUM_CANDIDATES.find((p) => existsSync(p));
/** Headless as root in a container: no sandbox, no GPU, nothing fetched in the background; /tmp instead of a small /dev/shm. */
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];
const SCREENSHOTS = join(REPO_ROOT, 'test-artifacts', 'screenshots');
const RENDERER = join(REPO_ROOT, 'dist-renderer');
/** The renderer's sources: the UI and the contract it is typed from. */
const RENDERER_SOURCES = ['src-renderer', 'src-main/api', 'vite.config.ts'];
const VIEWPORT = { width: 1280, height: 800 };
/** Training, evaluation and generation on the engine's CPU backends of a shared 2-core machine. */
const SLOW = 240_000;

if (!CHROMIUM) {
  console.warn(`test/e2e/studio.e2e.test.ts: SKIPPED: no Chromium at ${CHROMIUM_CANDIDATES.join(' or ')}; install it (\`apt-get install chromium\`, as .ci/run does) or point SINGLORA_CHROMIUM at one`);
}

function newestMtime(path: string): number {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return readdirSync(path).reduce((m, name) => Math.max(m, newestMtime(join(path, name))), s.mtimeMs);
}

/** Builds the renderer unless dist-renderer/index.html is newer than every source file. */
async function ensureRendererBuilt(): Promise<void> {
  const index = join(RENDERER, 'index.html');
  const sources = Math.max(...RENDERER_SOURCES.map((p) => newestMtime(join(REPO_ROOT, p))));
  if (existsSync(index) && statSync(index).mtimeMs >= sources) return;
  await promisify(execFile)('npx', ['vite', 'build', '--logLevel', 'warn'], { cwd: REPO_ROOT, timeout: 180_000 });
  expect(existsSync(index), 'vite build wrote no dist-renderer/index.html').toBe(true);
}

describe.skipIf(!CHROMIUM)('SingLoRA Studio in a browser (tiny model)', { timeout: 8 * 60_000 }, () => {
  let tmp: string;
  let server: RunningServer;
  let browser: Browser;
  let page: Page;
  let projectId: string;
  const serverLog: string[] = [];
  /** Console errors, page errors and failed requests to the server: all must stay empty. */
  const problems: string[] = [];

  const byTest = (id: string) => page.getByTestId(id);
  const go = async (screen: string) => {
    await byTest(`nav-${screen}`).click();
    await expect.poll(() => page.evaluate(() => location.hash)).toBe(`#/${screen}`);
  };
  /**
   * The whole screen at 1280 wide: the app scrolls inside <main> (header and sidebar stay), so the
   * window is made as tall as the screen's content for the shot, then set back to 1280x800.
   */
  const shoot = async (name: string) => {
    const height = await page.evaluate(() => {
      const main = document.querySelector('main')!;
      return Math.ceil(main.getBoundingClientRect().top + main.scrollHeight);
    });
    await page.setViewportSize({ width: VIEWPORT.width, height: Math.max(VIEWPORT.height, height) });
    await page.waitForFunction(() => [...document.images].every((img) => img.complete));
    await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
    await page.setViewportSize(VIEWPORT);
  };
  /** Whether an <img> finished loading real pixels. */
  const loaded = (testid: string) => page.locator(`[data-testid="${testid}"]`).first().evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0);

  beforeAll(async () => {
    await Promise.all([ensureRendererBuilt(), makeTinyModel()]);
    tmp = await mkdtemp(join(tmpdir(), 'singlora-e2e-'));
    // A models folder as a user has it after `singlora models download dino`, with the tiny DINO
    // in its place, and the demo base model beside it.
    const modelsDir = join(tmp, 'models');
    await mkdir(join(modelsDir, 'dino'), { recursive: true });
    await copyFile(TINY_DINO, join(modelsDir, 'dino', 'model.onnx'));
    await symlink(TINY_MODEL_DIR, join(modelsDir, 'tiny-sd'), 'dir');
    server = await startServer({
      host: '127.0.0.1',
      port: 0,
      serviceOptions: { dataDir: join(tmp, 'data'), modelsDir, defaultBaseModel: TINY_MODEL_DIR, evaluationSteps: 4 },
      log: (line) => serverLog.push(line),
    });
    await mkdir(SCREENSHOTS, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: VIEWPORT, colorScheme: 'light' });
    page.setDefaultTimeout(30_000);
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const ours = (url: string) => url.startsWith(server.url) && /^\/(api|files)\//.test(new URL(url).pathname);
    page.on('requestfailed', (r) => {
      if (ours(r.url())) problems.push(`request failed: ${r.method()} ${new URL(r.url()).pathname}: ${r.failure()?.errorText}`);
    });
    page.on('response', (r) => {
      if (ours(r.url()) && r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.request().method()} ${new URL(r.url()).pathname}`);
    });
  }, 180_000);

  // Each step leaves the page clean: no console or page error, no failed request to the server.
  afterEach(() => {
    expect(problems, 'console errors, page errors or failed requests').toEqual([]);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 60_000);

  /** On failure: a screenshot of where it stopped, the page's problems and the server's last lines. */
  function explainFailures(name: string) {
    onTestFailed(async () => {
      await page?.screenshot({ path: join(SCREENSHOTS, `failed-${name}.png`), fullPage: true }).catch(() => {});
      console.error(`--- ${name}: page problems:\n${problems.join('\n') || '(none)'}\n--- server log (last 40 lines):\n${serverLog.slice(-40).join('\n')}`);
    });
  }

  it('opens with the token and creates a project', async () => {
    explainFailures('project');
    await page.goto(server.openUrl);
    await expect.poll(() => byTest('connection-state').getAttribute('data-status'), { timeout: 20_000 }).toBe('open');
    await byTest('project-new').click();
    await byTest('project-name').fill('Red ball');
    await page.locator('#np-class').fill('ball');
    await page.locator('#np-type').selectOption('object');
    await byTest('project-create').click();
    await expect.poll(() => byTest('project-select').inputValue()).toMatch(/^red-ball-[0-9a-f]{6}$/);
    projectId = await byTest('project-select').inputValue();
  });

  it('Subject: adds photos through the file input; a file that is not an image is rejected with its reason', async () => {
    explainFailures('subject');
    await go('subject');
    const photos = await makeSubjectPhotos(join(tmp, 'photos'), 4);
    const bad = join(tmp, 'photos', 'not-a-photo.png');
    await writeFile(bad, 'this is a text file, not a PNG\n');
    await byTest('photo-input').setInputFiles([...photos, bad]);
    await expect.poll(() => byTest('photo-card').count()).toBe(5);
    const statuses = await byTest('photo-card').evaluateAll((cards) => cards.map((c) => (c as HTMLElement).dataset.status));
    expect(statuses.filter((s) => s === 'ok')).toHaveLength(4); // 96 px photos at the tiny model's native 64
    const rejected = page.locator('[data-testid="photo-card"][data-status="rejected"]');
    await expect.poll(() => rejected.count()).toBe(1);
    expect(await rejected.getAttribute('aria-label')).toBe('not-a-photo.png: rejected');
    expect(await rejected.getByTestId('photo-reason').textContent()).toMatch(/^not a readable image: /);
    expect(await rejected.getByTestId('no-preview').count()).toBe(1); // no broken picture
    expect(await byTest('photo-guidance').textContent()).toMatch(/4 usable photos: ready to train/);
    // Thumbnails load from /files with the token.
    await expect.poll(() => page.locator('[data-testid="photo-card"][data-status="ok"] img').first().evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0)).toBe(true);
    await shoot('subject');
  });

  it('Train: a tiny run from the form (Advanced for checkpoints and previews) shows progress, the loss and a sample', async () => {
    explainFailures('train');
    await go('train');
    await byTest('setting-steps').fill('6');
    await page.getByLabel('Resolution').selectOption('64');
    await page.getByText('Advanced', { exact: true }).click();
    await page.locator('#t-ckpt').fill('3');
    await page.locator('#t-sample').fill('3');
    await page.locator('#t-sample-steps').fill('4');

    // Record every value the progress bar and the loss chart show, however fast the steps come.
    await page.evaluate(() => {
      const seen = { progress: [] as number[], points: [] as number[] };
      (window as unknown as { seen: typeof seen }).seen = seen;
      const note = (list: number[], v: string | null | undefined) => {
        if (v != null && list.at(-1) !== Number(v)) list.push(Number(v));
      };
      new MutationObserver(() => {
        note(seen.progress, document.querySelector('[data-testid="train-progress"] [role="progressbar"]')?.getAttribute('aria-valuenow'));
        note(seen.points, document.querySelector('[data-testid="loss-chart"]')?.getAttribute('data-points'));
      }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['aria-valuenow', 'data-points'] });
    });
    await byTest('train-button').click();

    const deadline = Date.now() + SLOW;
    for (;;) {
      const status = await byTest('run-status').textContent().catch(() => null);
      expect(await byTest('train-error').count(), 'the run failed').toBe(0);
      if (status === 'completed') break;
      expect(['queued', 'running', null], `run status ${status}`).toContain(status);
      if (Date.now() > deadline) throw new Error(`training did not finish in ${SLOW / 1000} s (status ${status})`);
      await page.waitForTimeout(200);
    }
    const seen = await page.evaluate(() => (window as unknown as { seen: { progress: number[]; points: number[] } }).seen);
    // The bar went up step by step to 6/6; the chart gained points along the way.
    expect(seen.progress.at(-1)).toBe(6);
    expect(seen.progress.filter((p) => p > 0 && p < 6).length, `progress values seen: ${seen.progress}`).toBeGreaterThan(1);
    expect([...seen.progress].sort((x, y) => x - y), `progress values seen: ${seen.progress}`).toEqual(seen.progress);
    expect(seen.points.at(-1)).toBe(6);
    expect(seen.points.filter((p) => p > 0 && p < 6).length, `loss points seen: ${seen.points}`).toBeGreaterThan(1);
    expect([...seen.points].sort((x, y) => x - y), `loss points seen: ${seen.points}`).toEqual(seen.points);
    expect(await byTest('train-progress').textContent()).toContain('Step 6/6');

    await expect.poll(() => byTest('sample-image').count()).toBeGreaterThan(0);
    await expect.poll(() => loaded('sample-image')).toBe(true);
    expect(await page.getByText('Checkpoints at steps 3, 6.').count()).toBe(1);
    await shoot('train');
  });

  it('Evaluate: scores the base model and every checkpoint with DINO and marks the best', async () => {
    explainFailures('evaluate');
    await go('evaluate');
    await byTest('eval-scope').selectOption('quick');
    await byTest('evaluate-button').click();
    await expect.poll(() => byTest('score-row').count(), { timeout: SLOW }).toBe(2);
    expect(await byTest('score-baseline').count()).toBe(1);
    const rows = await byTest('score-row').evaluateAll((rs) => rs.map((r) => [(r as HTMLElement).dataset.step, (r as HTMLElement).dataset.best]));
    expect(rows.map(([step]) => step)).toEqual(['3', '6']);
    expect(rows.filter(([, best]) => best === 'true')).toHaveLength(1);
    expect(await byTest('eval-rule').textContent()).toMatch(/highest DINO/);
    expect(await byTest('eval-summary').textContent()).toMatch(/^3 prompts × 1 image per checkpoint, seed 1001\./);
    await shoot('evaluate');
  });

  it("Generate: a 64x64 image with the run's adapter lands in the gallery", async () => {
    explainFailures('generate');
    await go('generate');
    expect(await byTest('generate-adapter').inputValue()).toMatch(/^run:/);
    await byTest('width').fill('64');
    await byTest('height').fill('64');
    await page.locator('#g-steps').fill('4');
    await byTest('seed').fill('7');
    await byTest('generate-button').click();
    await expect.poll(() => byTest('gallery-image').count(), { timeout: SLOW }).toBe(1);
    await expect.poll(() => loaded('gallery-image')).toBe(true);
    expect(await byTest('gallery-item').textContent()).toMatch(/Seed 7 · 4 steps .* 64×64/);
    await shoot('generate');
  });

  it('Export: kohya; the file named on screen exists and loads with the kohya importer', async () => {
    explainFailures('export');
    await go('export');
    expect(await byTest('export-adapter').inputValue()).toMatch(/^run:/);
    await byTest('export-format').selectOption('kohya');
    await byTest('export-button').click();
    await expect.poll(() => byTest('export-result-path').count(), { timeout: SLOW }).toBe(1);
    const rel = (await byTest('export-result-path').textContent())!.trim();
    expect(rel).toMatch(/^adapters\/.*-kohya\.safetensors$/);
    await shoot('export');

    const projectDir = join(server.service.projectsDir, projectId);
    const file = join(projectDir, rel);
    expect(existsSync(file), `${file} exists`).toBe(true);
    const info = await inspectAdapter(file);
    const [runId] = readdirSync(join(projectDir, 'runs'));
    const native = await inspectAdapter(join(projectDir, 'runs', runId, 'checkpoints', 'step-000006', 'adapter.safetensors'));
    expect(info).toMatchObject({ format: 'kohya', rank: 8, targets: native.targets });
    expect(info.targets).toBeGreaterThan(0);

    await initBackend('wasm');
    const unet = await UNet2DConditionModel.load(join(TINY_MODEL_DIR, 'unet'));
    const plan = await planAdapter(file, { unet });
    try {
      expect(plan.report).toMatchObject({ format: 'kohya', modules: native.targets, unapplied: [] });
      expect(plan.report.appliedTensors).toBe(plan.report.totalTensors);
    } finally {
      plan.dispose();
      unet.dispose();
    }
  });

  it('Models & Settings: the models and the backend the engine runs on', async () => {
    explainFailures('settings');
    await go('settings');
    await expect.poll(() => byTest('model-row').count()).toBeGreaterThan(1);
    await expect.poll(() => byTest('selected-backend').count(), { timeout: 60_000 }).toBe(1);
    expect(await byTest('models-table').textContent()).toMatch(/dino.*installed/s);
    await shoot('settings');
  });

  it('every screen in the dark theme, and the page stayed free of errors', async () => {
    explainFailures('dark');
    await page.emulateMedia({ colorScheme: 'dark' });
    for (const screen of ['subject', 'train', 'evaluate', 'generate', 'export', 'settings']) {
      await go(screen);
      await page.waitForTimeout(300); // images and charts settle
      await shoot(`${screen}-dark`);
    }
    await page.emulateMedia({ colorScheme: 'light' });
    expect(problems).toEqual([]);
  });
});
