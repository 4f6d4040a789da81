// LLM OS console: the little the pages need beyond HTML. No inline scripts (the
// Content-Security-Policy forbids them), no build step, no dependencies.

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

// Elements with data-refresh="URL" replace their content with the fragment the URL
// renders (server-side, escaped) every data-every milliseconds, until the fragment
// says data-final. Such a refresh never starts a sign-in (it would disturb one under
// way in another tab) and does not keep an idle session alive: when the session has
// ended the page reloads once, and the person signs in from there.
function refresh(element) {
  const every = Number(element.dataset.every || 2000);
  const tick = async () => {
    if (element.querySelector('[data-final]')) return;
    try {
      const response = await fetch(element.dataset.refresh, {
        credentials: 'same-origin',
        redirect: 'manual',
        headers: { 'X-CSRF-Token': csrf(), 'X-Console-Refresh': '1' },
      });
      if (response.status === 401 || response.type === 'opaqueredirect') {
        window.location.reload();
        return;
      }
      if (response.ok) element.innerHTML = await response.text();
    } catch (error) { /* the next tick tries again */ }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

// A form with data-upload sends its file as the request body (PUT) with a progress
// bar, then goes where the server says.
function upload(form) {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const file = form.querySelector('input[type="file"]').files[0];
    const bar = form.querySelector('progress');
    const status = form.querySelector('[data-status]');
    if (!file) { status.textContent = 'Choose a file first.'; return; }
    const fields = new URLSearchParams();
    for (const input of form.querySelectorAll('input[name]:not([type="file"]), textarea[name], select[name]')) {
      if (input.name !== 'csrf_token') fields.set(input.name, input.value);
    }
    const request = new XMLHttpRequest();
    request.open('PUT', `${form.action}?${fields}`);
    request.setRequestHeader('X-CSRF-Token', csrf());
    request.setRequestHeader('Content-Type', 'application/octet-stream');
    request.upload.addEventListener('progress', (progress) => {
      if (progress.lengthComputable) {
        bar.value = progress.loaded / progress.total;
        status.textContent = `Uploaded ${Math.round(100 * bar.value)} %`;
      }
    });
    request.addEventListener('load', () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (error) { answer = {}; }
      if (request.status === 200 && answer.location) { window.location = answer.location; return; }
      status.textContent = answer.error || `Upload refused (HTTP ${request.status}).`;
      status.classList.add('error');
      // the field the server named is marked, and points at the sentence
      const named = answer.field === 'file' ? form.querySelector('input[type="file"]')
        : form.querySelector(`[name="${answer.field}"]`);
      if (named) {
        status.id = status.id || 'upload-error';
        named.setAttribute('aria-invalid', 'true');
        named.setAttribute('aria-describedby', status.id);
        named.focus();
      }
    });
    request.addEventListener('error', () => { status.textContent = 'The upload failed; try again.'; });
    status.textContent = 'Uploading...';
    request.send(file);
  });
}

// Forms with data-confirm ask before they submit (also those a refresh brought in).
document.addEventListener('submit', (event) => {
  const form = event.target;
  if (form.matches('form[data-confirm]') && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

document.querySelectorAll('[data-refresh]').forEach(refresh);
document.querySelectorAll('form[data-upload]').forEach(upload);

// A turn of a streamed conversation (chat, the assistant): who, and the text so far.
function turn(transcript, role, text) {
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

// POST JSON as the signed-in person; an error status throws the API's own sentence.
async function postJson(url, body) {
  const response = await fetch(url, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (error) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// The server-sent events of a streamed answer, as they arrive: each `data:` line's
// object, until [DONE]; an error event throws its message.
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
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      yield chunk;
    }
  }
}

export { csrf, events, postJson, turn };
