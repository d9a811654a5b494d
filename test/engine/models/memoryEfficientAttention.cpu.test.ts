/** The memory-efficient attention's contract on the cpu backend (batched groups, not one at a time). */
import { useBackend } from '../../helpers/backend.ts';
import { memoryEfficientAttentionSuite } from '../../helpers/attentionCases.ts';

useBackend('cpu');
memoryEfficientAttentionSuite();
