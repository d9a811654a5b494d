/**
 * The layers of the code, as an import graph: every import of src-main/ and src-renderer/ (static,
 * dynamic, `require` and `import type`, which erases at run time but still couples the code) checked against
 * the table of allowed layer dependencies that docs/ARCHITECTURE.md shows (## Layers): the test
 * reads the table from there, so the doc and the check cannot drift apart. Besides the table:
 *
 *   | rule                                                          | why                                        |
 *   | ------------------------------------------------------------- | ------------------------------------------ |
 *   | the table has no cycle, and every file is in one of its rows  | layers, not a web                          |
 *   | no cycle of imports that run code, between files              | load order must not matter                 |
 *   | one importer per native runtime (tfjs, onnxruntime, sharp), and of bullmq | one place picks and starts each |
 *   | electron only under app/; the preload never reaches the UI    | the engine runs anywhere; preload = bridge |
 *   | src-main/ never imports, nor names a path in, scripts/ or test/ | neither is in a packaged app             |
 *   | the host process (server, Electron main, service) never loads TensorFlow.js or onnxruntime | the engine runs in its own process |
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const REPO = resolve(import.meta.dirname, '..');

interface Edge {
  from: string;
  to: string;
  /** `import type` (or every name `type`): no code runs. */
  typeOnly: boolean;
  dynamic: boolean;
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : /\.(ts|svelte)$/.test(n) ? [p] : [];
  });
}

/** Comments removed, so that an import named in a comment is not read as one. */
function code(file: string): string {
  return readFileSync(file, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/<!--[\s\S]*?-->/g, '')
    .replace(/^\s*\/\/.*$/gm, '');
}

/** Imports of one file: repo-relative paths for relative specifiers, package names otherwise. */
function importsOf(file: string): Edge[] {
  const text = code(file);
  const out: Edge[] = [];
  const add = (spec: string, typeOnly: boolean, dynamic: boolean) => {
    const to = spec.startsWith('.')
      ? relative(REPO, resolve(dirname(file), spec))
      : spec.startsWith('node:')
        ? spec
        : spec
            .split('/')
            .slice(0, spec.startsWith('@') ? 2 : 1)
            .join('/');
    out.push({ from: relative(REPO, file), to, typeOnly, dynamic });
  };
  for (const m of text.matchAll(/^\s*(?:import|export)\s+(type\s+)?([^;'"]*?)\s*from\s*['"]([^'"]+)['"]/gm)) {
    const names = m[2].trim();
    const typeOnly =
      Boolean(m[1]) ||
      (/^\{[^}]*\}$/.test(names) &&
        names
          .replace(/[{}\s]/g, '')
          .split(',')
          .filter(Boolean)
          .every((s) => s.startsWith('type')));
    add(m[3], typeOnly, false);
  }
  for (const m of text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)) add(m[1], false, false);
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]/g)) add(m[1], false, true);
  // `require('pkg')` through createRequire loads a package as an import does (backend/tf.ts loads
  // TensorFlow.js so, on first use).
  for (const m of text.matchAll(/\brequire\(\s*['"]([^'"]+)['"]/g)) add(m[1], false, true);
  return out;
}

const files = [...walk(join(REPO, 'src-main')), ...walk(join(REPO, 'src-renderer'))];
const edges = files.flatMap(importsOf);
const local = edges.filter((e) => e.to.startsWith('src-'));

// ---- the table, from docs/ARCHITECTURE.md ----

interface Layer {
  /** Repo-relative path prefixes (a folder ends in `/`). */
  paths: string[];
  mayImport: string[];
}

