/**
 * The layers of src-main/, as an import graph (static imports that survive compilation: `import
 * type` erases; dynamic `import()` is followed where it loads code into the same process).
 *
 *   | rule                                                        | why                                            |
 *   | ----------------------------------------------------------- | ---------------------------------------------- |
 *   | service/ never imports cli/ or gateway/                      | the CLI and the front doors sit above it       |
 *   | app/preload.ts never reaches src-renderer/                  | the preload only carries the transport         |
 *   | src-main/ never imports scripts/ or test/                   | neither is in a packaged app                   |
 *   | engine/io/ never imports engine/models/                     | io reads files; models build on it             |
 *   | the host process (server, Electron main, service) never loads TensorFlow.js or onnxruntime | the engine runs in its own process |
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const REPO = resolve(import.meta.dirname, '..');
const SRC = join(REPO, 'src-main');

interface Edge {
  from: string;
  to: string;
  dynamic: boolean;
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : /\.ts$/.test(n) ? [p] : [];
  });
}

/** Value imports of one file: repo-relative paths for relative specifiers, package names otherwise. */
function importsOf(file: string): Edge[] {
  const text = readFileSync(file, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const out: Edge[] = [];
  const add = (spec: string, dynamic: boolean) => {
    const to = spec.startsWith('.')
      ? relative(REPO, resolve(dirname(file), spec))
      : spec.startsWith('node:')
        ? spec
        : spec
            .split('/')
            .slice(0, spec.startsWith('@') ? 2 : 1)
            .join('/');
    out.push({ from: relative(REPO, file), to, dynamic });
  };
  for (const m of text.matchAll(/^\s*(?:import|export)\s+(type\s+)?([^;'"]*?)\s*from\s*['"]([^'"]+)['"]/gm)) {
    const typeOnly =
      Boolean(m[1]) ||
      (/^\{[^}]*\}$/.test(m[2].trim()) &&
        m[2]
          .replace(/[{}\s]/g, '')
          .split(',')
          .filter(Boolean)
          .every((s) => s.startsWith('type')));
    if (!typeOnly) add(m[3], false);
  }
  for (const m of text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)) add(m[1], false);
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) add(m[1], true);
  return out;
}

const files = walk(SRC);
const edges = files.flatMap(importsOf);
const violations = (pred: (e: Edge) => boolean) => edges.filter(pred).map((e) => `${e.from} -> ${e.to}`);

/** Everything `entry` loads into its process (static and dynamic imports, transitively). */
function closure(entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    for (const e of edges) if (e.from === f && e.to.endsWith('.ts')) todo.push(e.to);
    for (const e of edges) if (e.from === f && !e.to.endsWith('.ts')) seen.add(e.to);
  }
  return seen;
}

describe('layers', () => {
  it('reads the graph (sanity)', () => {
    expect(files.length).toBeGreaterThan(100);
    expect(edges.some((e) => e.from === 'src-main/server.ts' && e.to === 'src-main/gateway/dispatch.ts')).toBe(true);
  });

  it('the service never imports the CLI or the gateway', () => {
    expect(
      violations(
        (e) =>
          e.from.startsWith('src-main/service/') &&
          /^src-main\/(cli|gateway)\/|^src-main\/(cli|server)\.ts$/.test(e.to),
      ),
    ).toEqual([]);
  });

  it("Electron's preload never reaches renderer code", () => {
    expect([...closure('src-main/app/preload.ts')].filter((f) => f.startsWith('src-renderer/'))).toEqual([]);
  });

  it('shipped code never imports scripts/ or test/', () => {
    // The demo runs on the committed toy model (models/toy-sd), so it no longer builds the tiny
    // model with scripts/make-tiny-model.ts (issue 17).
    expect(violations((e) => /^(scripts|test)\//.test(e.to))).toEqual([]);
  });

  it('engine/io never imports engine/models', () => {
    // Left to the engine's owners: the component-folder loader walks a module tree with loadParams.
    const known = ['src-main/engine/io/componentFolder.ts -> src-main/engine/models/layers/module.ts'];
    expect(
      violations((e) => e.from.startsWith('src-main/engine/io/') && e.to.startsWith('src-main/engine/models/')),
    ).toEqual(known);
  });

  it('the host process (server, Electron main, service) never loads TensorFlow.js or onnxruntime', () => {
    for (const entry of ['src-main/server.ts', 'src-main/app/main.ts', 'src-main/service/service.ts']) {
      const loaded = [...closure(entry)];
      expect(
        loaded.filter((f) =>
          /^@tensorflow\/|^onnxruntime|^src-main\/engine\/(backend\/tf|eval\/onnx)\.ts$|engineWorker\.ts$/.test(f),
        ),
        entry,
      ).toEqual([]);
    }
  });
});

describe('the checker itself', () => {
  it('sees TensorFlow.js in the engine process and the CLI (which run the engine)', () => {
    expect(closure('src-main/service/engineWorker.ts').has('src-main/engine/backend/tf.ts')).toBe(true);
    expect(closure('src-main/cli.ts').has('src-main/engine/backend/tf.ts')).toBe(true);
    expect(closure('src-main/server.ts').size).toBeGreaterThan(30);
  });
});
