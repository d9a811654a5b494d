import { SAMPLER_DISPLAY_NAMES, type SCHEDULERS } from '../../src-main/api/schemas.ts';

/** The contract's sampler ids with the names A1111 users know. */
export const SAMPLER_LABELS: Record<(typeof SCHEDULERS)[number], string> = SAMPLER_DISPLAY_NAMES;
