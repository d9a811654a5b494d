/**
 * Imported first by main.ts, before any schema exists: zod probes `new Function` once when the
 * first object schema is built, and the page's CSP (no 'unsafe-eval') reports that probe as a
 * violation. jitless skips the probe; validation is the same, only not code-generated.
 */
import { z } from 'zod';

z.config({ jitless: true });
