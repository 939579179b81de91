// Cloister's portal (docs/portal.md): a single-page app over the API, as the
// signed-in user. Pages are chosen by the URL's fragment (#/services, …).
import { h, render } from 'preact';
import { useEffect, useState, useCallback } from 'preact/hooks';
import htm from 'htm';
import {
  api, follow, jcs, sha256, hex, b64, approvalMessage, loadKeys, makeKeys, publicHalves, verifyCheckpoint,
} from './lib.js';

const html = htm.bind(h);

const PAGES = [
  ['services', 'My services'],
  ['sessions', 'My sessions'],
  ['why', 'Why was I denied'],
  ['workspaces', 'Workspaces'],
  ['jobs', 'Jobs'],
  ['keys', 'My keys'],
  ['notifications', 'Notifications'],
  ['audit', 'Audit'],
  ['enclaves', 'Enclaves'],
];

function route() {
  const parts = window.location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return { page: parts[0] || 'services', arg: parts[1] || '' };
}

// Loads FN's answer once (and again when DEPS change): [value, error, reload].
function useLoad(fn, deps) {
  const [state, setState] = useState({ value: null, error: null });
  const load = useCallback(() => {
    fn().then(
      (value) => setState({ value, error: null }),
      (error) => setState({ value: null, error }),
    );
  }, deps);
  useEffect(load, [load]);
  return [state.value, state.error, load];
}

const Failure = ({ error }) => error && html`<p class="error" role="alert">${error.message}</p>`;

// ---- my services ----

function serviceUrl(s) {
  const port = window.location.port ? ':' + window.location.port : '';
  return `${window.location.protocol}//${s.host}${port}/`;
}

function Services() {
  const [items, setItems] = useState(null);
  useEffect(() => {
    const stop = new AbortController();
    follow('/me/services?watch=1', (event, data) => {
      if (event === 'services') setItems(data.items);
    }, stop.signal);
    return () => stop.abort();
  }, []);
  if (!items) return html`<p>Loading…</p>`;
  const shown = items.filter((s) => !s.portal);
  return html`<section>
    <h2>My services</h2>
    <p>The services your policies let you reach. The list follows policy changes as they happen.</p>
    ${shown.length === 0 && html`<p class="empty">No service is open to you.</p>`}
    <ul class="tiles">${shown.map((s) => {
      const url = serviceUrl(s);
      return html`<li class="tile" data-service=${s.name}>
        <h3><a href=${url} rel="noopener noreferrer">${s.name}</a></h3>
        <p class="url">${url}</p>
        <pre>curl -H "Authorization: Bearer $(cloister token access)" ${url}</pre>
        <pre>cloister connect ${s.name} --listen 127.0.0.1:8080</pre>
      </li>`;
    })}</ul>
  </section>`;
}

// ---- my sessions ----

function Sessions() {
  const [list, error, reload] = useLoad(() => api('GET', '/sessions'), []);
  const [problem, setProblem] = useState(null);
  const revoke = async (name) => {
    try {
      await api('DELETE', '/sessions/' + encodeURIComponent(name));
      reload();
    } catch (e) {
      setProblem(e);
    }
  };
  return html`<section>
    <h2>My sessions</h2>
    <${Failure} error=${error || problem} />
    <table>
      <thead><tr><th>Session</th><th>Method</th><th>Opened</th><th>Expires</th><th></th></tr></thead>
      <tbody>${(list ? list.items : []).map((s) => html`<tr data-session=${s.metadata.name}>
        <td>${s.metadata.name}</td>
        <td>${(s.spec && s.spec.authMethod) || ''}</td>
        <td>${s.metadata.createdAt || ''}</td>
        <td>${(s.spec && s.spec.expiresAt) || ''}</td>
        <td><button class="revoke" onClick=${() => revoke(s.metadata.name)}>Revoke</button></td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

// ---- why was I denied ----

function Why({ me }) {
  const [form, setForm] = useState({ service: '', method: 'GET', path: '/' });
  const [answer, setAnswer] = useState(null);
  const [error, setError] = useState(null);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const check = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      setAnswer(await api('POST', '/policy/check', { user: me.user, ...form }));
    } catch (err) {
      setError(err);
      setAnswer(null);
    }
  };
  return html`<section>
    <h2>Why was I denied?</h2>
    <p>Decides a request as the proxy would for you, and names the policy and rule that decide it.</p>
    <form onSubmit=${check}>
      <label>Service <input name="service" value=${form.service} onInput=${set('service')} required /></label>
      <label>Method <input name="method" value=${form.method} onInput=${set('method')} /></label>
      <label>Path <input name="path" value=${form.path} onInput=${set('path')} /></label>
      <button type="submit">Check</button>
    </form>
    <${Failure} error=${error} />
    ${answer && html`<dl class=${'decision ' + answer.decision}>
      <dt>Decision</dt><dd class="verdict">${answer.decision}</dd>
      <dt>Policy</dt><dd>${answer.policy}</dd>
      <dt>Rule</dt><dd>${answer.rule}</dd>
      <dt>Reason</dt><dd>${answer.reason}</dd>
    </dl>`}
  </section>`;
}

