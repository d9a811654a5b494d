/** The link to the engine: the transport's event channel, and the engine's own `engine.status`. */
import type { EventData } from '../../src-main/api/contract.ts';
import type { EventHub } from './events.ts';
import type { ConnectionState, Transport } from './transport/types.ts';

export class ConnectionService {
  state = $state<ConnectionState>({ status: 'connecting' });
  engine = $state<EventData<'engine.status'> | null>(null);

  constructor(
    private readonly transport: Transport,
    hub: EventHub,
  ) {
    hub.on('engine.status', (s) => (this.engine = s));
  }

  get kind(): Transport['kind'] {
    return this.transport.kind;
  }

  setState(s: ConnectionState): void {
    this.state = s;
  }

  retryNow(): void {
    this.transport.reconnectNow();
  }
}
