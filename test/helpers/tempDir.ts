/**
 * Temporary folders that tests remove when they end (issue 27 item 26: test runs left 12 folders,
 * 60 MB, in the temp dir). `tempDir` at a file's or a suite's top level removes the folder after the
 * file's (suite's) tests; `testTempDir` inside a test removes it when that test ends.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, onTestFinished } from 'vitest';

const newDir = (prefix: string) => mkdtempSync(join(tmpdir(), prefix.endsWith('-') ? prefix : `${prefix}-`));
const remove = (dir: string) => () => rmSync(dir, { recursive: true, force: true });

/** A new folder under the temp dir, removed after the tests of the file or suite that made it. */
export function tempDir(prefix: string): string {
  const dir = newDir(prefix);
  afterAll(remove(dir));
  return dir;
}

/** A new folder under the temp dir, removed when the running test ends. */
export function testTempDir(prefix: string): string {
  const dir = newDir(prefix);
  onTestFinished(remove(dir));
  return dir;
}
