// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test, vi } from 'vitest';
import { ApiError } from '../../src-main/api/contract.ts';
import { adapterOptions } from '../../src-renderer/lib/adapters.svelte.ts';
import GenerateScreen from '../../src-renderer/screens/GenerateScreen.svelte';
import { startStudio, type Handlers } from './fakes.ts';
import * as fx from './fixtures.ts';

async function renderGenerate(handlers: Handlers = {}, clipboard: Pick<Clipboard, 'writeText'> | null = null) {
  const ctx = await startStudio(
    {
      'training.runs': () => [fx.run({ id: 'r1', best: 600 })],
      'training.status': () => fx.manifest(),
      'adapters.list': () => [
        {
          file: 'adapters/old.safetensors',
          method: 'lora',
          rank: 8,
          alpha: 8,
          targets: 96,
          parameters: 1_000_000,
          bytes: 4_000_000,
          format: 'kohya',
          metadata: {},
        },
      ],
      ...handlers,
    },
    { clipboard },
  );
  const { studio } = ctx;
  await waitFor(() => expect(studio.adapters.files).toHaveLength(1));
  render(GenerateScreen, {
    generation: studio.generation,
    adapterOptions: adapterOptions(studio.training.runs, studio.adapters.files),
    revealHint: 'A browser cannot open folders on this computer',
  });
  return ctx;
}

