// The teams page: the admin API (/gateway/v1/admin) with the session cookie and its CSRF token. Create a team, edit
// its limits and budget (a merge patch with If-Match), issue, rotate and revoke keys (a new secret is shown once,
// with a copy button), and read the audit trail. Text goes in with textContent only, never innerHTML.
'use strict';
(() => {
  const API = '/gateway/v1/admin';
  const $ = (id) => document.getElementById(id);
  let csrf = '';
  let current = null; // { id, etag }

  function say(text, kind = 'error') {
    const m = $('message');
    m.textContent = text;
    m.dataset.kind = kind;
    m.hidden = !text;
  }

  async function api(method, path, body, headers = {}) {
    const h = { accept: 'application/json', ...headers };
    if (method !== 'GET') h['x-csrf-token'] = csrf;
    if (body !== undefined) h['content-type'] = headers['content-type'] || 'application/json';
    const res = await fetch(API + path, { method, credentials: 'same-origin', cache: 'no-store', headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) {
      window.location.assign('/gateway/admin/');
      throw new Error('signed out');
    }
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw new Error(data && data.detail ? `${data.title}: ${data.detail}` : `the gateway answered ${res.status}`);
    return { data, etag: res.headers.get('etag') };
  }

  const cell = (tr, text, field) => {
    const td = document.createElement('td');
    td.textContent = text === null || text === undefined || text === '' ? '–' : String(text);
    if (field) td.dataset.field = field;
    tr.appendChild(td);
    return td;
  };
  const button = (text, onClick, cls) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    if (cls) b.className = cls;
    b.addEventListener('click', onClick);
    return b;
  };
  const num = (id) => ($(id).value.trim() === '' ? null : Number($(id).value));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : '');

  async function loadTeams() {
    const { data } = await api('GET', '/tenants');
    const rows = document.createDocumentFragment();
    for (const t of data.tenants) {
      const tr = document.createElement('tr');
      tr.dataset.team = t.id;
      cell(tr, t.id, 'id');
      cell(tr, t.source === 'file' ? 'file (read-only)' : 'API', 'source');
      cell(tr, t.rateLimit ? Math.round((t.rateLimit.max * 60000) / t.rateLimit.timeWindow) : '', 'rate');
      cell(tr, t.maxRunning, 'running');
      cell(tr, t.budget && t.budget.creates && t.budget.creates.period === 'day' ? t.budget.creates.max : '', 'budget');
      cell(tr, (t.models || []).join(', '), 'models');
      const td = cell(tr, '');
      td.textContent = '';
      if (t.source === 'api') td.appendChild(button('Manage', () => select(t.id).catch((e) => say(e.message))));
      rows.appendChild(tr);
    }
    $('teams').tBodies[0].replaceChildren(rows);
  }

  async function select(id) {
    const { data, etag } = await api('GET', `/tenants/${encodeURIComponent(id)}`);
    current = { id, etag, data };
    $('team').hidden = false;
    $('team-id').textContent = id;
    $('edit-rate').value = data.rateLimit ? Math.round((data.rateLimit.max * 60000) / data.rateLimit.timeWindow) : '';
    $('edit-running').value = data.maxRunning ?? '';
    $('edit-budget').value = data.budget && data.budget.creates ? data.budget.creates.max : '';
    $('edit-models').value = (data.models || []).join(', ');
    $('secret-box').hidden = true;
    await loadKeys();
  }

  async function loadKeys() {
    const { data } = await api('GET', `/tenants/${encodeURIComponent(current.id)}/keys`);
    const rows = document.createDocumentFragment();
    for (const k of data.keys) {
      const tr = document.createElement('tr');
      tr.dataset.key = k.id;
      cell(tr, k.id, 'id');
      cell(tr, k.name, 'name');
      cell(tr, k.role, 'role');
      cell(tr, when(k.created_at), 'created');
      cell(tr, when(k.expires_at), 'expires');
      cell(tr, when(k.rotated_at), 'rotated');
      cell(tr, when(k.previous_valid_until), 'previous');
      const td = cell(tr, '');
      td.textContent = '';
      td.appendChild(button('Rotate', () => rotate(k.id).catch((e) => say(e.message)), 'rotate'));
      td.appendChild(button('Revoke', () => revoke(k.id).catch((e) => say(e.message)), 'revoke danger'));
      rows.appendChild(tr);
    }
    $('keys').tBodies[0].replaceChildren(rows);
  }

  function showSecret(answer, what) {
    $('secret').value = answer.key;
    $('secret-for').textContent = `${what} ${answer.id}${answer.previous_valid_until ? `; the old secret works until ${when(answer.previous_valid_until)}` : ''}`;
    $('copied').hidden = true;
    $('secret-box').hidden = false;
  }

  async function rotate(keyId) {
    const grace = Number($('grace').value || 0);
    // One Idempotency-Key per click: a retry of a lost answer would get the same secret.
    const { data } = await api('POST', `/tenants/${encodeURIComponent(current.id)}/keys/${keyId}/rotate`, { grace_seconds: grace }, { 'idempotency-key': crypto.randomUUID() });
    showSecret(data, 'new secret of key');
    say(`key ${keyId} rotated`, 'ok');
    await Promise.all([loadKeys(), loadAudit()]);
  }

  async function revoke(keyId) {
    await api('DELETE', `/tenants/${encodeURIComponent(current.id)}/keys/${keyId}`);
    say(`key ${keyId} revoked`, 'ok');
    await Promise.all([loadKeys(), loadAudit()]);
  }

  function change(e) {
    const parts = [];
    for (const k of Object.keys({ ...(e.before || {}), ...(e.after || {}) })) {
      const b = e.before && k in e.before ? JSON.stringify(e.before[k]) : '∅';
      const a = e.after && k in e.after ? JSON.stringify(e.after[k]) : '∅';
      parts.push(`${k}: ${b} → ${a}`);
    }
    return parts.join('; ');
  }

  async function loadAudit() {
    const events = [];
    let after = 0;
    // Oldest first, in pages: keep the newest 50.
    for (let i = 0; i < 100; i++) {
      const { data } = await api('GET', `/audit?after=${after}&limit=1000`);
      events.push(...data.events);
      if (events.length > 50) events.splice(0, events.length - 50);
      if (data.next === null) break;
      after = data.next;
    }
    const rows = document.createDocumentFragment();
    for (const e of events.reverse()) {
      const tr = document.createElement('tr');
      tr.dataset.seq = e.seq;
      cell(tr, e.seq, 'seq');
      cell(tr, when(e.at), 'at');
      cell(tr, e.actor.type === 'team_admin' ? `team admin ${e.actor.tenant}/${e.actor.key_id}` : e.actor.type === 'dashboard_session' ? `dashboard session ${e.actor.session}` : 'admin key', 'actor');
      cell(tr, e.action, 'action');
      cell(tr, e.target.key ? `${e.target.tenant} / ${e.target.key}` : e.target.tenant, 'target');
      cell(tr, change(e), 'change').className = 'detail';
      cell(tr, `${e.ip}${e.user_agent ? ` · ${e.user_agent.slice(0, 40)}` : ''}`, 'from');
      rows.appendChild(tr);
    }
    $('audit').tBodies[0].replaceChildren(rows);
  }

  $('create-team').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const body = { id: $('new-id').value.trim() };
      if (num('new-rate') !== null) body.rateLimit = { max: num('new-rate'), timeWindow: 60000 };
      if (num('new-running') !== null) body.maxRunning = num('new-running');
      if (num('new-budget') !== null) body.budget = { creates: { max: num('new-budget'), period: 'day' } };
      await api('POST', '/tenants', body);
      say(`team ${body.id} created`, 'ok');
      $('create-team').reset();
      await Promise.all([loadTeams(), loadAudit()]);
      await select(body.id);
    } catch (e) {
      say(e.message);
    }
  });

  $('edit-team').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      // A merge patch: an emptied field is null, which removes it.
      const models = $('edit-models').value.split(',').map((m) => m.trim()).filter(Boolean);
      const patch = {
        rateLimit: num('edit-rate') === null ? null : { max: num('edit-rate'), timeWindow: 60000 },
        maxRunning: num('edit-running'),
        // Emptied, the creates budget goes; the budget itself too when it held nothing else.
        budget:
          num('edit-budget') !== null
            ? { creates: { max: num('edit-budget'), period: 'day' } }
            : Object.keys(current.data.budget || {}).some((k) => k !== 'creates') ? { creates: null } : null,
        models: models.length ? models : null,
      };
      const { data, etag } = await api('PATCH', `/tenants/${encodeURIComponent(current.id)}`, patch, { 'content-type': 'application/merge-patch+json', 'if-match': current.etag });
      current.etag = etag;
      current.data = data;
      say(`limits of ${current.id} saved`, 'ok');
      await Promise.all([loadTeams(), loadAudit()]);
    } catch (e) {
      say(e.message);
    }
  });

  $('delete-team').addEventListener('click', async () => {
    try {
      await api('DELETE', `/tenants/${encodeURIComponent(current.id)}`);
      say(`team ${current.id} deleted: its keys and tokens no longer work`, 'ok');
      current = null;
      $('team').hidden = true;
      await Promise.all([loadTeams(), loadAudit()]);
    } catch (e) {
      say(e.message);
    }
  });

  $('issue-key').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const body = { role: $('key-role').value };
      if ($('key-name').value.trim()) body.name = $('key-name').value.trim();
      const { data } = await api('POST', `/tenants/${encodeURIComponent(current.id)}/keys`, body);
      showSecret(data, 'key');
      say(`key ${data.id} issued`, 'ok');
      $('key-name').value = '';
      await Promise.all([loadKeys(), loadAudit()]);
    } catch (e) {
      say(e.message);
    }
  });

  $('copy').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('secret').value);
      $('copied').hidden = false;
    } catch {
      // Without clipboard access: select it for Ctrl+C.
      $('secret').select();
    }
  });

  (async () => {
    try {
      const res = await fetch('/gateway/admin/api/session', { credentials: 'same-origin', cache: 'no-store' });
      if (res.status === 401) return window.location.assign('/gateway/admin/');
      csrf = (await res.json()).csrf;
      await Promise.all([loadTeams(), loadAudit()]);
      document.body.dataset.ready = 'true';
    } catch (e) {
      say(e.message);
    }
  })();
})();