// ---- workspaces and datasets ----

// The workspaces of the datasets I see, each read by name: a member may read
// their workspace without the right to list every workspace.
async function myWorkspaces(datasets) {
  const names = [...new Set(datasets.items.map((d) => d.spec.workspace))].sort();
  return { items: await Promise.all(names.map((n) => api('GET', '/workspaces/' + encodeURIComponent(n)))) };
}

function Workspaces() {
  const [ds, dsError] = useLoad(() => api('GET', '/datasets'), []);
  const [ws, wsError] = useLoad(() => (ds ? myWorkspaces(ds) : Promise.resolve(null)), [ds]);
  return html`<section>
    <h2>Workspaces</h2>
    <${Failure} error=${wsError} />
    <ul>${(ws ? ws.items : []).map((w) => html`<li data-workspace=${w.metadata.name}>
      <strong>${w.metadata.name}</strong>${`: members ${(w.spec.members || []).join(', ')}; approvals ${
        w.spec.approvals || 'owners'}; recipient `}<code>${(w.status && w.status.recipient) || '…'}</code></li>`)}</ul>
    <h2>Datasets</h2>
    <${Failure} error=${dsError} />
    <table>
      <thead><tr><th>Dataset</th><th>Workspace</th><th>Owner</th><th>SHA-256</th><th>Size</th></tr></thead>
      <tbody>${(ds ? ds.items : []).map((d) => html`<tr data-dataset=${d.metadata.name}>
        <td>${d.metadata.name}</td><td>${d.spec.workspace}</td><td>${(d.status && d.status.owner) || ''}</td>
        <td><code>${(d.status && d.status.sha256) || 'no data yet'}</code></td><td>${(d.status && d.status.size) || ''}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

// ---- jobs ----

const words = (s) => s.split(/[\s,]+/).filter(Boolean);

function Propose({ onDone }) {
  const [f, setF] = useState({ name: '', workspace: '', query: '', inputs: '', recipients: '', maxRuns: '1' });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const spec = { workspace: f.workspace, query: f.query, inputs: words(f.inputs), maxRuns: Number(f.maxRuns) || 1 };
    if (words(f.recipients).length) spec.recipients = words(f.recipients);
    try {
      await api('POST', '/jobs', { apiVersion: 'cloister.dev/v1', kind: 'Job', metadata: { name: f.name }, spec });
      window.location.hash = '#/jobs/' + encodeURIComponent(f.name);
      onDone();
    } catch (err) {
      setError(err);
    }
  };
  return html`<form class="propose" onSubmit=${submit}>
    <h3>Propose a job</h3>
    <label>Name <input name="name" value=${f.name} onInput=${set('name')} required /></label>
    <label>Workspace <input name="workspace" value=${f.workspace} onInput=${set('workspace')} required /></label>
    <label>Query <textarea name="query" value=${f.query} onInput=${set('query')} required></textarea></label>
    <label>Inputs <input name="inputs" value=${f.inputs} onInput=${set('inputs')} placeholder="patients visits" /></label>
    <label>Recipients <input name="recipients" value=${f.recipients} onInput=${set('recipients')}
      placeholder="alice bob (empty: every member)" /></label>
    <label>Runs <input name="maxRuns" type="number" min="1" value=${f.maxRuns} onInput=${set('maxRuns')} /></label>
    <button type="submit">Propose</button>
    <${Failure} error=${error} />
  </form>`;
}

