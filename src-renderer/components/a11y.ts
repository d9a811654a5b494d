/** The id an input's aria-describedby should point at: its error, else its hint. */
export function describedBy(id: string, error?: string | null, hint?: string | null): string | undefined {
  return error ? `${id}-error` : hint ? `${id}-hint` : undefined;
}
