/** The skip-or-fail gate of the suites that start redis-server (see ciRequirements.ts). */
import { it } from 'vitest';
import { IN_CI, needsNote, skipReason } from './ciRequirements.ts';
import { noRedisServer } from './redis.ts';

/**
 * The gate of a suite that needs redis-server: the title to give its describe (with the skip
 * reason when it is skipped) and whether to skip; under CI=true a missing binary is a failing test.
 */
export function redisGate(title: string): { title: string; skip: boolean } {
  const missing = noRedisServer();
  if (missing && IN_CI) it(needsNote('redis-server', title), () => skipReason('redis-server', missing));
  return { title: missing && !IN_CI ? `${title} (${skipReason('redis-server', missing)})` : title, skip: !!missing };
}
