/**
 * The Redis the queue suites stand on (test/helpers/redis.ts): a password is required, a restart
 * keeps the port, and with appendonly the keys survive it (what the restart scenario relies on);
 * without appendonly they do not, so the scenario's check can fail.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { RedisReplyError, TestRedis } from '../helpers/redis.ts';
import { redisGate } from '../helpers/redisGate.ts';

const gate = redisGate('the test Redis (redis-server on a free port)');

describe.skipIf(gate.skip)(gate.title, () => {
  const started: TestRedis[] = [];
  afterAll(async () => {
    for (const r of started) await r.dispose();
  });
  const start = async (appendonly: boolean) => {
    const r = await TestRedis.start({ appendonly });
    started.push(r);
    return r;
  };

  it('answers with its password only, and keeps its keys over a restart when appendonly is on', async () => {
    const redis = await start(true);
    expect(redis.url).toBe(`redis://:${redis.password}@127.0.0.1:${redis.port}`);
    await expect(redis.commandAs(null, ['GET', 'k'])).rejects.toThrow(RedisReplyError);
    await expect(redis.commandAs(null, ['GET', 'k'])).rejects.toThrow(/NOAUTH/);
    await expect(redis.commandAs('wrong', ['GET', 'k'])).rejects.toThrow(/WRONGPASS/);
    expect(await redis.command('SET', 'k', 'v1')).toBe('OK');
    expect(await redis.command('RPUSH', 'list', 'a', 'b')).toBe(2);
    await redis.stop();
    expect(redis.isRunning).toBe(false);
    await expect(redis.command('PING')).rejects.toThrow(/ECONNREFUSED/);
    await redis.restart();
    expect(await redis.command('GET', 'k')).toBe('v1');
    expect(await redis.command('LRANGE', 'list', '0', '-1')).toEqual(['a', 'b']);
  });

  it('without appendonly a restart loses the keys', async () => {
    const redis = await start(false);
    await redis.command('SET', 'k', 'v1');
    await redis.stop();
    await redis.restart();
    expect(await redis.command('GET', 'k')).toBeNull();
  });
});
