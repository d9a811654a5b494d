import type { SCHEDULERS } from '../../src-main/api/schemas.ts';

/** The contract's sampler ids with the names A1111 users know. */
export const SAMPLER_LABELS: Record<(typeof SCHEDULERS)[number], string> = {
  pndm: 'PNDM',
  ddim: 'DDIM',
  euler: 'Euler',
  'euler-a': 'Euler a',
  'dpmpp-2m': 'DPM++ 2M',
  'dpmpp-2m-karras': 'DPM++ 2M Karras',
};
