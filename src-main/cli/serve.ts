/**
 * `singlora serve`: the headless server (src-main/server.ts) with the built renderer, for a
 * browser. Prints the URL with a one-time token; Ctrl-C pauses running training (a checkpoint is
 * kept) and stops.
 */
import type { Command } from 'commander';
import {
  action,
  onCancel,
  parse,
  printResult,
  queueFromEnv,
  redacted,
  requireExists,
  requireNotFile,
  withCommon,
  type GlobalOptions,
} from './common.ts';

interface ServeOptions extends GlobalOptions {
  host: string;
  port?: number;
  token?: string;
  dataDir?: string;
  modelsDir?: string;
  base?: string;
  allowRemote?: boolean;
  queue?: string;
}

export function register(program: Command): void {
  withCommon(
    program
      .command('serve')
      .description('serve the app to a browser: HTTP API, WebSocket events and the user interface (token-protected)')
      .option('--host <address>', 'address to listen on', '127.0.0.1')
      .option('--port <n>', 'port (default 7860; 0: any free port)', parse.int(0, 65535))
      .option('--token <token>', 'session token (default: SINGLORA_SERVER_TOKEN, else 32 random bytes)')
      .option('--data-dir <dir>', 'projects and jobs (default: SINGLORA_DATA_DIR or <repo>/.data)')
      .option('--models-dir <dir>', 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)')
      .option(
        '--base <model>',
        'default base model for projects without one (default: the demo model in the models folder, toy-sd, else tiny-sd, when present)',
      )
      .option('--allow-remote', 'allow a non-loopback --host (anyone who has the token can use the server)')
      .option(
        '--queue <url>',
        'send jobs to a Redis queue for `singlora worker`s: redis://host:port or rediss://:password@host:port (default: SINGLORA_QUEUE; none: run jobs here)',
        parse.queueUrl,
      ),
  ).action(
    action(async (o: ServeOptions) => {
      if (o.dataDir) requireNotFile(o.dataDir, '--data-dir');
      if (o.modelsDir) requireNotFile(o.modelsDir, '--models-dir');
      if (o.base) requireExists(o.base, '--base');
      // Ctrl-C / SIGTERM stop the server (exit 0), from the moment the command starts: a signal that
      // comes while it is still starting stops it once it has started. A second one ends it at once.
      const stopRequested = new Promise<void>((resolve) => onCancel(() => resolve()));
      const { DEFAULT_PORT, isLoopback, startServer } = await import('../server.ts');
      const remote = !isLoopback(o.host);
      if (remote && o.allowRemote)
        process.stderr.write(
          `warning: listening on ${o.host}: other machines can reach this server; anyone with the token can train, generate and read your projects. Files outside the projects cannot be named by clients.\n`,
        );
      const server = await startServer({
        host: o.host,
        port: o.port ?? DEFAULT_PORT,
        token: o.token ?? (process.env.SINGLORA_SERVER_TOKEN?.trim() || undefined),
        allowRemote: o.allowRemote,
        serviceOptions: {
          dataDir: o.dataDir,
          modelsDir: o.modelsDir,
          defaultBaseModel: o.base,
          backend: o.backend && o.backend !== 'auto' ? o.backend : undefined,
          queue: serviceQueue(o),
        },
      });
      const queue = server.service.queue.mode === 'redis' ? redacted(serviceQueue(o) ?? '') : null;
      printResult(
        o,
        { event: 'listening', url: server.url, openUrl: server.openUrl, dataDir: server.service.dataDir, queue },
        () =>
          [
            `SingLoRA Studio is serving ${server.service.dataDir}`,
            ...(queue ? [`jobs go to the Redis queue ${queue}: start \`singlora worker\` to run them`] : []),
            `open: ${server.openUrl}`,
            '(the token in this URL is the password of this session; Ctrl-C stops the server)',
          ].join('\n'),
      );
      await stopRequested;
      process.stderr.write('\nstopping: running training pauses at a checkpoint...\n');
      await server.close();
    }),
  );
}

/** The Redis queue to send jobs to: --queue, else SINGLORA_QUEUE; none: jobs run in this process. */
function serviceQueue(o: ServeOptions): string | undefined {
  return o.queue ?? queueFromEnv();
}
