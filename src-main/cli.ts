/**
 * `singlora`: the headless front end of the engine. Each command lives in `cli/<command>.ts` and
 * registers itself here. Errors of every kind leave through `reportError` (cli/common.ts).
 */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { installProcessHandlers, reportError } from './cli/common.ts';
import * as adapters from './cli/adapters.ts';
import * as bench from './cli/bench.ts';
import * as demo from './cli/demo.ts';
import * as doctor from './cli/doctor.ts';
import * as evalCmd from './cli/eval.ts';
import * as generate from './cli/generate.ts';
import * as models from './cli/models.ts';
import * as projects from './cli/projects.ts';
import * as serve from './cli/serve.ts';
import * as trainCmd from './cli/train.ts';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

export function buildProgram(): Command {
  const program = new Command('singlora')
    .description('SingLoRA Studio engine: train SingLoRA adapters for Stable Diffusion 1.5, score them with DINO, generate and export')
    .version(pkg.version)
    // Commander's errors come back as exceptions and are reported by `reportError` (one line,
    // exit 2), not printed with the whole help; subcommands inherit both settings.
    .exitOverride()
    .configureOutput({ outputError: () => {} });
  for (const cmd of [demo, doctor, trainCmd, generate, evalCmd, adapters, models, projects, serve, bench]) cmd.register(program);
  return program;
}

installProcessHandlers();
try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  reportError(err);
}
