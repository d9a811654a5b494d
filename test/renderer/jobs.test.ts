// @vitest-environment jsdom
import { fireEvent, render, screen } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import JobsIndicator from '../../src-renderer/components/JobsIndicator.svelte';
import * as fx from './fixtures.ts';

describe('Jobs dropdown', () => {
  test('closes on Escape (focus back on its button) and on a click outside; a click inside keeps it open', async () => {
    render(JobsIndicator, { jobs: [fx.job({ id: 'j1' })], projectNames: { p1: 'My dog' }, onCancel: () => {} });
    const details = screen.getByTestId('jobs-indicator') as HTMLDetailsElement;
    const summary = details.querySelector('summary')!;
    const open = async () => {
      details.open = true;
      await fireEvent(details, new Event('toggle'));
      expect(details.open).toBe(true);
    };

    await open();
    await fireEvent.keyDown(window, { key: 'Escape' });
    expect(details.open).toBe(false);
    expect(document.activeElement).toBe(summary);

    await open();
    await fireEvent.pointerDown(screen.getByTestId('job-owner'));
    expect(details.open).toBe(true);
    await fireEvent.pointerDown(document.body);
    expect(details.open).toBe(false);
  });
});
