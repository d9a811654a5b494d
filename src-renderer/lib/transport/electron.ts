/**
 * Electron transport: the preload exposes exactly `window.singlora = { invoke, onEvent }` (see
 * GitButler's 20-line preload: it only carries the transport, and checks the method name).
 * Responses use the same {ok, result|error} envelope as HTTP. IPC has no connection to lose; the
 * engine's own health arrives as `engine.status` events.
 */
import { isSingloraBridge, type SingloraBridge } from '../../../src-main/api/bridge.ts';
import type { Method } from '../../../src-main/api/contract.ts';
import { unwrap } from './envelope.ts';
import type { Transport } from './types.ts';

export { isSingloraBridge, type SingloraBridge };

export function createElectronTransport(bridge: SingloraBridge): Transport {
  return {
    kind: 'electron',
    async request(method: Method, params: unknown) {
      // The contract is JSON; a JSON copy also turns Svelte state proxies into plain objects,
      // which IPC's structured clone would reject.
      return unwrap(method, await bridge.invoke(method, JSON.parse(JSON.stringify(params ?? {}))));
    },
    onEvent: (listener) => bridge.onEvent(listener),
    onConnection(listener) {
      listener({ status: 'open' });
      return () => {};
    },
    reconnectNow() {},
    // The Electron shell serves /files/ on the page's own origin (custom protocol); URLs pass as-is.
    fileUrl: (url) => url,
    close() {},
  };
}
