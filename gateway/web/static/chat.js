// The chat playground: streams an answer from the OpenAI-compatible endpoint
// (server-sent events) into the page, then shows its usage and timings.
import { events, postJson, turn as addTurn } from './console.js';

const form = document.getElementById('chat');
const transcript = document.getElementById('transcript');
const stats = document.getElementById('chat-stats');
const failure = document.getElementById('chat-error');
const history = [];
const turn = (role, text) => addTurn(transcript, role, text);

function number(name) {
  const value = form.elements[name].value;
  return value === '' ? undefined : Number(value);
}

async function send() {
  const prompt = form.elements.prompt.value.trim();
  if (!prompt) return;
  failure.textContent = '';
  stats.textContent = '';
  const messages = [];
  const system = form.elements.system.value.trim();
  if (system) messages.push({ role: 'system', content: system });
  messages.push(...history, { role: 'user', content: prompt });
  turn('you', prompt);
  const answer = turn('assistant', '');
  answer.setAttribute('data-answer', 'streaming');
  form.elements.prompt.value = '';
  const body = {
    model: form.elements.model.value, messages, stream: true,
    stream_options: { include_usage: true },
    temperature: number('temperature'), top_p: number('top_p'),
    max_tokens: number('max_tokens'), seed: number('seed'),
  };
  const started = performance.now();
  let first = 0;
  let usage = null;
  let finish = '';
  const button = document.getElementById('send');
  button.disabled = true;
  try {
    const response = await postJson('/console/chat/completions', body);
    for await (const chunk of events(response)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          if (!first) first = performance.now();
          answer.textContent += choice.delta.content;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    history.push({ role: 'user', content: prompt }, { role: 'assistant', content: answer.textContent });
    const total = (performance.now() - started) / 1000;
    const parts = [];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (first) parts.push(`first token after ${((first - started) / 1000).toFixed(2)} s`);
    parts.push(`${total.toFixed(2)} s in all`);
    if (usage && total > 0) parts.push(`${(usage.completion_tokens / total).toFixed(1)} tokens/s`);
    if (finish) parts.push(`finished: ${finish}`);
    stats.textContent = parts.join(' · ');
    answer.setAttribute('data-answer', 'done');
  } catch (error) {
    failure.textContent = error.message;
    answer.setAttribute('data-answer', 'failed');
  } finally {
    button.disabled = false;
  }
}

form.addEventListener('submit', (event) => { event.preventDefault(); send(); });
form.elements.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
});
document.getElementById('clear').addEventListener('click', () => {
  history.length = 0;
  transcript.textContent = '';
  stats.textContent = '';
});