// What this browser finds for JOB's digest input, from the datasets and the
// recipients' registered keys as the API shows them to me (as the CLI does).
async function digestInputHere(job) {
  const spec = job.spec;
  const shown = (job.status && job.status.digestInput) || {};
  const inputs = [];
  for (const name of spec.inputs || []) {
    const d = await api('GET', '/datasets/' + encodeURIComponent(name));
    if (!d.status || !d.status.sha256) throw new Error(`dataset ${name} has no data yet`);
    inputs.push({ name, sha256: d.status.sha256 });
  }
  let names = spec.recipients;
  if (!names || !names.length) names = (await api('GET', '/workspaces/' + encodeURIComponent(spec.workspace))).spec.members;
  const recipients = [];
  for (const name of names) {
    const k = await api('GET', '/users/' + encodeURIComponent(name) + '/keys');
    recipients.push(k.publicKeys.recipient);
  }
  return {
    apiVersion: job.apiVersion || 'cloister.dev/v1',
    workspace: spec.workspace,
    query: spec.query,
    inputs,
    recipients,
    engine: { pcr0: (shown.engine && shown.engine.pcr0) || '' },
    maxRuns: spec.maxRuns !== undefined ? spec.maxRuns : shown.maxRuns,
    notAfter: spec.notAfter !== undefined ? spec.notAfter : null,
  };
}

// Checks JOB's digest here and signs it with this browser's approval key:
// the digest input rebuilt, compared with the server's, the digest
// recomputed; any difference refuses. Returns the approval body.
async function signApproval(job, me) {
  const keys = await loadKeys(me.user);
  if (!keys) throw new Error('this browser has no keys yet: make and register them on "My keys"');
  const mine = await publicHalves(keys);
  if (!me.publicKeys || me.publicKeys.approval !== mine.approval)
    throw new Error("this browser's approval key is not the one registered to you: register it on \"My keys\"");
  const here = await digestInputHere(job);
  const shown = job.status.digestInput;
  for (const field of Object.keys({ ...here, ...shown }))
    if (jcs(here[field] === undefined ? null : here[field]) !== jcs(shown[field] === undefined ? null : shown[field]))
      throw new Error(`refusing to sign: the digest input's ${field} is not what this browser finds`);
  const digest = hex(await sha256(jcs(here)));
  if (digest !== job.status.digest) throw new Error('refusing to sign: the digest does not match its input');
  const sig = await crypto.subtle.sign({ name: 'Ed25519' }, keys.approval.privateKey, approvalMessage(digest));
  return { signature: b64(sig), digest };
}

function JobDetail({ name, me, onChange }) {
  const [job, error, reloadJob] = useLoad(() => api('GET', '/jobs/' + encodeURIComponent(name)), [name]);
  const reload = () => {
    reloadJob();
    onChange();
  };
  const [problem, setProblem] = useState(null);
  const [reason, setReason] = useState('');
  const act = (fn) => async () => {
    setProblem(null);
    try {
      await fn();
      reload();
    } catch (e) {
      setProblem(e);
    }
  };
  if (error) return html`<${Failure} error=${error} />`;
  if (!job) return html`<p>Loading…</p>`;
  const st = job.status || {};
  const input = st.digestInput || {};
  const runs = st.runs || [];
  return html`<article class="job" data-job=${name} data-state=${st.state}>
    <h3>Job ${name} <span class="state">${st.state}</span></h3>
    <p>Workspace ${job.spec.workspace}; proposed by ${(job.metadata && job.metadata.author) || st.author || ''}</p>
    <h4>Query (exactly what runs)</h4>
    <pre class="query">${job.spec.query}</pre>
    <h4>Inputs</h4>
    <ul>${(input.inputs || []).map((i) => html`<li>${i.name} <code>${i.sha256}</code></li>`)}</ul>
    <h4>Recipients</h4>
    <ul>${(job.spec.recipients || []).map((r, i) => html`<li>${r} <code>${(input.recipients || [])[i]}</code></li>`)}</ul>
    <h4>Digest</h4>
    <p><code class="digest">${st.digest}</code></p>
    <p>${'Engine PCR0 '}<code>${input.engine && input.engine.pcr0}</code>${`; at most ${input.maxRuns} run(s); until ${
      input.notAfter || 'no limit'}`}</p>
    <p>${`Approvers: ${(st.requiredApprovers || []).join(', ')}; waiting for `}
      <span class="missing">${(st.missingApprovers || []).join(', ') || 'nobody'}</span></p>
    <div class="actions">
      <button class="approve" onClick=${act(async () => {
        await api('POST', `/jobs/${encodeURIComponent(name)}/approvals`, await signApproval(job, me));
      })}>Check the digest and approve</button>
      <input name="reason" value=${reason} onInput=${(e) => setReason(e.target.value)} placeholder="why not" />
      <button class="reject" onClick=${act(() => api('POST', `/jobs/${encodeURIComponent(name)}/rejections`,
        { reason: reason || 'rejected in the portal' }))}>Reject</button>
      <button class="run" onClick=${act(() => api('POST', `/jobs/${encodeURIComponent(name)}/runs`, {}))}>Run</button>
      <button class="refresh" onClick=${reload}>Refresh</button>
    </div>
    <${Failure} error=${problem} />
    <h4>Runs</h4>
    <ul class="runs">${runs.map((r) => html`<li data-run=${r.n} data-state=${r.state}>${`run ${r.n}: ${r.state} `}
      ${r.resultSha256 ? html`${'result '}<code>${r.resultSha256}</code>` : ''}${` ${r.error || ''}`}</li>`)}</ul>
  </article>`;
}

