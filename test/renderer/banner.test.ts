// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, test, vi } from 'vitest';
import ModelBanner from '../../src-renderer/components/ModelBanner.svelte';
import * as fx from './fixtures.ts';

describe('Model banner', () => {
  test('models found after it showed are offered (not the empty first list); the pick is sent', async () => {
    const onSetBase = vi.fn(async () => null);
    const { rerender } = render(ModelBanner, { bases: [], onSetBase });
    const button = screen.getByTestId('banner-set-model') as HTMLButtonElement;
    expect(button.disabled).toBe(true);

    await rerender({ bases: [fx.base({ path: '/models/tiny', name: 'tiny', native: 64 })], onSetBase });
    await waitFor(() => expect((screen.getByTestId('banner-model') as HTMLSelectElement).value).toBe('/models/tiny'));
    expect(button.disabled).toBe(false);
    await fireEvent.click(button);
    expect(onSetBase).toHaveBeenCalledWith('/models/tiny');
  });
});
