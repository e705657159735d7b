// The dashboard page: reads /gateway/admin/api/overview every few seconds with the session cookie and draws it.
// Everything goes in with textContent (never innerHTML), so a tenant id or an error detail cannot become markup.
'use strict';
(() => {
  const REFRESH_MS = 3000;
  const $ = (id) => document.getElementById(id);
  let csrf = '';
  const charts = {};

  const fmt = (n, digits = 0) => (n === null || n === undefined ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 }));
  const cell = (tr, text, opts = {}) => {
    const td = document.createElement('td');
    td.textContent = text;
    if (opts.field) td.dataset.field = opts.field;
    if (opts.cls) td.className = opts.cls;
    if (opts.title) td.title = opts.title;
    tr.appendChild(td);
    return td;
  };

  function budgetText(t, currency) {
    if (!t.budget) return '–';
    return Object.entries(t.budget)
      .map(([name, b]) => {
        const unit = name === 'cost' ? ` ${b.currency || currency || ''}`.trimEnd() : name === 'predictTimeSeconds' ? ' s' : '';
        return `${name} ${fmt(b.spent + b.reserved, 2)} / ${fmt(b.max, 2)}${unit} per ${b.period}`;
      })
      .join(' · ');
  }

  function renderTenants(o) {
    const body = $('tenants').tBodies[0];
    const rows = document.createDocumentFragment();
    for (const t of o.tenants) {
      const tr = document.createElement('tr');
      tr.dataset.tenant = t.id;
      cell(tr, t.id, { field: 'id' });
      cell(tr, fmt(t.today.creates ?? 0), { field: 'today-creates' });
      cell(tr, fmt(t.today.predict_time ?? 0, 2), { field: 'today-predict-time' });
      cell(tr, fmt(t.today.rate_limited), { field: 'today-429', cls: t.today.rate_limited ? 'nonzero' : '' });
      cell(tr, fmt(t.today.errors), { field: 'today-errors', cls: t.today.errors ? 'nonzero' : '' });
      cell(tr, fmt(t.month.creates ?? 0), { field: 'month-creates' });
      cell(tr, fmt(t.month.predict_time ?? 0, 2), { field: 'month-predict-time' });
      cell(tr, budgetText(t, o.currency), { field: 'budget' });
      const r = t.running;
      const running = `${r.counted === 'index' ? '≈' : ''}${fmt(r.count)}${r.max !== null ? ` / ${r.max}` : ''}`;
      cell(tr, running, { field: 'running', title: r.counted === 'index' ? 'from the newest predictions of the last day not seen ending' : 'exact (budget or maxRunning)' });
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
    $('period').textContent = `day ${o.day} (UTC), month ${o.month}`;
  }

  function renderHealth(o) {
    const open = o.replicas.some((r) => r.live && r.upstreamBreaker === 'open');
    $('breaker').textContent = open ? 'open' : 'closed';
    $('breaker').className = `big ${open ? 'bad' : 'ok'}`;
    const tenants = [...new Set(o.replicas.filter((r) => r.live).flatMap((r) => r.tenantBreakersOpen))];
    $('tenant-breakers').textContent = tenants.length ? `tenant breakers open: ${tenants.join(', ')}` : 'no tenant breaker open';
    const l = o.upstream.latencyMs;
    $('latency').textContent = l.p50 === null ? '–' : `${fmt(l.p50, 1)} ms`;
    $('latency-more').textContent = l.p50 === null ? 'no upstream calls' : `p95 ${fmt(l.p95, 1)} ms · max ${fmt(l.max, 1)} ms · ${fmt(l.samples)} samples`;
    const c = o.cache;
    $('hit-rate').textContent = c.hitRate === null ? '–' : `${fmt(c.hitRate, 1)} %`;
    $('hit-more').textContent = `${fmt(c.hits)} hits · ${fmt(c.misses)} misses`;
    const lc = o.lifecycle;
    $('open').textContent = fmt(lc.open);
    const lag = lc.lagSeconds;
    $('open-more').textContent = `${lag.p50 === null ? 'nothing settled yet' : `settled ${fmt(lag.p50, 1)} s after the end (p99 ${fmt(lag.p99, 1)} s, last ${fmt(lag.samples)} here)`}${lc.backlogSeconds > 5 ? ` · looks ${fmt(lc.backlogSeconds)} s behind` : ''}`;
    const live = o.replicas.filter((r) => r.live).length;
    $('replicas').textContent = String(live);
    $('replicas-more').textContent = `${o.replicas.length - live} gone (their counts still add up)`;
  }

  /** One card per upstream account: its balance, big, coloured at or below zero and under the alert level. */
  function renderUpstreams(o) {
    const cards = document.createDocumentFragment();
    for (const u of o.upstreams || []) {
      const div = document.createElement('div');
      div.className = 'tile';
      div.dataset.upstream = u.name;
      const h = document.createElement('h2');
      h.textContent = u.name;
      const big = document.createElement('p');
      big.dataset.field = 'balance';
      const low = typeof u.balance === 'number' && (u.balance <= 0 || (o.balanceAlert !== null && u.balance <= o.balanceAlert));
      big.className = `big ${typeof u.balance === 'number' && u.balance <= 0 ? 'bad' : low ? 'warn' : ''}`;
      big.textContent = u.balance === null ? '–' : u.balance === 'unlimited' ? 'unlimited' : fmt(u.balance, 2);
      const more = document.createElement('p');
      more.className = 'small';
      const checked = u.balanceCheckedAt ? `read ${new Date(u.balanceCheckedAt).toLocaleTimeString()}` : 'balance not read';
      more.textContent = [u.state, `weight ${fmt(u.weight, 2)}`, `breaker ${u.breaker}`, checked, u.balanceError ? `last read failed: ${u.balanceError}` : ''].filter(Boolean).join(' · ');
      div.append(h, big, more);
      cards.appendChild(div);
    }
    $('upstreams').replaceChildren(cards);
  }

  function renderFailures(o) {
    const rows = document.createDocumentFragment();
    for (const f of o.failures) {
      const tr = document.createElement('tr');
      cell(tr, new Date(f.at).toLocaleTimeString());
      cell(tr, f.requestId, { field: 'request-id' });
      cell(tr, f.tenant || '–');
      cell(tr, `${f.method} ${f.route}`);
      cell(tr, String(f.status), { cls: 'nonzero' });
      cell(tr, f.code || '');
      cell(tr, f.detail || '', { cls: 'detail' });
      rows.appendChild(tr);
    }
    $('failures').tBodies[0].replaceChildren(rows);
    $('no-failures').hidden = o.failures.length > 0;
  }

  const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

  /** One uPlot per chart, rebuilt only when its series change (a new tenant), otherwise fed new data. */
  function chart(id, labels, data, opts = {}) {
    if (typeof uPlot === 'undefined') return;
    const el = $(id);
    const key = labels.join('\u0000');
    const width = Math.max(300, el.clientWidth || 380);
    if (!charts[id] || charts[id].key !== key) {
      charts[id]?.plot.destroy();
      // Points too: a series with gaps (ten seconds without upstream calls) may have single values to show.
      const series = [{}, ...labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: opts.spanGaps ?? false, points: { show: true, size: 4 } }))];
      const plot = new uPlot({ width, height: 200, series, scales: { x: { time: true }, y: opts.y ?? {} }, axes: [{}, { size: 50 }], legend: { live: false } }, data, el);
      charts[id] = { key, plot };
    } else {
      charts[id].plot.setData(data);
      if (Math.abs(charts[id].plot.width - width) > 20) charts[id].plot.setSize({ width, height: 200 });
    }
  }

  function renderCharts(o) {
    const c = o.series.creates;
    const tenants = Object.keys(c.tenants);
    chart('chart-creates', tenants.length ? tenants : ['creates'], [c.t, ...(tenants.length ? tenants.map((t) => c.tenants[t]) : [c.t.map(() => 0)])], { y: { range: (_u, _min, max) => [0, Math.max(1, max)] } });
    const l = o.series.latency;
    chart('chart-latency', ['p50', 'p95'], [l.t, l.p50, l.p95], { spanGaps: true });
    const h = o.series.cache;
    chart('chart-cache', ['hit rate'], [h.t, h.hitRate], { spanGaps: true, y: { range: [0, 100] } });
  }

  async function refresh() {
    const updated = $('updated');
    try {
      const res = await fetch('/gateway/admin/api/overview', { credentials: 'same-origin', headers: { accept: 'application/json' }, cache: 'no-store' });
      if (res.status === 401) {
        // The session ended (expired, signed out elsewhere, or the key rotated): back to the form.
        window.location.assign('/gateway/admin/');
        return;
      }
      if (!res.ok) throw new Error(`the gateway answered ${res.status}`);
      const o = await res.json();
      csrf = o.csrf || csrf;
      renderHealth(o);
      renderTenants(o);
      renderUpstreams(o);
      renderFailures(o);
      renderCharts(o);
      updated.textContent = `updated ${new Date(o.now).toLocaleTimeString()}`;
      updated.dataset.state = 'ok';
      updated.dataset.at = o.now;
    } catch (err) {
      updated.textContent = `not updated: ${err.message}`;
      updated.dataset.state = 'error';
    }
  }

  $('logout').addEventListener('click', async () => {
    await fetch('/gateway/admin/logout', { method: 'POST', credentials: 'same-origin', headers: { 'x-csrf-token': csrf } });
    window.location.assign('/gateway/admin/');
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
