/**
 * `singlora projects list | create <name> | show <id> | delete <id>`: the projects on disk, through
 * the same service the app and the server use (in this process, without its job runner: these
 * commands never start the engine). A server or app that owns the data folder keeps it; `delete`
 * then refuses and says so.
 */
import { type Command, Option } from 'commander';
import type { Project, ProjectSummary, Result } from '../api/contract.ts';
import { DEFAULT_SUBJECT_TYPE, SUBJECT_TYPES, trainSettingsSchema } from '../api/schemas.ts';
import type { Service } from '../service/service.ts';
import { createInterface } from 'node:readline/promises';
import { action, printResult, UsageError, withCommon, type GlobalOptions } from './common.ts';
import { TRAIN_FLAGS } from './flags.ts';
import { schemaOptions } from './schemaOptions.ts';

/** The subject's settings, as `train` spells them. */
const SUBJECT = schemaOptions(trainSettingsSchema, TRAIN_FLAGS, ['classWord', 'triggerToken']);

interface ProjectsOptions extends GlobalOptions {
  dataDir?: string;
  class?: string;
  token?: string;
  type?: (typeof SUBJECT_TYPES)[number];
  yes?: boolean;
}

async function withService<T>(o: ProjectsOptions, fn: (s: Service) => Promise<T>): Promise<T> {
  const { Service } = await import('../service/service.ts');
  const s = await Service.open({ dataDir: o.dataDir, exclusive: false });
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

const dataDirOption = () =>
  new Option('--data-dir <dir>', 'projects folder parent (default: SINGLORA_DATA_DIR or <repo>/.data)');

export function register(program: Command): void {
  const projects = program.command('projects').description('list, create, show or delete projects (one per subject)');

  withCommon(projects.command('list', { isDefault: true }).description('list the projects'), { backend: false })
    .addOption(dataDirOption())
    .action(
      action(async (o: ProjectsOptions) => {
        const list = (await withService(o, (s) => s.call('projects.list', {}))) as ProjectSummary[];
        printResult(o, list, () =>
          list.length
            ? list
                .map(
                  (p) =>
                    `${p.id.padEnd(32)} ${p.name}  (${p.subject.triggerToken} ${p.subject.classWord}, ${p.photos} photos, ${p.runs} runs)`,
                )
                .join('\n')
            : 'no projects yet: singlora projects create <name>',
        );
      }),
    );

  withCommon(projects.command('create <name>').description('create a project'), { backend: false })
    .addOption(dataDirOption())
    .addOption(SUBJECT.option('classWord'))
    .addOption(SUBJECT.option('triggerToken'))
    .addOption(
      new Option('--type <type>', 'subject type (evaluation prompts)')
        .choices([...SUBJECT_TYPES])
        .default(DEFAULT_SUBJECT_TYPE),
    )
    .action(
      action(async (name: string, o: ProjectsOptions) => {
        const p = (await withService(o, (s) =>
          s.call('projects.create', { name, classWord: o.class, triggerToken: o.token, type: o.type }),
        )) as Project;
        printResult(o, p, () => `created ${p.id} (${p.subject.triggerToken} ${p.subject.classWord})`);
      }),
    );

  withCommon(projects.command('show <id>').description('show a project, its photos and runs'), { backend: false })
    .addOption(dataDirOption())
    .action(action(showProject));

  withCommon(
    projects.command('delete <id>').description('delete a project folder (photos, runs, adapters, images); asks first'),
    { backend: false },
  )
    .addOption(dataDirOption())
    .option('--yes', 'do not ask (needed when not on a terminal, and with --json)')
    .action(action(deleteProject));
}

async function showProject(id: string, o: ProjectsOptions): Promise<void> {
  const r = await withService(o, async (s) => ({
    project: (await s.call('projects.open', { projectId: id })) as Project,
    photos: (await s.call('photos.list', { projectId: id })) as Result<'photos.list'>,
    runs: (await s.call('training.runs', { projectId: id })) as Result<'training.runs'>,
    dir: s.store.dir(id),
  }));
  printResult(o, r, () =>
    [
      `${r.project.name} (${r.project.id})`,
      `folder:   ${r.dir}`,
      `subject:  ${r.project.subject.triggerToken} ${r.project.subject.classWord} (${r.project.subject.type})`,
      `base:     ${r.project.baseModel ?? '(the app default)'}`,
      `photos:   ${r.photos.length}`,
      ...r.photos.map((p) => `  ${p.status.padEnd(8)} ${p.id}${p.reason ? `: ${p.reason}` : ''}`),
      `runs:     ${r.runs.length}`,
      ...r.runs.map(
        (x) =>
          `  ${x.id} ${x.status} ${x.step}/${x.steps}${x.best !== null ? `, best step ${x.best}` : ''}${x.error ? `: ${x.error}` : ''}`,
      ),
    ].join('\n'),
  );
}

/** Deletes a project after asking (or with --yes). */
async function deleteProject(id: string, o: ProjectsOptions): Promise<void> {
  if (!o.yes) {
    if (o.json || !process.stdin.isTTY)
      throw new UsageError(
        `projects delete removes ${id} and everything in it (photos, runs, adapters, images); add --yes to confirm`,
      );
    const summary = await withService(o, async (s) => ({
      project: (await s.call('projects.open', { projectId: id })) as Project,
      dir: s.store.dir(id),
    }));
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    const answer = await rl.question(
      `delete '${summary.project.name}' (${summary.dir}) with its photos, runs, adapters and images? [y/N] `,
    );
    rl.close();
    if (!/^y(es)?$/i.test(answer.trim())) {
      printResult(o, { deleted: false }, () => 'nothing deleted');
      return;
    }
  }
  const r = (await withService(o, (s) => s.call('projects.delete', { projectId: id }))) as Result<'projects.delete'>;
  if (!r.deleted) throw new Error(`no project '${id}'`);
  printResult(o, r, () => `deleted ${id}`);
}