describe('Generate screen', () => {
  test('a width that is not a multiple of 8 is refused before sending', async () => {
    const { transport } = await renderGenerate({ 'generation.start': () => ({ jobId: 'g1' }) });
    await fireEvent.input(screen.getByTestId('width'), { target: { value: '500' } });
    await fireEvent.click(screen.getByTestId('generate-button'));
    await waitFor(() => expect(screen.getByText('Enter a multiple of 8')).toBeTruthy());
    expect(screen.getByTestId('width').getAttribute('aria-invalid')).toBe('true');
    expect(transport.paramsOf('generation.start')).toHaveLength(0);

    await fireEvent.input(screen.getByTestId('width'), { target: { value: '504' } });
    await fireEvent.click(screen.getByTestId('generate-button'));
    await waitFor(() => expect(transport.paramsOf('generation.start')).toHaveLength(1));
    expect(screen.queryByText('Enter a multiple of 8')).toBeNull();
  });

  test('sends the prompt, settings and the chosen adapter with its strength', async () => {
    const { transport } = await renderGenerate({ 'generation.start': () => ({ jobId: 'g1' }) });
    expect((screen.getByTestId('prompt') as HTMLTextAreaElement).value).toBe('a photo of sks dog');
    await fireEvent.input(screen.getByTestId('prompt'), { target: { value: 'sks dog as an astronaut' } });
    await fireEvent.input(screen.getByTestId('seed'), { target: { value: '77' } });
    await fireEvent.change(screen.getByLabelText('Sampler'), { target: { value: 'euler-a' } });
    await fireEvent.change(screen.getByTestId('generate-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.input(screen.getByTestId('strength'), { target: { value: '0.8' } });
    await fireEvent.click(screen.getByTestId('generate-button'));

    await waitFor(() => expect(transport.paramsOf('generation.start')).toHaveLength(1));
    const p = transport.paramsOf('generation.start')[0];
    expect(p.settings).toMatchObject({
      prompt: 'sks dog as an astronaut',
      seed: 77,
      scheduler: 'euler-a',
      width: 512,
      height: 512,
      steps: 25,
    });
    expect(p.adapters).toEqual([{ runId: 'r1', step: null, strength: 0.8 }]);
  });

  test('"Reuse settings" restores the adapter, its checkpoint and its strength, and they are sent', async () => {
    const image = fx.generatedImage({
      adapters: [
        {
          file: '/home/u/SingLoRA/projects/p1/runs/r1/checkpoints/step-000400/adapter.safetensors',
          sha256: 'd',
          strength: 0.6,
        },
      ],
    });
    const { transport } = await renderGenerate({
      'generation.list': () => [image],
      'generation.start': () => ({ jobId: 'g1' }),
    });
    const card = await screen.findByTestId('gallery-item');
    await fireEvent.input(screen.getByTestId('strength'), { target: { value: '1.5' } });
    await fireEvent.click(within(card).getByRole('button', { name: 'Reuse settings' }));

    expect((screen.getByTestId('strength') as HTMLInputElement).value).toBe('0.6');
    expect(screen.getByText('Strength:').textContent).toContain('0.60');
    const picker = screen.getByTestId('generate-adapter') as HTMLSelectElement;
    expect(picker.value).toBe('run:r1@400');
    expect(picker.selectedOptions[0].textContent).toBe('Run r1: checkpoint at step 400');
    expect((screen.getByTestId('seed') as HTMLInputElement).value).toBe('1234');
    await fireEvent.click(screen.getByTestId('generate-button'));
    await waitFor(() => expect(transport.paramsOf('generation.start')).toHaveLength(1));
    expect(transport.paramsOf('generation.start')[0].adapters).toEqual([{ runId: 'r1', step: 400, strength: 0.6 }]);
  });

  test('"Reuse settings" of an image made without an adapter clears the adapter', async () => {
    await renderGenerate({ 'generation.list': () => [fx.generatedImage({ adapters: [] })] });
    const card = await screen.findByTestId('gallery-item');
    await waitFor(() => expect((screen.getByTestId('generate-adapter') as HTMLSelectElement).value).toBe('run:r1'));
    await fireEvent.click(within(card).getByRole('button', { name: 'Reuse settings' }));
    expect((screen.getByTestId('generate-adapter') as HTMLSelectElement).value).toBe('none');
  });

  test('an error goes as soon as its field is valid again; a server error on an unchanged field stays', async () => {
    const { transport } = await renderGenerate({
      'generation.start': () => {
        throw new ApiError('invalid_params', 'settings.prompt: the prompt is too long for this model', [
          { field: 'settings.prompt', message: 'the prompt is too long for this model' },
        ]);
      },
    });
    await fireEvent.input(screen.getByTestId('width'), { target: { value: '500' } });
    await fireEvent.click(screen.getByTestId('generate-button'));
    await screen.findByText('Enter a multiple of 8');
    await fireEvent.input(screen.getByTestId('width'), { target: { value: '501' } });
    expect(screen.getByText('Enter a multiple of 8')).toBeTruthy(); // still wrong: still shown
    await fireEvent.input(screen.getByTestId('width'), { target: { value: '504' } });
    await waitFor(() => expect(screen.queryByText('Enter a multiple of 8')).toBeNull());
    expect(screen.getByTestId('width').getAttribute('aria-invalid')).toBeNull();
    expect(screen.queryByText('Fix the highlighted settings first.')).toBeNull();

    await fireEvent.click(screen.getByTestId('generate-button'));
    await screen.findByText('the prompt is too long for this model');
    await fireEvent.input(screen.getByTestId('seed'), { target: { value: '5' } });
    expect(screen.getByText('the prompt is too long for this model')).toBeTruthy();
    expect(transport.paramsOf('generation.start')).toHaveLength(1);
  });

  test('the randomise button sets a concrete seed; -1 stays allowed', async () => {
    await renderGenerate();
    const seed = screen.getByTestId('seed') as HTMLInputElement;
    expect(seed.value).toBe('-1');
    await fireEvent.click(screen.getByTestId('randomize-seed'));
    expect(Number(seed.value)).toBeGreaterThanOrEqual(0);
  });

  test('shows step progress, then the new image in the gallery with its parameters', async () => {
    const { transport } = await renderGenerate({ 'generation.start': () => ({ jobId: 'g1' }) });
    await fireEvent.click(screen.getByTestId('generate-button'));
    await waitFor(() => expect(transport.paramsOf('generation.start')).toHaveLength(1));
    transport.emit('generation.step', { jobId: 'g1', image: 0, images: 2, step: 10, steps: 25 });
    await waitFor(() =>
      expect(screen.getByTestId('generate-progress').textContent).toContain('Image 1/2 · step 10/25'),
    );

    transport.emit('generation.image', { jobId: 'g1', projectId: 'p1', image: fx.generatedImage() });
    const img = await screen.findByTestId('gallery-image');
    expect(img.getAttribute('src')).toBe('/files/p1/images/0001.png');
    const card = screen.getByTestId('gallery-item');
    expect(card.textContent).toMatch(/Seed 1234 · 25 steps · CFG 7.5 · DPM\+\+ 2M Karras · 512×512/);
    // Which run and step made it, and a download of the file.
    expect(within(card).getByTestId('gallery-adapters').textContent).toBe('run r1, step 600 at strength 1.00');
    const dl = within(card).getByTestId('download-image') as HTMLAnchorElement;
    expect([dl.getAttribute('href'), dl.getAttribute('download')]).toEqual([
      '/files/p1/images/0001.png',
      fx.generatedImage().file.split('/').pop(),
    ]);

    transport.emit('job.updated', fx.job({ id: 'g1', kind: 'generate', status: 'done' }));
    await waitFor(() => expect(screen.queryByTestId('generate-progress')).toBeNull());
    expect((screen.getByTestId('generate-button') as HTMLButtonElement).disabled).toBe(false);
  });

  test('"copy parameters" puts the A1111 parameters text on the clipboard; "open in folder" is disabled in the browser', async () => {
    const clipboard = { writeText: vi.fn(async () => {}) };
    await renderGenerate({ 'generation.list': () => [fx.generatedImage()] }, clipboard);
    const card = await screen.findByTestId('gallery-item');
    await fireEvent.click(within(card).getByTestId('copy-parameters'));
    expect(clipboard.writeText).toHaveBeenCalledWith(fx.generatedImage().parameters);

    const open = within(card).getByTestId('open-folder') as HTMLButtonElement;
    expect(open.disabled).toBe(true);
    expect(open.parentElement!.getAttribute('title')).toBe('A browser cannot open folders on this computer');
  });

  test('in the desktop app "open in folder" asks the main process to show the image (desktop.reveal)', async () => {
    const { studio, transport } = await startStudio(
      { 'generation.list': () => [fx.generatedImage()], 'desktop.reveal': () => ({ revealed: true }) },
      {},
      'electron',
    );
    render(GenerateScreen, { generation: studio.generation, adapterOptions: [], revealHint: '' });
    const open = (await screen.findByTestId('open-folder')) as HTMLButtonElement;
    expect(open.disabled).toBe(false);
    await fireEvent.click(open);
    await waitFor(() =>
      expect(transport.paramsOf('desktop.reveal')).toEqual([
        { projectId: 'p1', file: `images/${fx.generatedImage().file}` },
      ]),
    );
  });

  test("size and steps default from the base model's native size, never over the user's own values", async () => {
    const { studio } = await startStudio();
    const g = studio.generation;
    expect([g.draft.width, g.draft.height, g.draft.steps]).toEqual([512, 512, 25]);
    g.useModelDefaults(64);
    expect([g.draft.width, g.draft.height, g.draft.steps]).toEqual([64, 64, 10]);
    g.draft.width = 96;
    g.useModelDefaults(512);
    expect([g.draft.width, g.draft.height, g.draft.steps]).toEqual([96, 64, 25]); // the size is the user's now; the steps were not touched
    render(GenerateScreen, { generation: g, adapterOptions: [], revealHint: '', native: 64 });
    expect(screen.getAllByRole('button', { name: /^\d+×\d+$/ }).map((b) => b.textContent)).toEqual([
      '64×64',
      '64×96',
      '96×64',
    ]);
  });

  test('a failed generation job is reported, never swallowed', async () => {
    const { transport, studio } = await renderGenerate({ 'generation.start': () => ({ jobId: 'g1' }) });
    await fireEvent.click(screen.getByTestId('generate-button'));
    await waitFor(() => expect(transport.paramsOf('generation.start')).toHaveLength(1));
    transport.emit(
      'job.updated',
      fx.job({ id: 'g1', kind: 'generate', status: 'failed', error: 'base model not found: /models/sd15' }),
    );
    await waitFor(() =>
      expect(
        studio.notify.items.some((t) => t.kind === 'error' && t.message === 'base model not found: /models/sd15'),
      ).toBe(true),
    );
  });

  test('a gallery card names the strength in words; strength 0 says it had no effect', async () => {
    await renderGenerate({
      'generation.list': () => [
        fx.generatedImage({
          adapters: [{ file: '/p/p1/runs/r1/checkpoints/step-000600/adapter.safetensors', sha256: 'd', strength: 0 }],
        }),
      ],
    });
    expect((await screen.findByTestId('gallery-adapters')).textContent).toBe(
      'run r1, step 600 at strength 0.00 (no effect)',
    );
  });
});