/** A table cell's backticked paths, repo-relative: under src-main/ unless they start with src-renderer/. */
function cellPaths(cell: string): string[] {
  return Array.from(cell.matchAll(/`([^`]+)`/g), (m) => (m[1].startsWith('src-renderer/') ? m[1] : `src-main/${m[1]}`));
}

function readLayerTable(): Layer[] {
  const doc = readFileSync(join(REPO, 'docs/ARCHITECTURE.md'), 'utf8');
  const section = doc.split(/^## /m).find((s) => s.startsWith('Layers'));
  if (!section) throw new Error('docs/ARCHITECTURE.md: no "## Layers" section (the layer table lives there)');
  const rows = section
    .split('\n')
    .filter((l) => /^\|.*\|\s*$/.test(l) && !/^\|\s*-/.test(l))
    .slice(1) // the header
    .map((l) => l.split('|').slice(1, -1));
  if (rows.some((r) => r.length !== 2))
    throw new Error('docs/ARCHITECTURE.md, ## Layers: expected a two-column table (layer | may import)');
  return rows.map(([layer, mayImport]) => ({ paths: cellPaths(layer), mayImport: cellPaths(mayImport) }));
}

const LAYERS = readLayerTable();

/** The row a file belongs to: the one with the longest path that is a prefix of it. */
function layerOf(file: string): Layer | undefined {
  let best: Layer | undefined;
  let bestLength = -1;
  for (const layer of LAYERS)
    for (const p of layer.paths)
      if ((file === p || (p.endsWith('/') && file.startsWith(p))) && p.length > bestLength) {
        best = layer;
        bestLength = p.length;
      }
  return best;
}

const name = (layer: Layer | undefined) => layer?.paths.join(' ') ?? '(no row)';
const allowed = (from: Layer, to: string) =>
  layerOf(to) === from || from.mayImport.some((p) => to === p || (p.endsWith('/') && to.startsWith(p)));

/** Edges the table forbids today, each with why and who removes it. */
const KNOWN_LAYER_EXCEPTIONS: string[] = [];

/** Cycles of imports that run code, each as its sorted files, that are known and left for now: none. */
const KNOWN_CYCLES: string[] = [];

/** Strongly connected components with more than one node (Tarjan). */
function cycles(nodes: string[], next: (n: string) => string[]): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of next(v)) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1) out.push(component.sort());
  };
  for (const n of nodes) if (!index.has(n)) visit(n);
  return out;
}

/** Everything `entry` loads into its process (static and dynamic imports that run code, transitively). */
function closure(entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    for (const e of edges) {
      if (e.from !== f || e.typeOnly) continue;
      if (e.to.startsWith('src-')) todo.push(e.to);
      else seen.add(e.to);
    }
  }
  return seen;
}

describe('layers (the table in docs/ARCHITECTURE.md)', () => {
  it('reads the graph and the table (sanity)', () => {
    expect(files.length).toBeGreaterThan(150);
    expect(LAYERS.length).toBeGreaterThan(15);
    expect(local.some((e) => e.from === 'src-main/server.ts' && e.to === 'src-main/gateway/dispatch.ts')).toBe(true);
    expect(local.some((e) => e.typeOnly && e.from === 'src-main/app/desktopMethods.ts')).toBe(true);
    expect(local.some((e) => e.dynamic && e.from === 'src-main/cli/serve.ts')).toBe(true);
  });

  it('every source file is in a row, and every path in the table exists', () => {
    const rel = files.map((f) => relative(REPO, f));
    expect(rel.filter((f) => !layerOf(f))).toEqual([]);
    const paths = LAYERS.flatMap((l) => [...l.paths, ...l.mayImport]);
    expect(paths.filter((p) => !rel.some((f) => f === p || (p.endsWith('/') && f.startsWith(p))))).toEqual([]);
  });

  it('the table has no cycle (so neither do the layers)', () => {
    const nodes = LAYERS.map(name);
    const next = (n: string) => {
      const layer = LAYERS.find((l) => name(l) === n)!;
      const targets = files.map((f) => relative(REPO, f)).filter((f) => allowed(layer, f));
      return [...new Set(targets.map((f) => name(layerOf(f))))].filter((m) => m !== n);
    };
    expect(cycles(nodes, next)).toEqual([]);
  });

  it('every import, type imports included, goes to its own layer or one the table allows', () => {
    const bad = local
      .filter((e) => !allowed(layerOf(e.from)!, e.to))
      .map((e) => `${e.from} -> ${e.to}`)
      .filter((v, i, all) => all.indexOf(v) === i);
    const unexpected = bad.filter((v) => !KNOWN_LAYER_EXCEPTIONS.includes(v));
    expect(unexpected, 'imports the table in docs/ARCHITECTURE.md (## Layers) does not allow').toEqual([]);
    expect(bad, 'a known exception is gone: remove it from KNOWN_LAYER_EXCEPTIONS').toEqual(KNOWN_LAYER_EXCEPTIONS);
  });

  it('server.ts imports only the gateway, the service and the contract', () => {
    const targets = local.filter((e) => e.from === 'src-main/server.ts').map((e) => e.to);
    expect(targets.filter((t) => !/^src-main\/(gateway|service|api)\//.test(t))).toEqual([]);
  });
});

describe('cycles and runtimes', () => {
  it('no cycle of imports that run code, between files', () => {
    const next = new Map<string, string[]>();
    for (const e of local) if (!e.typeOnly) next.set(e.from, [...(next.get(e.from) ?? []), e.to]);
    const found = cycles(
      files.map((f) => relative(REPO, f)),
      (n) => next.get(n) ?? [],
    ).map((c) => c.join(' '));
    expect(found).toEqual(KNOWN_CYCLES);
  });

  it('one importer per native runtime; electron only under app/', () => {
    const importers = (pkg: RegExp) => [...new Set(edges.filter((e) => pkg.test(e.to)).map((e) => e.from))].sort();
    expect(importers(/^@tensorflow\//)).toEqual(['src-main/engine/backend/tf.ts']);
    expect(importers(/^onnxruntime/)).toEqual(['src-main/engine/backend/onnxRuntime.ts']);
    expect(importers(/^sharp$/)).toEqual(['src-main/engine/image/sharp.ts']);
    // Not native, but one door too: the Redis queue (issue 29).
    expect(importers(/^bullmq$/)).toEqual(['src-main/service/redisQueue.ts']);
    expect(importers(/^electron$/).filter((f) => !f.startsWith('src-main/app/'))).toEqual([]);
  });

  it("Electron's preload never reaches renderer code", () => {
    expect([...closure('src-main/app/preload.ts')].filter((f) => f.startsWith('src-renderer/'))).toEqual([]);
  });

  it('src-main/ never imports scripts/ or test/, nor names a path in them', () => {
    const main = files.filter((f) => relative(REPO, f).startsWith('src-main/'));
    expect(edges.filter((e) => /^(scripts|test)\//.test(e.to)).map((e) => `${e.from} -> ${e.to}`)).toEqual([]);
    const named = main.filter((f) => /['"`](\.{1,2}\/)*(test|scripts)\//.test(code(f)));
    expect(named.map((f) => relative(REPO, f))).toEqual([]);
  });

  it('the host process (server, Electron main, service) never loads TensorFlow.js or onnxruntime', () => {
    for (const entry of ['src-main/server.ts', 'src-main/app/main.ts', 'src-main/service/service.ts']) {
      const loaded = [...closure(entry)];
      expect(
        loaded.filter((f) => /^@tensorflow\/|^onnxruntime|^src-main\/engine\/backend\/|engineWorker\.ts$/.test(f)),
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

  it('finds a cycle and a forbidden edge when there is one', () => {
    const next: Record<string, string[]> = { a: ['b'], b: ['c'], c: ['a'], d: ['a'] };
    expect(cycles(Object.keys(next), (n) => next[n])).toEqual([['a', 'b', 'c']]);
    const io = layerOf('src-main/engine/io/safetensors.ts')!;
    expect(allowed(io, 'src-main/engine/models/layers/module.ts')).toBe(false);
    expect(allowed(layerOf('src-main/engine/models/layers/module.ts')!, 'src-main/engine/io/safetensors.ts')).toBe(
      true,
    );
  });
});
