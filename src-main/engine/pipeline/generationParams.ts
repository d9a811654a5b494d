/**
 * Generation parameters as A1111 writes them into a PNG's `parameters` text chunk, which
 * A1111, ComfyUI, InvokeAI and Civitai read back:
 *
 *   <prompt>
 *   Negative prompt: <negative>
 *   Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, Clip skip: 2, Lora hashes: "subject: 0123456789ab", Version: SingLoRA Studio 0.1.0
 *
 * Conventions: `Model hash` is A1111's short hash (first 10 hex digits of the SHA-256 of the
 * UNet weights here), `Lora hashes` carries the first 12 hex digits of each adapter's SHA-256,
 * and `Clip skip` is A1111's count, which is diffusers' `clip_skip + 1`.
 */
export interface GenerationParams {
  prompt: string;
  negativePrompt: string;
  steps: number;
  /** A1111 display name, e.g. 'DPM++ 2M Karras'. */
  sampler: string;
  guidanceScale: number;
  seed: number;
  width: number;
  height: number;
  modelName: string;
  modelSha256: string;
  /** diffusers' clip_skip (0 or undefined = last layer). */
  clipSkip?: number;
  adapters: Array<{ name: string; sha256: string; strength: number }>;
  version: string;
}

/** Values with a comma, colon or quote are quoted as A1111 does. */
function value(v: string): string {
  return /[,:"\n]/.test(v) ? JSON.stringify(v) : v;
}

export function formatA1111Parameters(p: GenerationParams): string {
  const fields: Array<[string, string]> = [
    ['Steps', String(p.steps)],
    ['Sampler', p.sampler],
    ['CFG scale', String(p.guidanceScale)],
    ['Seed', String(p.seed)],
    ['Size', `${p.width}x${p.height}`],
    ['Model hash', p.modelSha256.slice(0, 10)],
    ['Model', p.modelName],
  ];
  if (p.clipSkip) fields.push(['Clip skip', String(p.clipSkip + 1)]);
  if (p.adapters.length) {
    fields.push(['Lora hashes', p.adapters.map((a) => `${a.name}: ${a.sha256.slice(0, 12)}`).join(', ')]);
    fields.push(['Lora weights', p.adapters.map((a) => `${a.name}: ${a.strength}`).join(', ')]);
  }
  fields.push(['Version', p.version]);
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(fields.map(([k, v]) => `${k}: ${value(v)}`).join(', '));
  return lines.join('\n');
}

/**
 * Parses the A1111 `parameters` text back (for "copy parameters" and for tests): prompt,
 * negative prompt, and the key/value fields of the last line.
 */
export function parseA1111Parameters(text: string): {
  prompt: string;
  negativePrompt: string;
  fields: Record<string, string>;
} {
  const lines = text.split('\n');
  const last = lines.pop() ?? '';
  let negativePrompt = '';
  const promptLines: string[] = [];
  let inNegative = false;
  for (const line of lines) {
    if (line.startsWith('Negative prompt: ')) {
      inNegative = true;
      negativePrompt = line.slice('Negative prompt: '.length);
    } else if (inNegative) negativePrompt += `\n${line}`;
    else promptLines.push(line);
  }
  const fields: Record<string, string> = {};
  const re = /\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(last)) !== null) {
    if (!m[0]) break;
    fields[m[1].trim()] = m[2].startsWith('"') ? (JSON.parse(m[2]) as string) : m[2].trim();
  }
  return { prompt: promptLines.join('\n'), negativePrompt, fields };
}
