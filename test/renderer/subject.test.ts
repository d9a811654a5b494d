// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { IMAGE_EXTENSIONS } from '../../src-main/api/schemas.ts';
import SubjectScreen from '../../src-renderer/screens/SubjectScreen.svelte';
import { startStudio } from './fakes.ts';
import * as fx from './fixtures.ts';

const photos = [
  fx.photo({ id: 'a', originalName: 'dog1.jpg', status: 'ok', url: '/files/p1/photos/dog1.jpg' }),
  fx.photo({ id: 'b', originalName: 'dog2.jpg', status: 'warning', reason: 'Small: 400×300, will be upscaled' }),
  fx.photo({ id: 'c', originalName: 'blurry.jpg', status: 'rejected', reason: 'Too blurry (sharpness 12 < 40)' }),
];

describe('Subject screen', () => {
  test("shows each photo's status and a rejected photo's reason", async () => {
    const { studio } = await startStudio({ 'photos.list': () => photos });
    render(SubjectScreen, { subject: studio.subject });
    await waitFor(() => expect(screen.getAllByTestId('photo-card')).toHaveLength(3));

    const rejected = screen.getAllByTestId('photo-card').find((c) => c.dataset.status === 'rejected')!;
    expect(within(rejected).getByTestId('photo-status').textContent).toBe('rejected');
    expect(within(rejected).getByTestId('photo-reason').textContent).toBe('Too blurry (sharpness 12 < 40)');
    const ok = screen.getAllByTestId('photo-card').find((c) => c.dataset.status === 'ok')!;
    expect(within(ok).getByTestId('photo-status').textContent).toBe('ok');
    expect(within(ok).queryByTestId('photo-reason')).toBeNull();
    // Thumbnails use the URL the service gave, through the transport.
    expect(within(ok).getByRole('img').getAttribute('src')).toBe('/files/p1/photos/dog1.jpg');
    // 2 usable photos: below the 3-20 guidance.
    expect(screen.getByTestId('photo-guidance').textContent).toMatch(
      /2 usable photo\(s\): add at least 1 more \(3-20 works best\)/,
    );
  });

  test('a file that could not be decoded shows no picture and offers no crops; the project list counts photos', async () => {
    const broken = fx.photo({
      id: 'x',
      originalName: 'notes.png',
      status: 'rejected',
      reason: 'not a readable image',
      width: null,
      height: null,
      url: '/files/p1/photos/notes.png',
    });
    const { studio } = await startStudio({ 'photos.list': () => [broken] });
    render(SubjectScreen, { subject: studio.subject });
    const card = await screen.findByTestId('photo-card');
    expect(within(card).getByTestId('no-preview')).toBeTruthy();
    expect(within(card).queryByRole('img')).toBeNull();
    expect(within(card).getByRole('button', { name: 'Remove notes.png' })).toBeTruthy();
    expect(studio.projects.list[0].photos).toBe(1);
  });

  test('dropped files are sent to photos.add as base64; non-images are skipped with a message', async () => {
    let listed = [] as ReturnType<typeof fx.photo>[];
    const { studio, transport } = await startStudio({
      'photos.list': () => listed,
      'photos.add': (p) => (listed = p.files!.map((f, i) => fx.photo({ id: `n${i}`, originalName: f.name }))),
    });
    render(SubjectScreen, { subject: studio.subject });
    expect(screen.getByTestId('photo-guidance').textContent).toMatch(/Add 3-20 photos/);

    const jpg = new File([new Uint8Array([0xff, 0xd8, 0xff, 0xe0])], 'dog.jpg', { type: 'image/jpeg' });
    const txt = new File(['hello'], 'notes.txt', { type: 'text/plain' });
    await fireEvent.drop(screen.getByTestId('drop-zone'), { dataTransfer: { files: [jpg, txt] } });

    await waitFor(() => expect(screen.getAllByTestId('photo-card')).toHaveLength(1));
    expect(transport.paramsOf('photos.add')).toEqual([
      { projectId: 'p1', files: [{ name: 'dog.jpg', dataBase64: '/9j/4A==' }] },
    ]);
    // Not a failure: an info that names the file and the formats taken, no "Add photos failed".
    expect(studio.notify.items.map((t) => [t.kind, t.title, t.message])).toEqual([
      ['info', '', 'Not added (not JPEG, PNG, WebP, AVIF, TIFF or HEIC photos): notes.txt; the photo is added.'],
    ]);
  });

  test('the file picker input adds photos too, and remove calls photos.remove', async () => {
    let listed = [fx.photo({ id: 'a' })];
    const { studio, transport } = await startStudio({
      'photos.list': () => listed,
      'photos.add': () => [],
      'photos.remove': () => ((listed = []), { removed: true }),
    });
    render(SubjectScreen, { subject: studio.subject });
    await waitFor(() => screen.getByTestId('photo-card'));

    const input = screen.getByTestId('photo-input') as HTMLInputElement;
    const png = new File([new Uint8Array([1, 2, 3])], 'cat.png', { type: 'image/png' });
    Object.defineProperty(input, 'files', { value: [png], configurable: true });
    await fireEvent.change(input);
    await waitFor(() => expect(transport.paramsOf('photos.add')).toHaveLength(1));
    expect(transport.paramsOf('photos.add')[0].files).toEqual([{ name: 'cat.png', dataBase64: 'AQID' }]);

    await fireEvent.click(screen.getByRole('button', { name: /Remove dog1.jpg/ }));
    await waitFor(() => expect(screen.queryByTestId('photo-card')).toBeNull());
    expect(transport.paramsOf('photos.remove')).toEqual([{ projectId: 'p1', photoId: 'a' }]);
  });

  test('the crop is one choice, on Subject: it is saved to the project, the previews show it, and training uses it', async () => {
    let project = fx.project();
    const { studio, transport } = await startStudio({
      'photos.list': () => [
        fx.photo({ id: 'a' }),
        fx.photo({ id: 'b', status: 'rejected', reason: 'too small' }),
        fx.photo({ id: 'c', width: null, height: null, status: 'rejected', reason: 'not an image' }),
      ],
      'photos.cropPreview': (p) => ({ pngBase64: p.crop === 'attention' ? 'QVRU' : 'Q0VO' }),
      'projects.update': (p) =>
        (project = {
          ...project,
          settings: { ...project.settings, ...p.settings, classImagesDir: p.settings?.classImagesDir ?? undefined },
        }),
      'training.start': () => ({ jobId: 'j1', runId: 'r1' }),
    });
    render(SubjectScreen, { subject: studio.subject });
    const choice = await screen.findByTestId('crop-choice');
    expect((within(choice).getByTestId('crop-center') as HTMLInputElement).checked).toBe(true);
    await fireEvent.click(screen.getByTestId('show-crops'));
    // Only the photo that is trained on, at the crop training uses.
    await waitFor(() =>
      expect(screen.getByTestId('crop-preview').getAttribute('src')).toBe('data:image/png;base64,Q0VO'),
    );
    expect(transport.paramsOf('photos.cropPreview')).toEqual([
      { projectId: 'p1', photoId: 'a', crop: 'center', size: 256 },
    ]);

    await fireEvent.click(within(choice).getByTestId('crop-attention'));
    await waitFor(() =>
      expect(transport.paramsOf('projects.update')).toEqual([{ projectId: 'p1', settings: { crop: 'attention' } }]),
    );
    await waitFor(() =>
      expect(screen.getByTestId('crop-preview').getAttribute('src')).toBe('data:image/png;base64,QVRU'),
    );
    expect((within(choice).getByTestId('crop-attention') as HTMLInputElement).checked).toBe(true);

    // Train has no crop of its own: it sends the project's.
    expect(studio.training.draft).not.toHaveProperty('crop');
    await studio.training.start();
    expect(transport.paramsOf('training.start')[0].settings?.crop).toBe('attention');
  });

  test('trigger token and class word are saved with projects.update; field errors show beside the field', async () => {
    const { studio, transport } = await startStudio();
    render(SubjectScreen, { subject: studio.subject });
    const token = screen.getByTestId('trigger-token') as HTMLInputElement;
    expect(token.value).toBe('sks');
    await fireEvent.input(token, { target: { value: 'ohwx' } });
    await fireEvent.input(screen.getByTestId('class-word'), { target: { value: 'corgi' } });
    await fireEvent.click(screen.getByTestId('save-subject'));
    await waitFor(() => expect(transport.paramsOf('projects.update')).toHaveLength(1));
    expect(transport.paramsOf('projects.update')[0]).toEqual({
      projectId: 'p1',
      subject: { triggerToken: 'ohwx', classWord: 'corgi', type: 'live' },
    });
    expect(studio.projects.current?.subject.classWord).toBe('corgi');

    await fireEvent.input(token, { target: { value: '' } });
    await fireEvent.click(screen.getByTestId('save-subject'));
    await waitFor(() => expect(screen.getByText('Fill this in: it cannot be empty')).toBeTruthy());
    expect(transport.paramsOf('projects.update')).toHaveLength(1);
    expect(token.getAttribute('aria-invalid')).toBe('true');
  });

  test('the drop zone names the formats the app takes, and the file picker offers exactly those', async () => {
    const { studio } = await startStudio();
    render(SubjectScreen, { subject: studio.subject });
    // IMAGE_EXTENSIONS: .jpg .jpeg .png .webp .avif .tif .tiff .heic .heif
    expect(screen.getByTestId('drop-zone').textContent).toContain('JPEG, PNG, WebP, AVIF, TIFF or HEIC');
    expect(screen.getByTestId('photo-input').getAttribute('accept')?.split(',')).toEqual([...IMAGE_EXTENSIONS]);
  });

  test('a trigger token with spaces or emoji is refused with what to do; changing it after runs warns', async () => {
    const { studio, transport } = await startStudio({
      'training.runs': () => [fx.run({ id: 'r1' }), fx.run({ id: 'r2' })],
    });
    render(SubjectScreen, { subject: studio.subject });
    const token = screen.getByTestId('trigger-token') as HTMLInputElement;
    await fireEvent.input(token, { target: { value: 'my ball 🎈' } });
    await fireEvent.click(screen.getByTestId('save-subject'));
    await screen.findByText('Use one word, without spaces (e.g. sks or ohwx)');
    await fireEvent.input(token, { target: { value: 'ball🎈' } });
    await fireEvent.click(screen.getByTestId('save-subject'));
    await screen.findByText('Use only letters, digits, _ and -: no emoji or other symbols (e.g. sks)');
    expect(transport.paramsOf('projects.update')).toHaveLength(0);

    expect(screen.getByTestId('token-change').textContent).toMatch(
      /This project has 2 runs trained with "sks": their adapters answer to "sks", not to "ball🎈"/,
    );
    await fireEvent.input(token, { target: { value: 'sks' } });
    expect(screen.queryByTestId('token-change')).toBeNull();
    await fireEvent.input(token, { target: { value: 'zwx_2' } });
    expect(screen.getByTestId('token-change')).toBeTruthy();
    await fireEvent.click(screen.getByTestId('save-subject'));
    await waitFor(() => expect(transport.paramsOf('projects.update')).toHaveLength(1));
  });

  test('a subject error goes as soon as the field is valid again, without saving', async () => {
    const { studio } = await startStudio();
    render(SubjectScreen, { subject: studio.subject });
    const token = screen.getByTestId('trigger-token') as HTMLInputElement;
    await fireEvent.input(token, { target: { value: 'my ball' } });
    await fireEvent.click(screen.getByTestId('save-subject'));
    await screen.findByText('Use one word, without spaces (e.g. sks or ohwx)');
    await fireEvent.input(token, { target: { value: '' } });
    await screen.findByText('Fill this in: it cannot be empty');
    await fireEvent.input(token, { target: { value: 'ohwx' } });
    await waitFor(() => expect(token.getAttribute('aria-invalid')).toBeNull());
    expect(screen.queryByText(/Fill this in|Use one word/)).toBeNull();
  });
});
