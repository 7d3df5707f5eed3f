// The opennotr admin dashboard.
//
// The page itself holds no data: everything comes from the admin API, sent
// the operator's token as a Bearer header. Every string from the API goes
// into the page as text (textContent, text nodes, attribute values), never
// as HTML: domains, names and refusal messages are chosen by clients.
'use strict';

(() => {
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const MAX_REFUSALS = 50;
  const TOKEN_KEY = 'opennotr-admin-token';

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ token

  // sessionStorage keeps the token for this tab only; if storage is
  // unavailable (some privacy modes), it lives as long as the page.
  let memoryToken = null;

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch (_) {
      return memoryToken;
    }
  }

  function setToken(t) {
    memoryToken = t;
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) { /* memory only */ }
  }

  function forgetToken() {
    memoryToken = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* nothing kept */ }
  }

  // `#token=...`: browsers never send the fragment to the server. Once kept,
  // it is dropped from the address bar and the history.
  function takeTokenFromFragment() {
    const part = location.hash.slice(1).split('&').find((p) => p.startsWith('token='));
    if (!part) return false;
    let t;
    try {
      t = decodeURIComponent(part.slice('token='.length));
    } catch (_) {
      t = part.slice('token='.length);
    }
    history.replaceState(null, '', location.pathname + location.search);
    if (!t) return false;
    setToken(t);
    return true;
  }

  // -------------------------------------------------------------- API

  class AuthError extends Error {}

  // `optional`: a 404 is an answer (null), not an error.
  async function api(method, path, optional) {
    const res = await fetch(path, {
      method,
      headers: { Authorization: 'Bearer ' + token() },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 401) throw new AuthError('the server rejected the token');
    if (optional && res.status === 404) return null;
    if (!res.ok) {
      let msg = res.status + ' ' + res.statusText;
      try {
        const body = await res.json();
        if (body && typeof body.error === 'string') msg = body.error;
      } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return res.status === 204 ? null : res.json();
  }

  // -------------------------------------------------------- DOM helpers

  // An element with a class and children; strings become text nodes.
  function el(tag, cls, ...children) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function titled(e, title) {
    e.title = title;
    return e;
  }

  function fillRows(table, rows, emptyText, columns) {
    const body = table.tBodies[0];
    if (rows.length === 0) {
      const td = el('td', null, emptyText);
      td.colSpan = columns;
      rows = [el('tr', 'empty', td)];
    }
    body.replaceChildren(...rows);
  }

  // ---------------------------------------------------------- formats

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  const rate = (n) => bytes(n) + '/s';

  // A bandwidth limit (bytes a second each way) and what it held back.
  function limitText(x) {
    let t = 'limit ' + rate(x.bandwidth) + ' each way\nthrottled ' + (x.throttled_ms / 1000).toFixed(1) + ' s';
    if (x.dropped_datagrams > 0) t += '\ndropped ' + x.dropped_datagrams + ' datagrams (' + bytes(x.dropped_bytes) + ')';
    return t;
  }

  function duration(sec) {
    sec = Math.max(0, Math.floor(sec));
    const d = Math.floor(sec / 86400);
    const h = Math.floor((sec % 86400) / 3600);
    const m = Math.floor((sec % 3600) / 60);
    const s = sec % 60;
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + String(m).padStart(2, '0') + 'm';
    if (m > 0) return m + 'm ' + String(s).padStart(2, '0') + 's';
    return s + 's';
  }

  function when(unixSec) {
    const d = new Date(unixSec * 1000);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // -------------------------------------------------------- rendering

  function setStatus(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('error', !!isError);
  }

  function clientCell(s) {
    const td = el('td', 'nowrap',
      s.client !== null ? el('strong', null, s.client) : el('span', 'muted', 'shared key'));
    if (s.plaintext) td.append(titled(el('span', 'badge warn', 'plaintext'), 'this session is not encrypted'));
    if (s.transport === 'quic') td.append(titled(el('span', 'badge', 'quic'), 'this client reaches the server over QUIC'));
    td.title = 'client id ' + s.client_id;
    // Its whole-client bandwidth limit, on its own line to keep the row narrow.
    if (s.bandwidth !== null) {
      td.append(el('br'), titled(el('span', 'badge limit', '≤ ' + rate(s.bandwidth)), limitText(s)));
    }
    return td;
  }

  const DEFAULT_PORTS = { http: ':80', https: ':443', ws: ':80', wss: ':443' };

  // Where visitors reach a forward, short: the row already shows the
  // domain, so `tcp://app.example.com:20022` is `:20022` and
  // `http://app.example.com` is `:80`. A URL on another host stays whole.
  function endpoint(url, domain) {
    const m = /^([a-z0-9+.-]+):\/\/(.*)$/i.exec(url);
    if (!m || !m[2].startsWith(domain)) return url || '—';
    const rest = m[2].slice(domain.length);
    if (rest === '' || rest === '/') return DEFAULT_PORTS[m[1].toLowerCase()] || url;
    return rest.startsWith(':') || rest.startsWith('/') ? rest : url;
  }

  const BALANCE = { round_robin: 'round robin', least_conn: 'least connections' };

  // The group a forward serves in; warned while its health check fails.
  function groupBadge(g) {
    const b = el('span', g.healthy ? 'badge group' : 'badge group warn', '⇄ ' + g.name + (g.healthy ? '' : ' · down'));
    return titled(b, 'load-balanced group ' + g.name + ' (' + (BALANCE[g.balance] || g.balance) + ')\n' +
      (g.healthy ? 'healthy: gets new connections' : 'failing its health check: gets no new connections'));
  }

  // Access rules as one line each: `allow 10.0.0.0/8, …`.
  function rulesText(r) {
    const lines = [];
    if (r.allow.length) lines.push('allow ' + r.allow.join(', '));
    if (r.deny.length) lines.push('deny ' + r.deny.join(', '));
    if (r.users.length) lines.push('users ' + r.users.join(', '));
    return lines;
  }

  // A forward's access rules (the server's and the client's) and its refusals.
  function accessBadge(a) {
    const r = a.refused;
    const refused = r.denied + r.not_allowed + r.unauthorized + r.busy;
    const b = el('span', 'badge access', refused ? 'access · ' + refused + ' refused' : 'access');
    let t = '';
    if (a.server) t += 'server: ' + rulesText(a.server).join('; ') + '\n';
    if (a.client) t += 'client: ' + rulesText(a.client).join('; ') + '\n';
    t += 'refused: ' + r.denied + ' denied, ' + r.not_allowed + ' not allowed, ' + r.unauthorized +
      ' unauthorized, ' + r.busy + ' busy';
    return titled(b, t);
  }

  function forwardsCell(s) {
    const forwards = s.forwards;
    if (forwards.length === 0) return el('td', 'muted', '—');
    const list = el('ul', 'forwards');
    for (const f of forwards) {
      const url = f.url || '—';
      const where = endpoint(f.url, s.domain);
      const li = el('li', null,
        el('span', 'proto', f.protocol),
        titled(el('span', 'mono endpoint', where), url),
        el('span', 'arrow', ' → '),
        el('span', 'mono muted', f.target));
      li.title = url + ' → ' + f.target + '\nin ' + bytes(f.bytes_in) + ' · out ' + bytes(f.bytes_out) + ' · ' + f.open_streams + ' open';
      if (f.bandwidth !== null) {
        li.append(el('span', 'badge limit', '≤ ' + rate(f.bandwidth)));
        li.title += '\n' + limitText(f);
      }
      const tags = [];
      if (f.group) tags.push(groupBadge(f.group));
      if (f.access) tags.push(accessBadge(f.access));
      if (tags.length) li.append(el('div', 'tags', ...tags));
      list.append(li);
    }
    return el('td', 'forwards-cell', list);
  }

  function closeButton(s) {
    const b = el('button', 'danger', 'Close');
    b.type = 'button';
    b.addEventListener('click', async () => {
      const who = s.client !== null ? s.client : 'shared key';
      if (!confirm('Close the session of ' + who + ' (' + s.domain + ')?\nThe client is disconnected.')) return;
      b.disabled = true;
      try {
        await api('DELETE', '/api/v1/sessions/' + encodeURIComponent(s.id));
      } catch (e) {
        if (e instanceof AuthError) return signedOut(e.message);
        setStatus('closing the session failed: ' + e.message, true);
      }
      pollNow();
    });
    return b;
  }

  const clientLabel = (s) => (s.client !== null ? s.client : s.domain + ' (shared key)');

  function renderSessions(sessions, nowMs) {
    const sorted = [...sessions].sort((a, b) =>
      clientLabel(a).localeCompare(clientLabel(b)) || a.domain.localeCompare(b.domain));
    const rows = sorted.map((s) => el('tr', null,
      clientCell(s),
      el('td', 'domain', s.domain),
      el('td', 'mono', s.vip),
      el('td', 'mono', s.remote),
      titled(el('td', 'nowrap', duration(nowMs / 1000 - s.connected_since)),
        'since ' + new Date(s.connected_since * 1000).toLocaleString()),
      forwardsCell(s),
      el('td', 'num', bytes(s.bytes_in)),
      el('td', 'num', bytes(s.bytes_out)),
      el('td', 'num', s.open_streams),
      el('td', 'action', closeButton(s))));
    fillRows($('sessions'), rows, 'No sessions.', 10);
  }

  function renderRefusals(refusals) {
    const rows = refusals.slice(0, MAX_REFUSALS).map((r) => el('tr', null,
      titled(el('td', 'nowrap', when(r.at)), new Date(r.at * 1000).toLocaleString()),
      el('td', 'mono', r.remote),
      r.client !== null ? el('td', null, r.client) : el('td', 'muted', '—'),
      el('td', null, el('span', 'badge', r.code)),
      el('td', 'message', r.message)));
    fillRows($('refusals'), rows, 'No refusals.', 5);
  }

  function list(values) {
    return values.length ? el('td', null, values.join(', ')) : el('td', 'muted', 'any');
  }

  // A credential's own limits; the server's defaults apply where it has none.
  function bandwidthCell(c) {
    const parts = [];
    if (c.bandwidth !== null) parts.push(rate(c.bandwidth) + ' client');
    if (c.forward_bandwidth !== null) parts.push(rate(c.forward_bandwidth) + ' per forward');
    return parts.length ? el('td', 'nowrap', parts.join(', ')) : el('td', 'muted', 'default');
  }

  function accessCell(c) {
    const lines = rulesText(c.access);
    if (!lines.length) return el('td', 'muted', 'any');
    const td = el('td', 'mono rules');
    lines.forEach((l, i) => td.append(...(i ? [el('br')] : []), l));
    return td;
  }

  function renderClients(clients) {
    const sorted = [...clients].sort((a, b) => a.name.localeCompare(b.name));
    const rows = sorted.map((c) => el('tr', null,
      el('td', null, el('strong', null, c.name)),
      list(c.domains),
      list(c.ports),
      list(c.protocols),
      el('td', 'num', c.sessions),
      bandwidthCell(c),
      accessCell(c),
      el('td', null, el('span', 'badge', c.source))));
    fillRows($('clients'), rows, 'No credentials: clients use the shared key.', 8);
  }

  // A single server answers 404: the section stays hidden.
  function renderCluster(c, nowMs) {
    $('cluster-section').hidden = c === null;
    if (c === null) return;
    let state = 'this node: ' + c.node;
    if (c.held_by !== null) state += ' · waiting for its name, held by ' + c.held_by;
    else if (!c.registered) state += ' · not registered';
    if (c.error !== null) state += ' · etcd: ' + c.error;
    $('cluster-state').textContent = state;
    const held = new Map();
    for (const d of c.domains) {
      if (!held.has(d.node)) held.set(d.node, []);
      held.get(d.node).push(d.domain);
    }
    const rows = c.nodes.map((n) => {
      const domains = el('ul', 'forwards');
      for (const d of held.get(n.node) || []) domains.append(el('li', 'mono', d));
      return el('tr', null,
        el('td', 'nowrap', n.node === c.node ? el('strong', null, n.node) : n.node),
        el('td', 'mono', n.advertise),
        titled(el('td', 'nowrap', duration(nowMs / 1000 - n.started)), 'since ' + new Date(n.started * 1000).toLocaleString()),
        el('td', 'forwards-cell', domains));
    });
    fillRows($('cluster'), rows, 'No live node read from etcd yet.', 4);
  }

  // Every node's sessions; a node that did not answer is one row saying so.
  function renderClusterSessions(all, nowMs) {
    if (all === null) return;
    const rows = [];
    for (const n of all) {
      if (n.error !== null) {
        rows.push(el('tr', null, el('td', 'nowrap', n.node), el('td', 'muted', 'no answer: ' + n.error)));
        continue;
      }
      for (const s of n.sessions) {
        rows.push(el('tr', null,
          el('td', 'nowrap', n.node),
          el('td', 'mono', s.domain),
          el('td', 'mono', s.client !== null ? s.client : s.client_id.slice(0, 8)),
          el('td', 'mono', s.vip),
          el('td', 'mono', s.remote),
          titled(el('td', 'nowrap', duration(nowMs / 1000 - s.connected_since)), new Date(s.connected_since * 1000).toLocaleString()),
          el('td', 'num', String(s.open_streams))));
      }
    }
    fillRows($('cluster-sessions'), rows, 'No sessions on any node.', 7);
  }

  function renderGroups(groups, sessions) {
    const domainOf = new Map(sessions.map((s) => [s.id, s.domain]));
    const rows = groups.map((g) => {
      const members = el('ul', 'forwards');
      for (const m of g.members) {
        const who = m.client !== null ? m.client : (domainOf.get(m.session) || m.client_id) + ' (shared key)';
        const li = el('li', null,
          titled(el('span', 'endpoint', who), who),
          el('span', 'arrow', ' → '),
          el('span', 'mono muted', m.target),
          ' ',
          m.healthy ? el('span', 'badge', 'healthy') : el('span', 'badge warn', 'down'));
        li.title = m.open_streams + ' open · session ' + m.session;
        members.append(li);
      }
      return el('tr', null,
        el('td', 'nowrap', el('strong', null, g.name)),
        el('td', null, el('span', 'proto', g.protocol)),
        titled(el('td', 'mono', g.url), g.url),
        el('td', 'nowrap', BALANCE[g.balance] || g.balance),
        el('td', 'forwards-cell', members),
        el('td', 'num', g.members.reduce((n, m) => n + m.open_streams, 0)));
    });
    fillRows($('groups'), rows, 'No load-balanced groups.', 6);
  }

  // ---------------------------------------------------------- traffic

  // Byte counters only grow while a session lives; a rate is the growth
  // between two polls over their interval. A client is its credential or,
  // on the shared key, its client id (the same across reconnects).
  const lastCount = new Map(); // session id -> {t, in, out}
  const series = new Map(); // client key -> {label, points, lastSeen, card, ...}

  const clientKey = (s) => (s.client !== null ? 'c:' + s.client : 'i:' + s.client_id);

  function updateTraffic(sessions, nowMs) {
    const rates = new Map();
    const live = new Set();
    for (const s of sessions) {
      live.add(s.id);
      const key = clientKey(s);
      let r = rates.get(key);
      if (!r) {
        r = { label: clientLabel(s), in: 0, out: 0, measured: false };
        rates.set(key, r);
      }
      const prev = lastCount.get(s.id);
      if (prev && nowMs > prev.t) {
        const dt = (nowMs - prev.t) / 1000;
        r.in += Math.max(0, s.bytes_in - prev.in) / dt;
        r.out += Math.max(0, s.bytes_out - prev.out) / dt;
        r.measured = true;
      }
      lastCount.set(s.id, { t: nowMs, in: s.bytes_in, out: s.bytes_out });
    }
    for (const id of [...lastCount.keys()]) if (!live.has(id)) lastCount.delete(id);

    for (const [key, r] of rates) {
      let sr = series.get(key);
      if (!sr) {
        sr = newChart(r.label);
        series.set(key, sr);
      }
      sr.label = r.label;
      sr.lastSeen = nowMs;
      if (r.measured) sr.points.push({ t: nowMs, in: r.in, out: r.out });
    }
    for (const [key, sr] of series) {
      if (!rates.has(key)) {
        sr.points.push({ t: nowMs, in: 0, out: 0 });
        if (nowMs - sr.lastSeen > WINDOW_MS) {
          sr.card.remove();
          series.delete(key);
          continue;
        }
      }
      while (sr.points.length > 0 && sr.points[0].t < nowMs - WINDOW_MS) sr.points.shift();
    }
    const cards = [...series.values()].sort((a, b) => a.label.localeCompare(b.label)).map((sr) => sr.card);
    $('charts').replaceChildren(...cards);
    $('charts-empty').hidden = cards.length > 0;
    drawCharts(nowMs);

    let totalIn = 0;
    let totalOut = 0;
    for (const sr of series.values()) {
      const last = sr.points[sr.points.length - 1];
      if (last) {
        totalIn += last.in;
        totalOut += last.out;
      }
    }
    return { in: totalIn, out: totalOut };
  }

  function newChart(label) {
    const title = el('span', 'chart-title', label);
    const legend = el('span', 'chart-legend', 'measuring…');
    const canvas = el('canvas', 'chart');
    canvas.setAttribute('role', 'img');
    const card = el('figure', 'chart-card', el('figcaption', null, title, legend), canvas);
    return { label, points: [], lastSeen: 0, card, title, legend, canvas };
  }

  // The top of a chart's scale: in the unit the peak is shown in, 1, 2 or
  // 5 times a power of ten, so that the axis reads "200 KiB/s", "100 KiB/s".
  function scaleTop(peak) {
    let unit = 1;
    while (peak / unit >= 1000 && unit < 1024 ** 5) unit *= 1024;
    const v = peak / unit;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p * unit;
    return 10 * p * unit;
  }

  let lastDraw = 0;

  function drawCharts(nowMs) {
    lastDraw = nowMs;
    const css = getComputedStyle(document.documentElement);
    const colors = {
      in: css.getPropertyValue('--in').trim() || '#2f6fdd',
      out: css.getPropertyValue('--out').trim() || '#e07a1f',
      grid: css.getPropertyValue('--grid').trim() || '#e5e7eb',
      text: css.getPropertyValue('--muted').trim() || '#6b7280',
      panel: css.getPropertyValue('--panel').trim() || '#ffffff',
    };
    // The x axis spans what has been measured, up to the 5 minutes kept,
    // the same for every chart so that they line up.
    let oldest = nowMs;
    for (const sr of series.values()) if (sr.points.length > 0) oldest = Math.min(oldest, sr.points[0].t);
    const span = Math.min(WINDOW_MS, Math.max(nowMs - oldest, 2 * POLL_MS));
    for (const sr of series.values()) drawChart(sr, nowMs, span, colors);
  }

  function drawChart(sr, nowMs, span, colors) {
    sr.title.textContent = sr.label;
    sr.canvas.setAttribute('aria-label', 'traffic of ' + sr.label);
    const pts = sr.points;
    const last = pts[pts.length - 1];
    sr.legend.textContent = last ? 'in ' + rate(last.in) + ' · out ' + rate(last.out) : 'measuring…';

    // Drawn at the screen's resolution, sized by the stylesheet.
    const c = sr.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 360;
    const h = c.clientHeight || 120;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);

    const top = 14;
    const bottom = h - 16;
    let peak = 0;
    for (const p of pts) peak = Math.max(peak, p.in, p.out);
    const max = scaleTop(Math.max(peak, 1024));
    const x = (t) => ((t - (nowMs - span)) / span) * w;
    const y = (v) => bottom - (v / max) * (bottom - top);
    g.font = '11px system-ui, sans-serif';

    // Grid and time axis.
    g.lineWidth = 1;
    g.strokeStyle = colors.grid;
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(f * max)) + 0.5;
      g.beginPath();
      g.moveTo(0, yy);
      g.lineTo(w, yy);
      g.stroke();
    }
    g.fillStyle = colors.text;
    g.textBaseline = 'top';
    g.fillText('−' + (span >= 60000 ? Math.round(span / 60000) + ' min' : Math.round(span / 1000) + ' s'), 2, bottom + 3);
    g.textAlign = 'right';
    g.fillText('now', w - 2, bottom + 3);
    g.textAlign = 'left';

    // Light fills, then the lines over both of them.
    if (pts.length > 0) {
      g.globalAlpha = 0.08;
      for (const dir of ['out', 'in']) {
        g.beginPath();
        g.moveTo(x(pts[0].t), bottom);
        for (const p of pts) g.lineTo(x(p.t), y(p[dir]));
        g.lineTo(x(last.t), bottom);
        g.closePath();
        g.fillStyle = colors[dir];
        g.fill();
      }
      g.globalAlpha = 1;
      g.lineWidth = 1.75;
      g.lineJoin = 'round';
      for (const dir of ['out', 'in']) {
        g.beginPath();
        pts.forEach((p, i) => (i === 0 ? g.moveTo(x(p.t), y(p[dir])) : g.lineTo(x(p.t), y(p[dir]))));
        g.strokeStyle = colors[dir];
        g.stroke();
      }
    }

    // The scale, over the lines, on the panel's colour.
    g.textBaseline = 'bottom';
    for (const f of [0.5, 1]) {
      const label = rate(f * max);
      const yy = Math.round(y(f * max));
      g.fillStyle = colors.panel;
      g.fillRect(0, yy - 13, g.measureText(label).width + 6, 12);
      g.fillStyle = colors.text;
      g.fillText(label, 2, yy - 1);
    }
  }

  // ---------------------------------------------------------- polling

  let timer = null;
  let running = false;
  let again = false; // asked for while a poll was running: poll once more at its end

  function pollNow() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    poll();
  }

  async function poll() {
    if (!token()) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const [sessions, refusals, clients, groups, cluster] = await Promise.all([
        api('GET', '/api/v1/sessions'),
        api('GET', '/api/v1/refusals'),
        api('GET', '/api/v1/clients'),
        api('GET', '/api/v1/groups'),
        api('GET', '/api/v1/cluster', true),
      ]);
      const now = Date.now();
      $('login').hidden = true;
      $('app').hidden = false;
      $('signout').hidden = false;
      renderSessions(sessions, now);
      const total = updateTraffic(sessions, now);
      renderRefusals(refusals);
      renderClients(clients);
      renderGroups(groups, sessions);
      renderCluster(cluster, now);
      if (cluster !== null) renderClusterSessions(await api('GET', '/api/v1/cluster/sessions', true), now);
      $('sum-sessions').textContent = sessions.length;
      $('sum-streams').textContent = sessions.reduce((n, s) => n + s.open_streams, 0);
      $('sum-in').textContent = rate(total.in);
      $('sum-out').textContent = rate(total.out);
      $('sum-clients').textContent = clients.length;
      $('sum-refusals').textContent = refusals.length;
      setStatus('updated ' + new Date(now).toLocaleTimeString(), false);
    } catch (e) {
      running = false;
      if (e instanceof AuthError) return signedOut(e.message);
      setStatus('cannot reach the server: ' + e.message, true);
    }
    running = false;
    if (again) {
      again = false;
      pollNow();
    } else if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        poll();
      }, POLL_MS);
    }
  }

  function signedOut(message) {
    forgetToken();
    if (timer !== null) clearTimeout(timer);
    timer = null;
    lastCount.clear();
    series.clear();
    $('charts').replaceChildren();
    $('app').hidden = true;
    $('signout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setStatus('', false);
    $('token-input').focus();
  }

  // ------------------------------------------------------------ start

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    $('token-input').value = '';
    $('login-error').textContent = '';
    setToken(t);
    pollNow();
  });
  $('signout').addEventListener('click', () => signedOut(''));
  window.addEventListener('hashchange', () => {
    if (takeTokenFromFragment()) pollNow();
  });
  window.addEventListener('resize', () => {
    if (lastDraw) drawCharts(lastDraw);
  });

  takeTokenFromFragment();
  if (token()) pollNow();
  else signedOut('');
})();
