/**
 * Jobs as data (issue 29): paths a job carries are relative to the project or the models folder,
 * so another machine that mounts the share elsewhere finds them; job data read back is validated
 * and a bad field is named.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { localPath, parseJobData, queueOf, sharedPath, type PathRoots } from '../../src-main/service/jobData.ts';

const here: PathRoots = { projectDir: (id) => join('/srv/share/projects', id), modelsDir: '/srv/share/models' };
const there: PathRoots = { projectDir: (id) => join('/mnt/studio/projects', id), modelsDir: '/mnt/studio/models' };

describe('job data', () => {
  it('carries project and models paths relative, so a worker mounting the share elsewhere finds them', () => {
    const photo = sharedPath(here, 'rex-1a2b3c', '/srv/share/projects/rex-1a2b3c/photos/a.png');
    const base = sharedPath(here, 'rex-1a2b3c', '/srv/share/models/toy-sd');
    const host = sharedPath(here, 'rex-1a2b3c', '/home/me/class-images');
    expect([photo, base, host]).toEqual([
      { in: 'project', rel: 'photos/a.png' },
      { in: 'models', rel: 'toy-sd' },
      { in: 'host', path: '/home/me/class-images' },
    ]);
    expect(localPath(there, 'rex-1a2b3c', photo)).toBe('/mnt/studio/projects/rex-1a2b3c/photos/a.png');
    expect(localPath(there, 'rex-1a2b3c', base)).toBe('/mnt/studio/models/toy-sd');
    expect(localPath(there, 'rex-1a2b3c', host)).toBe('/home/me/class-images');
    // The project folder itself and a sibling project are not "inside the project".
    expect(sharedPath(here, 'rex-1a2b3c', '/srv/share/projects/other-000000/x.png')).toEqual({
      in: 'host',
      path: '/srv/share/projects/other-000000/x.png',
    });
  });

  it('refuses a carried path that leaves its folder', () => {
    expect(() => localPath(there, 'rex-1a2b3c', { in: 'project', rel: '../other/photos/a.png' })).toThrow(
      /the project path '..\/other\/photos\/a.png' leaves its folder/,
    );
    expect(() => localPath(there, null, { in: 'project', rel: 'photos/a.png' })).toThrow(/belongs to no project/);
  });

  it('validates job data read back, naming the field, and routes each kind to its queue', () => {
    const data = {
      kind: 'download',
      projectId: null,
      runId: null,
      params: { name: 'dino' },
    };
    expect(parseJobData(JSON.parse(JSON.stringify(data)), 'queue job j1')).toEqual(data);
    expect(() => parseJobData({ ...data, params: {} }, 'queue job j1')).toThrow(
      /^queue job j1: not a valid job \(params\.name: /,
    );
    expect(() => parseJobData({ ...data, kind: 'mine bitcoin' }, 'queue job j2')).toThrow(
      /^queue job j2: not a valid job/,
    );
    expect(['train', 'generate', 'evaluate', 'export', 'download'].map((k) => queueOf(k as never))).toEqual([
      'train',
      'engine',
      'engine',
      'engine',
      'io',
    ]);
  });
});
