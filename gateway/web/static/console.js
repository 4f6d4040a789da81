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

export { csrf };
