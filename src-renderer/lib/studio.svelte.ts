/**
 * The composition root: one transport, one typed client, one event hub, and the services that
 * hold the app's state. Components receive the services they present as props; nothing else in
 * the renderer talks to the transport.
 *
 *   Transport (http | electron) -> ApiClient (typed calls) ---> services (*.svelte.ts, $state)
 *                               -> EventHub (typed events) -/        |  props + callbacks
 *                                                                  components (present only)
 */
import type { ApiClient, Project } from '../../src-main/api/contract.ts';
import { AdaptersService } from './adapters.svelte.ts';
import { createApiClient } from './client.ts';
import { ConnectionService } from './connection.svelte.ts';
import { EvaluationService } from './evaluation.svelte.ts';
import { EventHub } from './events.ts';
import { ExportService } from './exporting.svelte.ts';
import { Files } from './files.ts';
import { GenerationService } from './generation.svelte.ts';
import { JobsService } from './jobs.svelte.ts';
import { Notifier } from './notifier.svelte.ts';
import { ProjectsService } from './projects.svelte.ts';
import { Router } from './router.svelte.ts';
import { SubjectService } from './subject.svelte.ts';
import { SystemService } from './system.svelte.ts';
import { TrainingService } from './training.svelte.ts';
import type { Transport } from './transport/types.ts';

export interface StudioOptions {
  /** Check results and events against the contract (development and tests). */
  validate?: boolean;
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  clipboard?: Pick<Clipboard, 'writeText'> | null;
  window?: Pick<Window, 'location' | 'addEventListener' | 'removeEventListener'>;
  toastMs?: number;
}

export function createStudio(transport: Transport, opts: StudioOptions = {}) {
  const api: ApiClient = createApiClient(transport, { validate: opts.validate });
  const hub = new EventHub(transport, { validate: opts.validate });
  const files = new Files(transport);
  const notify = new Notifier(opts.toastMs, opts.toastMs === 0 ? 0 : undefined);
  const router = new Router(opts.window);
  const connection = new ConnectionService(transport, hub);
  // Without a valid token the page shows one screen that says how to get in, not a toast per call.
  notify.muted = () => connection.state.status === 'unauthorized';
  const jobs = new JobsService(api, hub, notify);
  const system = new SystemService(api, jobs, notify);
  const projects = new ProjectsService(api, notify, opts.storage ?? null, transport.kind === 'electron');
  const subject = new SubjectService(api, projects, files, notify);
  const training = new TrainingService(api, hub, jobs, projects, files, notify, opts.storage ?? null);
  const evaluation = new EvaluationService(api, hub, jobs, notify, () => void training.loadRuns(), files);
  const adapters = new AdaptersService(api, notify);
  const desktop = transport.kind === 'electron';
  const generation = new GenerationService(api, hub, jobs, files, notify, opts.clipboard ?? null, desktop);
  const exporting = new ExportService(api, jobs, notify, () => void adapters.refresh(), files, desktop);

  const follow = (p: Project | null) => {
    subject.setProject(p);
    training.setProject(p);
    evaluation.setProject(p);
    adapters.setProject(p);
    generation.setProject(p);
    exporting.setProject(p);
  };
  projects.onOpen(follow);
  // The service re-checked the photos at the new model's size: show the new statuses.
  projects.onModelChange(() => void subject.load());

  // A finished model download may be what evaluation was missing.
  hub.on('job.updated', (j) => {
    if (j.kind === 'download' && j.status === 'done') void evaluation.recheck();
  });

  // Events sent while the channel was down are lost: refetch what the screens show.
  hub.onReconnect(() => {
    void jobs.refresh();
    void training.loadRuns();
    if (training.selectedRunId) void training.selectRun(training.selectedRunId);
    void generation.loadGallery();
  });

  return {
    transport,
    api,
    hub,
    files,
    notify,
    router,
    connection,
    jobs,
    system,
    projects,
    subject,
    training,
    evaluation,
    adapters,
    generation,
    exporting,
    /** Opens the event channel and loads the first data. */
    async start(): Promise<void> {
      hub.start((s) => {
        connection.setState(s);
        if (s.status === 'unauthorized') notify.clear();
      });
      router.start();
      await Promise.all([projects.start(), jobs.refresh(), system.refresh()]);
    },
    stop(): void {
      hub.stop();
      router.stop();
      transport.close();
    },
  };
}

export type Studio = ReturnType<typeof createStudio>;
