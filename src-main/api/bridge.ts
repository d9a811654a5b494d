/**
 * What the Electron preload exposes as `window.singlora`, and all it exposes: the transport of
 * the contract (one invoke, one event stream). The preload implements it; the renderer's
 * Electron transport uses it. Types only, so both sides can import it.
 */
export interface SingloraBridge {
  invoke(method: string, params: unknown): Promise<unknown>;
  onEvent(cb: (name: string, data: unknown) => void): () => void;
}

export function isSingloraBridge(v: unknown): v is SingloraBridge {
  const b = v as Partial<SingloraBridge> | null | undefined;
  return typeof b?.invoke === 'function' && typeof b?.onEvent === 'function';
}
