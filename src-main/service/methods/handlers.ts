import type { ApiHandlers, Method } from '../../api/contract.ts';

/** The handlers of one namespace (`'training'`: every `training.*` method). */
export type NamespaceHandlers<NS extends string> = {
  [M in Method as M extends `${NS}.${string}` ? M : never]: ApiHandlers[M];
};
