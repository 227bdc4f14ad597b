// fedsync dashboard: plain JavaScript, no framework, no network but this server.
// Every view reads the JSON API under /api/; every button is a run of the engine.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const VIEWS = ['overview', 'conflicts', 'history', 'versions'];
  const state = { view: 'overview', profile: '', busy: 0, refreshTimer: null, conflict: null };

  // ---------------------------------------------------------------- DOM helpers
  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') n.className = v;
      else if (k === 'text') n.textContent = v;
      else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids.flat()) {
      if (k === null || k === undefined || k === false) continue;
      n.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return n;
  }
  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); return n; }

  function bytes(n) {
    const u = ['B', 'KB', 'MB', 'GB', 'TB'];
    let v = n, i = 0;
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return i === 0 ? `${n} B` : `${v.toFixed(1)} ${u[i]}`;
  }
  function when(iso) {
    if (!iso) return 'not finished';
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function plural(n, one, many) { return `${n} ${n === 1 ? one : (many || one + 's')}`; }

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }

  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, 'The dashboard server does not answer (was `fedsync ui` stopped?).\n' +
        'Start it again with `fedsync ui ' + (state.profile || 'NAME') + '` and open the address it prints.');
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      let msg = (data && data.error) || `the server answered ${r.status} ${r.statusText}`;
      if (r.status === 401) {
        msg += '\nReload the page from the address `fedsync ui` printed (it ends in ?token=…).';
      }
      throw new ApiError(r.status, msg);
    }
    return data;
  }

  function showError(err, doing) {
    $('error-title').textContent = doing ? `Could not ${doing}` : 'Something went wrong';
    $('error-msg').textContent = err && err.message ? err.message : String(err);
    $('error').hidden = false;
  }
  function hideError() { $('error').hidden = true; }

  function showResult(res, title) {
    const ok = res.ok !== false;
    const box = $('result');
    box.classList.toggle('warn', !ok);
    $('result-title').textContent = title || (ok ? 'Done' : 'Finished with problems');
    const lines = [res.message];
    for (const d of res.details || []) lines.push('  ' + d);
    for (const w of res.warnings || []) lines.push('warning: ' + w);
    $('result-msg').textContent = lines.filter(Boolean).join('\n');
    box.hidden = false;
    box.dataset.run = res.run || '';
  }

  // ---------------------------------------------------------------- confirm dialog
  function confirmDialog(title, text, okLabel) {
    const d = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel || 'Confirm';
    return new Promise((resolve) => {
      const done = () => { d.removeEventListener('close', done); resolve(d.returnValue === 'ok'); };
      d.addEventListener('close', done);
      d.returnValue = 'cancel';
      d.showModal();
    });
  }

  async function act(button, doing, fn) {
    if (button) button.disabled = true;
    state.busy++;
    hideError();
    try {
      return await fn();
    } catch (e) {
      showError(e, doing);
      return null;
    } finally {
      state.busy--;
      if (button) button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- summaries
  function countsText(c, a, b) {
    const parts = [];
    if (c.to_b) parts.push(`${c.to_b} → ${b} (${bytes(c.bytes_to_b)})`);
    if (c.to_a) parts.push(`${c.to_a} → ${a} (${bytes(c.bytes_to_a)})`);
    if (c.deleted_b) parts.push(`${c.deleted_b} deleted on ${b}`);
    if (c.deleted_a) parts.push(`${c.deleted_a} deleted on ${a}`);
    if (c.moved) parts.push(`${c.moved} moved`);
    if (c.merged) parts.push(`${c.merged} merged`);
    if (c.conflicts) parts.push(plural(c.conflicts, 'conflict'));
    if (c.skipped) parts.push(`${c.skipped} skipped`);
    if (c.failed) parts.push(`${c.failed} failed`);
    return parts;
  }

  function runText(run) {
    const s = run.summary || {};
    if (Array.isArray(s.pairs)) {
      const parts = [];
      for (const p of s.pairs) {
        const t = countsText(p.counts || {}, p.a, p.b);
        if (p.message) t.push(p.message);
        if (t.length) parts.push((s.pairs.length > 1 ? `${p.a} ↔ ${p.b}: ` : '') + t.join(', '));
      }
      return parts.join('; ') || 'nothing to do';
    }
    if (s.done !== undefined) {
      let t = plural(s.done, 'change');
      if (s.target) t = `rolled back ${s.target}: ` + t;
      if (s.failed && s.failed.length) t += `, ${s.failed.length} not undone`;
      return t;
    }
    return '';
  }

  const HEALTH = {
    ok: 'Every replica is reachable and they agree.',
    pending: 'Changes are waiting for the next sync (below, each way).',
    conflicts: 'Some paths changed on both sides: settle them under Conflicts.',
    degraded: 'A replica is not reachable: its changes wait until it is back. See the message below.',
    failing: 'The last run failed: see its message under History, fix the cause and sync again.',
  };

  // ---------------------------------------------------------------- overview
  async function loadOverview() {
    const s = await api('GET', '/api/status');
    state.profile = s.profile;
    $('profile-name').textContent = s.profile;
    document.title = `fedsync · ${s.profile}`;
    setConflictCount(s.conflicts.length);
    const h = $('health');
    h.textContent = s.health;
    h.className = 'badge ' + s.health;
    $('health-text').textContent = HEALTH[s.health] || '';

    const tb = clear($('replicas').tBodies[0]);
    for (const r of s.replicas) {
      tb.append(el('tr', {},
        el('td', {}, el('strong', { text: r.name }), r.optional ? el('span', { class: 'muted', text: ' (optional)' }) : null),
        el('td', {}, el('span', { class: 'pill ' + (r.reachable ? 'ok' : r.state === 'skipped' ? 'warn' : 'bad'), text: r.reachable ? 'yes' : r.state }),
          r.message ? el('div', { class: 'msg', text: r.message }) : null),
        el('td', {}, el('code', { text: r.root }))));
    }

    const pend = clear($('pending'));
    for (const p of s.pending) {
      const c = p.counts;
      const box = el('div', { class: 'pair' }, el('h3', { text: `${p.a} ↔ ${p.b}` }));
      if (p.message) box.append(el('p', { class: 'msg', text: p.message }));
      else if (p.changes === 0) box.append(el('p', { class: 'ok-text', text: 'in sync' }));
      else {
        box.append(el('table', { class: 'kv' },
          el('tr', {}, el('th', { text: `${p.a} → ${p.b}` }), el('td', { text: `${plural(c.to_b, 'file')} (${bytes(c.bytes_to_b)})` + (c.deleted_b ? `, ${c.deleted_b} to delete on ${p.b}` : '') })),
          el('tr', {}, el('th', { text: `${p.b} → ${p.a}` }), el('td', { text: `${plural(c.to_a, 'file')} (${bytes(c.bytes_to_a)})` + (c.deleted_a ? `, ${c.deleted_a} to delete on ${p.a}` : '') })),
          c.moved ? el('tr', {}, el('th', { text: 'moves' }), el('td', { text: String(c.moved) })) : null,
          c.conflicts ? el('tr', {}, el('th', { text: 'conflicts' }), el('td', { text: String(c.conflicts) })) : null));
        box.append(el('p', { class: 'muted', text: `\`fedsync sync ${s.profile}\` carries them (or \`fedsync watch\` when it runs).` }));
      }
      pend.append(box);
    }
    if (!s.pending.length) pend.append(el('p', { class: 'muted', text: 'no pairs' }));

    const oc = clear($('overview-conflicts'));
    if (!s.conflicts.length) oc.append(el('p', { class: 'ok-text', text: 'none' }));
    else {
      const ul = el('ul', { class: 'plain' });
      for (const c of s.conflicts) {
        ul.append(el('li', {}, el('a', { href: '#conflicts/' + encodeURIComponent(c.path), text: c.path }),
          el('span', { class: 'muted', text: `  ${c.a} ↔ ${c.b}: ${c.reason}` })));
      }
      oc.append(ul);
    }

    const rb = clear($('runs').tBodies[0]);
    for (const r of s.last_runs) {
      rb.append(el('tr', {},
        el('td', {}, el('a', { href: '#history?run=' + encodeURIComponent(r.id), text: r.id })),
        el('td', { text: r.kind }),
        el('td', {}, el('span', { class: 'pill ' + statusClass(r.status), text: r.status })),
        el('td', { text: when(r.finished) }),
        el('td', { text: runText(r) })));
    }
    if (!s.last_runs.length) rb.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: `never synced: run \`fedsync sync ${s.profile}\`` })));
  }

  function statusClass(s) {
    return s === 'ok' ? 'ok' : (s === 'incomplete' || s === 'running' || s === 'undone') ? 'warn' : 'bad';
  }

  function setConflictCount(n) {
    const c = $('conflict-count');
    c.textContent = String(n);
    c.hidden = n === 0;
  }

  // ---------------------------------------------------------------- conflicts
  async function loadConflicts(selected) {
    const data = await api('GET', '/api/conflicts');
    state.profile = data.profile;
    $('profile-name').textContent = data.profile;
    setConflictCount(data.conflicts.length);
    const list = clear($('conflict-list'));
    const detail = $('conflict-detail');
    if (!data.conflicts.length) {
      list.append(el('li', { class: 'muted', text: 'no open conflicts' }));
      clear(detail).append(el('div', { class: 'card empty' },
        el('p', { class: 'ok-text', text: 'No open conflicts.' }),
        el('p', { class: 'muted', text: 'Conflicts appear here when a path changed on both sides and the profile (or a rule) says conflict = "ask".' })));
      state.conflict = null;
      return;
    }
    let pick = data.conflicts.find((c) => c.path === selected) ? selected : data.conflicts[0].path;
    for (const c of data.conflicts) {
      list.append(el('li', { class: c.path === pick ? 'active' : '' },
        el('a', { href: '#conflicts/' + encodeURIComponent(c.path) }, el('span', { class: 'path', text: c.path }),
          el('span', { class: 'muted small', text: `${c.a} ↔ ${c.b}` }))));
    }
    state.conflict = pick;
    await loadConflict(pick);
  }

  async function loadConflict(path) {
    const url = '/api/conflicts/' + path.split('/').map(encodeURIComponent).join('/');
    const d = await api('GET', url);
    const detail = clear($('conflict-detail'));
    for (const p of d.pairs) detail.append(renderConflict(d.path, p));
  }

  function metaTable(side) {
    const e = side.entry;
    if (side.unavailable) return el('p', { class: 'msg', text: `unavailable: ${side.unavailable}` });
    if (!e) return el('p', { class: 'muted', text: 'absent (deleted on this side)' });
    return el('table', { class: 'kv' },
      el('tr', {}, el('th', { text: 'kind' }), el('td', { text: e.kind })),
      e.kind === 'file' ? el('tr', {}, el('th', { text: 'size' }), el('td', { text: `${bytes(e.size)} (${e.size} bytes)` })) : null,
      el('tr', {}, el('th', { text: 'modified' }), el('td', { text: e.mtime_text })),
      e.hash ? el('tr', {}, el('th', { text: 'blake3' }), el('td', {}, el('code', { title: e.hash, text: e.hash.slice(0, 16) + '…' }))) : null,
      el('tr', {}, el('th', { text: 'mode' }), el('td', { text: e.mode })),
      e.link ? el('tr', {}, el('th', { text: 'target' }), el('td', { text: e.link })) : null);
  }

  function renderConflict(path, p) {
    const card = el('div', { class: 'card conflict', 'data-path': path });
    card.append(el('div', { class: 'headline' }, el('h2', {}, el('code', { text: path })),
      el('span', { class: 'muted', text: `${p.a} ↔ ${p.b}` })));
    card.append(el('p', { class: 'reason', text: p.reason }));
    const sides = el('div', { class: 'sides' });
    for (const s of p.sides) {
      sides.append(el('div', { class: 'side', 'data-replica': s.replica },
        el('h3', {}, s.replica,
          s.newer ? el('span', { class: 'pill info', text: 'newer' }) : null,
          s.changed_since_recorded ? el('span', { class: 'pill warn', text: 'changed since the conflict was recorded' }) : null),
        metaTable(s)));
    }
    card.append(sides);

    if (p.diff) {
      if (p.identical) card.append(el('p', { class: 'ok-text', text: 'Both copies are identical now: any choice just records that.' }));
      else card.append(renderDiff(p.diff, p.a, p.b));
    } else {
      card.append(el('p', { class: 'muted', text: 'No text diff: ' + (p.no_diff || 'not text') + '. Compare the metadata above.' }));
    }

    const actions = el('div', { class: 'actions choices' });
    for (const ch of p.choices) {
      const btn = el('button', { type: 'button', 'data-keep': ch.keep, title: ch.what, text: cap(ch.label) });
      btn.addEventListener('click', () => resolve(btn, path, ch));
      actions.append(btn);
    }
    card.append(el('h3', { text: 'Settle it' }), actions,
      el('p', { class: 'muted small', text: 'Each choice is a run: audited, and undone with “roll back this run” under History. What is overwritten is kept as a version.' }));
    return card;
  }

  function cap(s) { return s.charAt(0).toUpperCase() + s.slice(1); }

  function renderDiff(diff, a, b) {
    const table = el('table', { class: 'diff' },
      el('colgroup', {}, el('col', { class: 'ln' }), el('col'), el('col', { class: 'ln' }), el('col')),
      el('thead', {}, el('tr', {}, el('th', { colspan: 2, text: a }), el('th', { colspan: 2, text: b }))));
    const body = el('tbody');
    const lines = diff.lines;
    const CONTEXT = 3;
    // Which equal lines to show: those within CONTEXT of a change.
    const near = new Array(lines.length).fill(false);
    lines.forEach((l, i) => {
      if (l.tag !== 'equal') for (let k = Math.max(0, i - CONTEXT); k <= Math.min(lines.length - 1, i + CONTEXT); k++) near[k] = true;
    });
    let i = 0;
    while (i < lines.length) {
      const l = lines[i];
      if (l.tag === 'equal') {
        if (!near[i]) {
          let j = i;
          while (j < lines.length && lines[j].tag === 'equal' && !near[j]) j++;
          body.append(el('tr', { class: 'skip' }, el('td', { colspan: 4, text: `… ${plural(j - i, 'unchanged line')} …` })));
          i = j;
          continue;
        }
        body.append(el('tr', { class: 'eq' }, el('td', { class: 'ln', text: l.a }), el('td', { class: 'tx', text: l.text }),
          el('td', { class: 'ln', text: l.b }), el('td', { class: 'tx', text: l.text })));
        i++;
        continue;
      }
      const del = [], ins = [];
      while (i < lines.length && lines[i].tag !== 'equal') {
        (lines[i].tag === 'delete' ? del : ins).push(lines[i]);
        i++;
      }
      for (let k = 0; k < Math.max(del.length, ins.length); k++) {
        const x = del[k], y = ins[k];
        body.append(el('tr', {},
          el('td', { class: 'ln', text: x ? x.a : '' }), el('td', { class: 'tx ' + (x ? 'del' : 'none'), text: x ? x.text : '' }),
          el('td', { class: 'ln', text: y ? y.b : '' }), el('td', { class: 'tx ' + (y ? 'ins' : 'none'), text: y ? y.text : '' })));
      }
    }
    table.append(body);
    return el('div', { class: 'diffwrap' },
      el('p', { class: 'muted small', text: `Line diff: ${plural(diff.changed_lines, 'line')} differ (left ${a}, right ${b}).` }), table);
  }

  async function resolve(btn, path, choice) {
    const res = await act(btn, `settle ${path} (${choice.label})`, () =>
      api('POST', '/api/conflicts/resolve', { path, keep: choice.keep }));
    if (res) {
      showResult(res, res.ok ? `${path}: ${choice.label} — done` : `${path}: ${choice.label} — finished with problems`);
      await refresh();
    }
  }

  // ---------------------------------------------------------------- history
  function historyParams() {
    const q = new URLSearchParams((location.hash.split('?')[1]) || '');
    return { path: q.get('path') || '', run: q.get('run') || '', limit: q.get('limit') || '' };
  }

  async function loadHistory() {
    const f = historyParams();
    $('filter-path').value = f.path;
    $('filter-run').value = f.run;
    if (f.limit) $('filter-limit').value = f.limit;
    const q = new URLSearchParams();
    if (f.path) q.set('path', f.path);
    if (f.run) q.set('run', f.run);
    q.set('limit', $('filter-limit').value || '500');
    const d = await api('GET', '/api/history?' + q.toString());
    state.profile = d.profile;
    $('profile-name').textContent = d.profile;
    let sum = `${plural(d.matched, 'record')} match` + (d.matched === 1 ? 'es' : '') + ` (of ${d.total} in the audit trail)`;
    if (d.matched > d.records.length) sum += `; the newest ${d.records.length} are shown`;
    if (d.chain_breaks && d.chain_breaks.length) sum += `. Warning: the audit trail's hash chain is broken at ${plural(d.chain_breaks.length, 'line')}: run \`fedsync log ${d.profile} --verify\`.`;
    $('history-summary').textContent = sum;
    const out = clear($('history-runs'));
    if (!d.records.length) {
      out.append(el('p', { class: 'muted', text: d.total ? 'No record matches the filter.' : 'The audit trail is empty: nothing has been synced yet.' }));
      return;
    }
    const byRun = new Map();
    for (const r of d.records) {
      if (!byRun.has(r.run)) byRun.set(r.run, []);
      byRun.get(r.run).push(r);
    }
    for (const run of d.runs) {
      const recs = byRun.get(run.id) || [];
      const card = el('div', { class: 'card run', 'data-run': run.id });
      const head = el('div', { class: 'headline' },
        el('h2', {}, el('code', { text: run.id })),
        run.kind ? el('span', { class: 'pill neutral', text: run.kind }) : null,
        run.status ? el('span', { class: 'pill ' + statusClass(run.status), text: run.status }) : null,
        el('span', { class: 'muted', text: run.finished ? when(run.finished) : '' }));
      const tools = el('div', { class: 'tools' });
      if (f.run !== run.id) {
        tools.append(el('a', { href: '#history?run=' + encodeURIComponent(run.id), class: 'small', text: 'only this run' }));
      }
      if (run.can_roll_back) {
        const b = el('button', { type: 'button', class: 'danger small-btn', 'data-action': 'rollback', text: 'Roll back this run' });
        b.addEventListener('click', () => rollback(b, run));
        tools.append(b);
      }
      head.append(tools);
      card.append(head);
      const what = runText(run);
      if (what) card.append(el('p', { class: 'muted', text: what }));
      const t = el('table', { class: 'list records' },
        el('thead', {}, el('tr', {}, ['Time', 'Action', 'Replica', 'Path', 'Detail'].map((x) => el('th', { text: x })))));
      const tb = el('tbody');
      // Newest run first; inside a run, in the order things happened.
      for (const r of recs.slice().reverse()) {
        const detail = [];
        if (r.from) detail.push(`from ${r.from}`);
        if (r.version) detail.push(`old kept: ${r.version}`);
        if (r.error) detail.push(`error: ${r.error}`);
        if (r.detail) detail.push(r.detail);
        tb.append(el('tr', { class: r.error ? 'bad-row' : '' },
          el('td', { class: 'nowrap', text: when(r.time) }),
          el('td', { text: r.action }),
          el('td', { text: r.replica || '' }),
          el('td', {}, r.path ? el('a', { href: '#versions?path=' + encodeURIComponent(r.path), title: 'kept versions of this path', text: r.path }) : ''),
          el('td', { class: 'detail', text: detail.join(' · ') })));
      }
      t.append(tb);
      card.append(t);
      out.append(card);
    }
  }

  async function rollback(btn, run) {
    const ok = await confirmDialog(`Roll back run ${run.id}?`,
      `This undoes the ${plural(run.changes, 'change')} of this ${run.kind || ''} run on every replica it touched. ` +
      'What is there now is kept as a version, and the rollback is itself a run you can roll back.', 'Roll back');
    if (!ok) return;
    const res = await act(btn, `roll back run ${run.id}`, () => api('POST', '/api/rollback', { run: run.id }));
    if (res) {
      showResult(res);
      await refresh();
    }
  }

  // ---------------------------------------------------------------- versions
  async function loadVersions() {
    const q = new URLSearchParams((location.hash.split('?')[1]) || '');
    const path = q.get('path') || '';
    $('versions-path').value = path;
    const out = clear($('versions-out'));
    if (!path) {
      out.append(el('p', { class: 'muted', text: 'Give a path to see the versions fedsync kept of it (every overwrite and delete keeps one).' }));
      return;
    }
    const d = await api('GET', '/api/versions?path=' + encodeURIComponent(path));
    for (const u of d.unavailable || []) out.append(el('p', { class: 'msg', text: 'warning: ' + u }));
    if (!d.versions.length) {
      out.append(el('p', { class: 'muted', text: `No kept versions of ${d.path}.` }));
      return;
    }
    const t = el('table', { class: 'list versions' },
      el('thead', {}, el('tr', {}, ['Version', 'Replica', 'Size', 'Modified', 'Kept by run', ''].map((x) => el('th', { text: x })))));
    const tb = el('tbody');
    for (const v of d.versions) {
      const b = el('button', { type: 'button', class: 'small-btn', 'data-version': v.version, text: 'Restore' });
      b.addEventListener('click', () => restore(b, d.path, v));
      tb.append(el('tr', {},
        el('td', {}, el('code', { text: v.version })),
        el('td', { text: v.replica }),
        el('td', { text: v.kind === 'file' ? bytes(v.size) : v.kind }),
        el('td', { text: v.mtime_text }),
        el('td', {}, el('a', { href: '#history?run=' + encodeURIComponent(v.run), text: v.run })),
        el('td', {}, b)));
    }
    t.append(tb);
    out.append(t);
  }

  async function restore(btn, path, v) {
    const ok = await confirmDialog(`Restore ${path}?`,
      `This puts version ${v.version} back at ${path} on ${v.replica}. What is there now is kept as a version; ` +
      'the next sync carries the restored content to the other replicas. The restore is a run you can roll back.', 'Restore');
    if (!ok) return;
    const res = await act(btn, `restore ${path}`, () =>
      api('POST', '/api/restore', { path, version: v.version, replica: v.replica }));
    if (res) {
      showResult(res);
      await refresh();
    }
  }

  // ---------------------------------------------------------------- routing
  function route() {
    const h = location.hash.replace(/^#/, '');
    const name = h.split(/[/?]/)[0] || 'overview';
    const next = VIEWS.includes(name) ? name : 'overview';
    // A result stays while its page is shown; an error belongs to the page it came from.
    if (next !== state.view) { $('result').hidden = true; hideError(); }
    state.view = next;
    for (const v of VIEWS) {
      $('view-' + v).hidden = v !== state.view;
      $('nav-' + v).classList.toggle('active', v === state.view);
    }
    refresh();
  }

  async function refresh() {
    const v = state.view;
    try {
      if (v === 'overview') await loadOverview();
      else if (v === 'conflicts') {
        const m = location.hash.match(/^#conflicts\/(.+)$/);
        await loadConflicts(m ? decodeURIComponent(m[1]) : state.conflict);
      } else if (v === 'history') await loadHistory();
      else if (v === 'versions') await loadVersions();
      document.body.dataset.loaded = v;
    } catch (e) {
      showError(e, `load the ${v} page`);
      document.body.dataset.loaded = v;
    }
  }

  // Live updates: the audit trail grew (a run by this page, the command line or `fedsync
  // watch`): refresh the page shown, unless the user is in the middle of something.
  function live() {
    if (!window.EventSource) return;
    const es = new EventSource('/api/events');
    const ind = $('live');
    es.addEventListener('hello', (ev) => {
      ind.textContent = 'live';
      ind.className = 'live on';
      try { const d = JSON.parse(ev.data); if (d.profile) $('profile-name').textContent = d.profile; } catch (e) { /* ignore */ }
    });
    es.addEventListener('audit', () => {
      clearTimeout(state.refreshTimer);
      state.refreshTimer = setTimeout(() => {
        if (state.busy === 0 && !$('confirm').open) refresh();
      }, 300);
    });
    es.onerror = () => {
      ind.textContent = 'offline';
      ind.className = 'live off';
      ind.title = 'No live updates: the server is not answering (was `fedsync ui` stopped?). Retrying…';
    };
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('error-close').addEventListener('click', hideError);
    $('result-close').addEventListener('click', () => { $('result').hidden = true; });
    $('refresh-overview').addEventListener('click', () => refresh());
    $('history-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if ($('filter-path').value.trim()) q.set('path', $('filter-path').value.trim());
      if ($('filter-run').value.trim()) q.set('run', $('filter-run').value.trim());
      if ($('filter-limit').value && $('filter-limit').value !== '500') q.set('limit', $('filter-limit').value);
      const s = q.toString();
      const target = '#history' + (s ? '?' + s : '');
      if (location.hash === target) refresh(); else location.hash = target;
    });
    $('filter-clear').addEventListener('click', () => { $('filter-limit').value = '500'; location.hash = '#history'; });
    $('versions-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = $('versions-path').value.trim();
      const target = '#versions' + (p ? '?path=' + encodeURIComponent(p) : '');
      if (location.hash === target) refresh(); else location.hash = target;
    });
    window.addEventListener('hashchange', route);
    route();
    live();
  });
})();
