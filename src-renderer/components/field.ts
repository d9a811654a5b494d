/** The props every labelled field takes (Field.svelte draws the label, hint and error). */
export interface FieldProps {
  id: string;
  label: string;
  error?: string;
  hint?: string;
  disabled?: boolean;
  testid?: string;
}

/** The attributes Field.svelte hands to the control it labels. */
export interface ControlAttributes {
  id: string;
  disabled?: boolean;
  'aria-invalid': 'true' | undefined;
  'aria-describedby': string | undefined;
  'data-testid': string | undefined;
}
