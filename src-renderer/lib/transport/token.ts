/**
 * The session token of `singlora serve`. It arrives once in the page URL (`/?token=...`), is kept in
 * sessionStorage (per tab, gone when the tab closes) and is removed from the address bar so it does
 * not end up in bookmarks, history or screenshots. The server also set it as an HttpOnly cookie on
 * that load, so another tab or a bookmark (no token here: null) still reaches the API.
 */
export const TOKEN_KEY = 'singlora.token';

export interface TokenEnv {
  location: { href: string };
  history: { replaceState(data: unknown, unused: string, url?: string | URL | null): void; state: unknown };
  sessionStorage: Pick<Storage, 'getItem' | 'setItem'>;
}

export function takeToken(env: TokenEnv): string | null {
  const url = new URL(env.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    env.sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    env.history.replaceState(env.history.state, '', url.pathname + url.search + url.hash);
    return fromUrl;
  }
  return env.sessionStorage.getItem(TOKEN_KEY);
}