function Jobs({ arg, me }) {
  const [list, error, reload] = useLoad(() => api('GET', '/jobs'), [arg]);
  return html`<section>
    <h2>Jobs</h2>
    <${Failure} error=${error} />
    <ul class="jobs">${(list ? list.items : []).map((j) => html`<li>
      <a href=${'#/jobs/' + encodeURIComponent(j.metadata.name)}>${j.metadata.name}</a>${` (${j.spec.workspace}) `}
      <span class="state">${j.status && j.status.state}</span></li>`)}</ul>
    ${arg ? html`<${JobDetail} name=${arg} me=${me} key=${arg} onChange=${reload} />` : html`<${Propose} onDone=${reload} />`}
  </section>`;
}

// ---- my keys ----

function Keys({ me, onChange }) {
  const [state, setState] = useState({ mine: null, error: null, busy: false });
  useEffect(() => {
    loadKeys(me.user)
      .then((k) => (k ? publicHalves(k) : null))
      .then((mine) => setState((s) => ({ ...s, mine })));
  }, [me.user]);
  const make = async () => {
    setState((s) => ({ ...s, busy: true, error: null }));
    try {
      const mine = await publicHalves(await makeKeys(me.user));
      await api('POST', `/users/${encodeURIComponent(me.user)}/keys`, mine);
      setState({ mine, error: null, busy: false });
      onChange();
    } catch (error) {
      setState((s) => ({ ...s, error, busy: false }));
    }
  };
  const registered = me.publicKeys || {};
  const current = state.mine && registered.approval === state.mine.approval;
  return html`<section>
    <h2>My keys</h2>
    <p>This browser signs approvals with an Ed25519 key and holds an X25519 age identity; both private halves are
      made here, cannot be exported and stay in this browser's storage. The server only gets the public halves.</p>
    <dl>
      <dt>Registered approval key</dt><dd><code class="registered">${registered.approval || 'none'}</code></dd>
      <dt>Registered recipient</dt><dd><code>${registered.recipient || 'none'}</code></dd>
      <dt>This browser</dt><dd class="browser-keys">${state.mine ? (current ? 'registered' : 'not registered') : 'no keys'}</dd>
    </dl>
    <button class="make-keys" disabled=${state.busy} onClick=${make}>Make and register keys in this browser</button>
    <${Failure} error=${state.error} />
  </section>`;
}

// ---- notifications ----

function notificationLink(n) {
  if (n.kind === 'Job' && n.name) return '#/jobs/' + encodeURIComponent(n.name);
  if (n.kind === 'Dataset' || n.kind === 'Workspace') return '#/workspaces';
  return '#/notifications';
}

function Notifications({ items, markRead }) {
  return html`<section>
    <h2>Notifications</h2>
    <button class="read-all" onClick=${() => markRead(items.filter((n) => !n.read).map((n) => n.id))}>Mark all read</button>
    <ul class="notifications">${items.map((n) => html`<li class=${n.read ? 'read' : 'unread'} data-id=${n.id}>
      <a href=${notificationLink(n)} onClick=${() => markRead([n.id])}>${`${n.type}: ${n.kind} ${n.name}`}</a>
      ${' '}<span class="when">${n.createdAt}</span></li>`)}</ul>
  </section>`;
}

// ---- audit ----

