// partgate's status page: reads /statusz every 2 s and draws the summary and one card per part.
// Every value from the gateway goes into the page as text (textContent), never as markup.
'use strict';

(() => {
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 5000;
  const $ = (id) => document.getElementById(id);
  const cards = new Map(); // part name -> { root, fields }
  let lastOk = 0;

  // --- formatting ---

  function num(v, digits = 0) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return '\u2013';
    return v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function rate(v) {
    if (typeof v !== 'number') return '\u2013';
    return v === 0 ? '0' : num(v, v < 10 ? 2 : 1);
  }

  function ms(v) {
    if (typeof v !== 'number') return '\u2013';
    return `${num(v, v < 10 ? 2 : v < 100 ? 1 : 0)} ms`;
  }

  function duration(seconds) {
    if (typeof seconds !== 'number') return '\u2013';
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function errorRate(part) {
    const calls = part.calls_per_second;
    const errors = part.errors_per_second;
    if (typeof errors !== 'number') return '\u2013';
    if (!calls) return `${rate(errors)}/s`;
    return `${rate(errors)}/s \u00b7 ${num((100 * errors) / calls, 1)}%`;
  }

  /** `ok` (connected and answering), `down` (disconnected) or `warn` (anything between). */
  function health(part) {
    if (part.healthy) return 'ok';
    return part.state === 'disconnected' ? 'down' : 'warn';
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the summary ---

  function setStat(id, text, cls) {
    const value = $(id);
    value.textContent = text;
    if (cls !== undefined) value.parentElement.className = `stat ${cls}`.trim();
  }

  function drawSummary(s) {
    const c = s.counts || {};
    const phase = $('phase');
    phase.textContent = s.phase;
    phase.dataset.phase = s.phase;
    $('version').textContent = `v${s.version}`;
    setStat('s-connected', `${num(c.parts_connected)} / ${num(c.parts_total)}`, c.parts_down ? '' : 'ok');
    setStat('s-down', num(c.parts_down), c.parts_down ? 'bad' : '');
    setStat('s-inflight', num(c.calls_in_flight));
    const parts = s.parts || [];
    const sum = (k) => parts.reduce((acc, p) => acc + (typeof p[k] === 'number' ? p[k] : 0), 0);
    setStat('s-rate', rate(sum('calls_per_second')));
    const errors = sum('errors_per_second');
    setStat('s-errors', rate(errors), errors > 0 ? 'bad' : '');
    setStat('s-sessions', num(c.sessions));
    setStat('s-peers', num(c.webrtc_peers));
    setStat('s-resources', num(s.resources));
    setStat('s-uptime', duration(s.uptime_seconds));

    const down = parts.filter((p) => !p.healthy).map((p) => p.name);
    const list = $('down-list');
    list.hidden = down.length === 0;
    list.textContent = down.length ? `Not connected or not answering: ${down.join(', ')}` : '';
    document.title = down.length ? `partgate \u00b7 ${down.length} down` : 'partgate status';

    const reload = $('reload');
    const r = s.last_reload;
    reload.hidden = !r;
    if (r) {
      const when = new Date(r.at_unix_seconds * 1000).toLocaleString();
      if (r.ok) {
        const changed = [
          r.added.length ? `added ${r.added.join(', ')}` : '',
          r.removed.length ? `removed ${r.removed.join(', ')}` : '',
          r.redialed.length ? `redialed ${r.redialed.join(', ')}` : '',
        ].filter(Boolean);
        reload.textContent = `Last reload ${when}: applied${changed.length ? ` (${changed.join('; ')})` : ''}`;
      } else {
        reload.textContent = `Last reload ${when}: rejected: ${r.error}`;
      }
      reload.classList.toggle('failed', !r.ok);
    }
  }

  // --- one card per part ---

  const FIELDS = [
    ['latency', 'check latency'],
    ['rate', 'calls/s'],
    ['errors', 'errors'],
    ['inflight', 'in flight'],
    ['connections', 'connections'],
    ['session', 'part session'],
    ['resources', 'resources'],
    ['calls', 'calls'],
  ];

  function newCard(name) {
    const root = el('article', 'part');
    root.dataset.part = name;
    const head = el('div', 'part-head');
    const title = el('h2', 'name', name);
    const state = el('span', 'state');
    head.append(title, state);
    const where = el('p', 'where');
    const error = el('p', 'error');
    error.hidden = true;
    const stats = el('dl', 'stats');
    const fields = { state, where, error };
    for (const [key, label] of FIELDS) {
      const row = el('div');
      row.append(el('dt', '', label));
      const dd = el('dd', key);
      row.append(dd);
      stats.append(row);
      fields[key] = dd;
    }
    root.append(head, where, error, stats);
    return { root, fields };
  }

  function drawPart(card, p) {
    const f = card.fields;
    const h = health(p);
    card.root.dataset.state = p.state;
    card.root.dataset.health = h;
    f.state.textContent = p.state === 'connected' && !p.healthy ? 'not answering' : p.state;
    // How clients name this part's resources: bare (main part), `prefix` + name, or `part:name`.
    const naming = p.main ? 'main part' : `names \u201c${p.prefix ?? `${p.name}:`}\u2026\u201d`;
    f.where.textContent = `${p.address} \u00b7 ${p.transport}${p.tls ? ' + TLS' : ' (plaintext)'} \u00b7 ${naming}`;
    f.error.hidden = !p.last_error;
    f.error.textContent = p.last_error ? `Last error: ${p.last_error}` : '';
    f.latency.textContent = p.healthy ? ms(p.check_latency_ms) : '\u2013';
    f.rate.textContent = rate(p.calls_per_second);
    f.errors.textContent = errorRate(p);
    f.errors.classList.toggle('bad', p.errors_per_second > 0);
    f.inflight.textContent = num(p.calls_in_flight);
    f.connections.textContent = num(p.open_connections);
    f.session.textContent = p.gateway_session ? 'held' : 'none';
    f.resources.textContent = num(p.resources);
    f.calls.textContent = p.calls_failed_total
      ? `${num(p.calls_total)} (${num(p.calls_failed_total)} failed)`
      : num(p.calls_total);
  }

  function drawParts(parts) {
    const main = $('parts');
    const seen = new Set();
    for (const p of parts) {
      seen.add(p.name);
      let card = cards.get(p.name);
      if (!card) {
        card = newCard(p.name);
        cards.set(p.name, card);
      }
      drawPart(card, p);
      main.append(card.root); // moves an existing card into config order
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
      }
    }
  }

  // --- refreshing ---

  function banner(text) {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  function tick() {
    const updated = $('updated');
    if (!lastOk) return;
    const age = Math.round((Date.now() - lastOk) / 1000);
    updated.textContent = age < 2 ? 'updated just now' : `updated ${age}s ago`;
  }

  async function refresh() {
    try {
      const resp = await fetch('statusz', {
        cache: 'no-store',
        headers: { Accept: 'application/json' },
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
      if (!resp.ok) throw new Error(`/statusz answered ${resp.status}`);
      const status = await resp.json();
      drawSummary(status);
      drawParts(status.parts || []);
      lastOk = Date.now();
      document.body.dataset.refreshed = String(lastOk);
      banner('');
    } catch (e) {
      banner(`Cannot read /statusz: ${e && e.message ? e.message : e}. Showing the last answer; retrying.`);
    } finally {
      tick();
      setTimeout(refresh, REFRESH_MS);
    }
  }

  setInterval(tick, 1000);
  refresh();
})();
