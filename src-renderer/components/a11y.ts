import { tick } from 'svelte';

/** The id an input's aria-describedby should point at: its error, else its hint. */
export function describedBy(id: string, error?: string | null, hint?: string | null): string | undefined {
  return error ? `${id}-error` : hint ? `${id}-hint` : undefined;
}

/**
 * After a refused submit: focuses the first field marked invalid inside `root` (opening the
 * <details> that hides it, such as Train's Advanced), so an error below the fold is not missed.
 */
export async function focusFirstInvalid(root: HTMLElement | null | undefined): Promise<void> {
  await tick();
  const field = root?.querySelector<HTMLElement>('[aria-invalid="true"]');
  if (!field) return;
  const details = field.closest('details');
  if (details && !details.open) details.open = true;
  field.focus();
  field.scrollIntoView?.({ block: 'center' });
}

/**
 * A form's submit handler: runs `action` (which answers false when it refused the form) and then
 * focuses the first invalid field of that form (`focusFirstInvalid`). For `<form onsubmit={...}>`.
 */
export function submitOrFocus(action: () => Promise<boolean>): (e: SubmitEvent) => Promise<void> {
  return async (e) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLElement; // currentTarget is null once the event is over
    if (!(await action())) await focusFirstInvalid(form);
  };
}
