import { useBackend } from '../helpers/backend.ts';
import { opsSuite } from '../helpers/opsSuite.ts';

useBackend('cpu');
opsSuite('cpu');
