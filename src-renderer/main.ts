/** Entry point: pick the transport, build the services, mount the app. */
import './lib/zodSetup.ts';
import './styles.css';
import { mount } from 'svelte';
import App from './App.svelte';
import { createStudio } from './lib/studio.svelte.ts';
import { connect } from './lib/transport/index.ts';

const studio = createStudio(connect(window), {
  validate: import.meta.env.DEV,
  storage: window.localStorage,
  clipboard: navigator.clipboard ?? null,
  window,
});

mount(App, { target: document.getElementById('app')!, props: { studio } });
void studio.start();
window.addEventListener('beforeunload', () => studio.stop());
