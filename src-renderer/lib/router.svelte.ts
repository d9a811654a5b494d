/** Which screen is shown; kept in the URL hash (#/train) so reloads and the back button work. */
export const SCREENS = [
  { id: 'subject', label: 'Subject' },
  { id: 'train', label: 'Train' },
  { id: 'evaluate', label: 'Evaluate' },
  { id: 'generate', label: 'Generate' },
  { id: 'export', label: 'Export' },
  { id: 'settings', label: 'Models & Settings' },
] as const;
export type ScreenId = (typeof SCREENS)[number]['id'];

function parse(hash: string): ScreenId {
  const id = hash.replace(/^#\/?/, '');
  return (SCREENS.find((s) => s.id === id)?.id ?? 'subject') as ScreenId;
}

export class Router {
  current = $state<ScreenId>('subject');
  #stop: (() => void) | null = null;

  constructor(private readonly win?: Pick<Window, 'location' | 'addEventListener' | 'removeEventListener'>) {
    if (win) this.current = parse(win.location.hash);
  }

  start(): void {
    if (!this.win || this.#stop) return;
    const onHash = () => (this.current = parse(this.win!.location.hash));
    this.win.addEventListener('hashchange', onHash);
    this.#stop = () => this.win!.removeEventListener('hashchange', onHash);
  }

  go(id: ScreenId): void {
    this.current = id;
    if (this.win && this.win.location.hash !== `#/${id}`) this.win.location.hash = `#/${id}`;
  }

  stop(): void {
    this.#stop?.();
    this.#stop = null;
  }
}
