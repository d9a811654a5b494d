/**
 * `singlora`: the headless front end of the engine. Each command lives in `cli/<command>.ts` and
 * registers itself here. Errors of every kind leave through `reportError` (cli/common.ts).
 */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { installProcessHandlers, reportError } from './cli/common.ts';

const adapters = () => import('./cli/adapters.ts');
/** Each command's module; `export` and `inspect` share one. */
const COMMANDS: Record<string, () => Promise<{ register(program: Command): void }>> = {
  demo: () => import('./cli/demo.ts'),
  doctor: () => import('./cli/doctor.ts'),
  train: () => import('./cli/train.ts'),
  generate: () => import('./cli/generate.ts'),
  eval: () => import('./cli/eval.ts'),
  export: adapters,
  inspect: adapters,
  models: () => import('./cli/models.ts'),
  projects: () => import('./cli/projects.ts'),
  serve: () => import('./cli/serve.ts'),
  worker: () => import('./cli/worker.ts'),
  bench: () => import('./cli/bench.ts'),
};

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

/**
 * The program with every command, or with only `only` (the one on the command line: a command
 * line is then checked without loading the others).
 */
export async function buildProgram(only?: string): Promise<Command> {
  const program = new Command('singlora')
    .description(
      'SingLoRA Studio engine: train SingLoRA adapters for Stable Diffusion 1.5, score them with DINO, generate and export',
    )
    .version(pkg.version)
    // Commander's errors come back as exceptions and are reported by `reportError` (one line,
    // exit 2), not printed with the whole help; subcommands inherit both settings.
    .exitOverride()
    .configureOutput({ outputError: () => {} })
    // "unknown command 'genrate' (Did you mean generate?)"; subcommands inherit it (commander's default, stated).
    .showSuggestionAfterError(true);
  const loaders = only && COMMANDS[only] ? [COMMANDS[only]] : [...new Set(Object.values(COMMANDS))];
  for (const load of loaders) (await load()).register(program);
  return program;
}

installProcessHandlers();
try {
  await (await buildProgram(process.argv[2])).parseAsync(process.argv);
} catch (err) {
  reportError(err);
}
