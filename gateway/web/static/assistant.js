// The customer-service assistant: streams an answer from the applications' endpoint
// (server-sent events) into the page, lists the passages it cites, keeps the
// conversation going, and hands it to a person on request.
import { csrf } from './console.js';

const form = document.getElementById('ask');
const transcript = document.getElementById('transcript');
const citations = document.getElementById('citations');
const noCitations = document.getElementById('citations-empty');
const status = document.getElementById('assistant-status');
const failure = document.getElementById('assistant-error');
const buttons = ['send', 'handoff'].map((id) => document.getElementById(id));
const HANDOFF_REASON = 'I would like to talk to a person.';
// the conversation the next question continues ('' : a new one), and its knowledge base
let conversation = '';
let conversationBase = '';

function turn(role, text) {
  const block = document.createElement('div');
  block.className = 'turn';
  const who = document.createElement('div');
  who.className = 'role';
  who.textContent = role;
  const body = document.createElement('div');
  body.className = 'answer';
  body.textContent = text;
  block.append(who, body);
  transcript.append(block);
  return body;
}

// the passages an answer rests on, numbered as the answer cites them ([1], [2], ...)
function cite(list) {
  citations.textContent = '';
  for (const citation of list) {
    const item = document.createElement('li');
    item.value = citation.number;
    item.dataset.document = citation.document;
    const source = document.createElement('strong');
    source.className = 'source';
    source.textContent = citation.document;
    const where = document.createElement('span');
    where.className = 'help';
    where.textContent = ` · chunk ${citation.chunk} · score ${Number(citation.score).toFixed(2)}`;
    const passage = document.createElement('blockquote');
    passage.className = 'passage';
    passage.textContent = citation.text;
    item.append(source, where, passage);
    citations.append(item);
  }
  noCitations.textContent = list.length ? '' : 'This answer cites no passage.';
}

// the events of an answer, as they arrive: each `data:` line's object, until [DONE]
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(0, end).replace(/^data: /, '');
      buffer = buffer.slice(end + 2);
      if (data === '[DONE]') return;
      yield JSON.parse(data);
    }
  }
}

async function ask(handoff) {
  const base = form.elements.knowledge_base.value.trim();
  let question = form.elements.question.value.trim();
  if (!base) { failure.textContent = 'Choose a knowledge base first.'; return; }
  if (!question && !handoff) return;
  if (!question) question = HANDOFF_REASON;
  if (base !== conversationBase) conversation = '';
  failure.textContent = '';
  status.textContent = '';
  turn('you', question);
  const answer = turn(handoff ? 'handoff' : 'assistant', '');
  answer.setAttribute('data-answer', 'streaming');
  form.elements.question.value = '';
  const body = { question, stream: true, handoff };
  if (conversation) body.conversation_id = conversation;
  const maxTokens = form.elements.max_tokens.value;
  if (maxTokens !== '') body.max_tokens = Number(maxTokens);
  for (const button of buttons) button.disabled = true;
  try {
    const response = await fetch(`/console/assistant/${encodeURIComponent(base)}/ask`, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).error.message; } catch (error) { /* not JSON */ }
      throw new Error(message);
    }
    let usage = null;
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.conversation_id) {
        conversation = chunk.conversation_id;
        conversationBase = base;
        answer.setAttribute('data-answered', String(Boolean(chunk.answered)));
        if (!handoff) cite(chunk.citations || []);
        if (chunk.handed_off) answer.setAttribute('data-handed-off', 'true');
      }
      if (chunk.delta) answer.textContent += chunk.delta;
      if (chunk.usage) usage = chunk.usage;
    }
    const parts = [];
    if (answer.getAttribute('data-handed-off')) parts.push('handed to a person');
    else if (answer.getAttribute('data-answered') === 'false') parts.push('nothing relevant found');
    if (usage && usage.completion_tokens) {
      parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    }
    status.textContent = parts.join(' · ');
    answer.setAttribute('data-answer', 'done');
  } catch (error) {
    failure.textContent = error.message;
    answer.setAttribute('data-answer', 'failed');
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

form.addEventListener('submit', (event) => { event.preventDefault(); ask(false); });
form.elements.question.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); ask(false); }
});
document.getElementById('handoff').addEventListener('click', () => ask(true));
document.getElementById('clear').addEventListener('click', () => {
  conversation = '';
  transcript.textContent = '';
  citations.textContent = '';
  status.textContent = '';
  failure.textContent = '';
  noCitations.textContent = 'The passages the latest answer cites appear here.';
});