function Audit() {
  const [state, setState] = useState({ verified: null, entries: null, error: null });
  useEffect(() => {
    (async () => {
      const cp = await api('GET', '/audit/checkpoint');
      const verified = await verifyCheckpoint(cp.checkpoint, cp.key);
      const pinned = window.localStorage.getItem('cloister-audit-key');
      if (pinned && pinned !== cp.key) throw new Error('the audit log key changed since this browser first saw it');
      if (!pinned) window.localStorage.setItem('cloister-audit-key', cp.key);
      const start = Math.max(0, verified.size - 50);
      const entries = verified.size ? await api('GET', `/audit/entries?start=${start}&end=${verified.size}`) : { entries: [] };
      setState({ verified, entries: entries.entries.reverse(), error: null });
    })().catch((error) => setState({ verified: null, entries: null, error }));
  }, []);
  const v = state.verified;
  return html`<section>
    <h2>Audit</h2>
    <${Failure} error=${state.error} />
    ${v && html`<p class="checkpoint verified">Checkpoint verified in this browser: ${v.origin}, ${v.size} entries,
      root <code>${v.root}</code>, key ${v.keyId}.</p>`}
    <ul class="entries">${(state.entries || []).map((e) => {
      let entry = {};
      try {
        entry = JSON.parse(e.entry);
      } catch (err) {
        entry = {};
      }
      const who = (entry.actor && entry.actor.user) || '';
      const what = entry.resource ? `${entry.resource.kind}/${entry.resource.name}` : '';
      return html`<li>${`${e.index} ${entry.time || ''} `}<strong>${entry.action || ''}</strong>${
        ` ${who} ${what} ${entry.outcome || ''}`}</li>`;
    })}</ul>
  </section>`;
}

// ---- enclaves ----

function Enclaves() {
  const [list, error] = useLoad(() => api('GET', '/enclaves'), []);
  return html`<section>
    <h2>Enclaves</h2>
    <${Failure} error=${error} />
    <table>
      <thead><tr><th>Enclave</th><th>Attestation policy</th><th>Replicas</th></tr></thead>
      <tbody>${(list ? list.items : []).map((e) => html`<tr data-enclave=${e.metadata.name}>
        <td>${e.metadata.name}</td><td>${e.spec.attestationPolicy || 'none: not reachable'}</td>
        <td>${((e.status && e.status.replicas) || []).map((r) => html`<div>${r.name || r.id}: ${r.state || r.phase || ''}
          ${r.pcr0 ? html` PCR0 <code>${r.pcr0}</code>` : ''}</div>`)}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

// ---- the frame ----

function App() {
  const [where, setWhere] = useState(route());
  const [me, meError, reloadMe] = useLoad(() => api('GET', '/whoami'), []);
  const [notes, setNotes] = useState([]);
  useEffect(() => {
    const on = () => setWhere(route());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  useEffect(() => {
    const stop = new AbortController();
    (async () => {
      const list = await api('GET', '/notifications');
      setNotes(list.items);
      await follow(`/notifications?watch=1&resourceVersion=${list.resourceVersion}`, (event, data) => {
        setNotes((cur) => {
          const rest = cur.filter((n) => n.id !== data.id);
          return event === 'DELETED' ? rest : [data, ...rest];
        });
      }, stop.signal);
    })().catch(() => {});
    return () => stop.abort();
  }, []);
  const markRead = async (ids) => {
    if (ids.length) await api('POST', '/notifications/read', { ids }).catch(() => {});
  };
  if (meError) return html`<${Failure} error=${meError} />`;
  if (!me) return html`<p>Loading…</p>`;
  const unread = notes.filter((n) => !n.read).length;
  const { page, arg } = where;
  const pages = {
    services: () => html`<${Services} />`,
    sessions: () => html`<${Sessions} />`,
    why: () => html`<${Why} me=${me} />`,
    workspaces: () => html`<${Workspaces} />`,
    jobs: () => html`<${Jobs} arg=${arg} me=${me} />`,
    keys: () => html`<${Keys} me=${me} onChange=${reloadMe} />`,
    notifications: () => html`<${Notifications} items=${notes} markRead=${markRead} />`,
    audit: () => html`<${Audit} />`,
    enclaves: () => html`<${Enclaves} />`,
  };
  return html`<div class="frame">
    <header>
      <h1>Cloister</h1>
      <a class="bell" href="#/notifications" title="Notifications" aria-label="Notifications">
        <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><path fill="currentColor"
          d="M12 22a2.5 2.5 0 0 0 2.5-2.5h-5A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.8V3a1.5 1.5 0 0 0-3 0v1.2A7 7 0 0 0 5 11v5l-2 2v1h18v-1z"/></svg>
        <span class="unread">${unread}</span></a>
      <span class="me">${me.user}</span>
    </header>
    <nav>${PAGES.map(([id, label]) => html`<a class=${id === page ? 'current' : ''} href=${'#/' + id}>${label}</a>`)}</nav>
    <main data-page=${page}>${(pages[page] || pages.services)()}</main>
  </div>`;
}

render(html`<${App} />`, document.getElementById('app'));
