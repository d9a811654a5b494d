/**
 * "Use this model", as ModelBanner and Settings offer it: sets the open project's base model
 * through `onSetBase` (the projects service), `saving` while it runs, then the error it answered
 * (null: done).
 */
export class BaseModelChoice {
  saving = $state(false);
  error = $state<string | null>(null);

  /** `onSetBase` is read at each use, so a component may pass its current prop. */
  constructor(private readonly onSetBase: () => (path: string) => Promise<string | null>) {}

  /** The form's submit handler: uses `path()` as the base model. */
  submit(path: () => string): (e: SubmitEvent) => Promise<void> {
    return async (e) => {
      e.preventDefault();
      this.saving = true;
      try {
        this.error = await this.onSetBase()(path());
      } finally {
        this.saving = false;
      }
    };
  }
}
