// The customer-service assistant: streams an answer from the applications' endpoint
// (server-sent events) into the page, lists the passages it cites, keeps the
// conversation going, and hands it to a person on request.
import { events, postJson, turn as addTurn } from './console.js';

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
const turn = (role, text) => addTurn(transcript, role, text);

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
    const response = await postJson(`/console/assistant/${encodeURIComponent(base)}/ask`, body);
    let usage = null;
    for await (const chunk of events(response)) {
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
