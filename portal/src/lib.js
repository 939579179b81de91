// The portal's helpers without a user interface: the API over the portal's
// own origin, Server-Sent Events over fetch, RFC 8785 canonical JSON, the
// job digest, Bech32 for age recipients, and the audit checkpoint check.

// Every API call carries the portal's CSRF header: the proxy forwards a
// /v1/ call only with it (docs/portal.md), and no other site can set it.
const HEADERS = { 'x-cloister-csrf': '1', accept: 'application/json' };

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

// A session that ended (revoked, expired): reloading lets the proxy send
// the browser to log in. The API may learn of it a moment before the proxy
// does, so the page is reloaded once the proxy would redirect a navigation
// (else the reloaded page's script could be refused): polled for up to 5 s.
let signingOut = false;
async function signedOut() {
  if (signingOut) return;
  signingOut = true;
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      const r = await fetch('/', { headers: { accept: 'text/html' }, redirect: 'manual', cache: 'no-store' });
      if (r.type === 'opaqueredirect' || r.status === 401) break;
    } catch (e) {
      break;
    }
    await new Promise((done) => setTimeout(done, 200));
  }
  window.location.reload();
}

// METHOD PATH (under /v1) with BODY as JSON; the answer's JSON, or an ApiError.
export async function api(method, path, body) {
  const init = { method, headers: { ...HEADERS }, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch('/v1' + path, init);
  if (r.status === 401) {
    signedOut();
    throw new ApiError(401, null);
  }
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

// Follows the Server-Sent Events stream PATH: ON_EVENT(event, data) for each
// event, reconnecting (after a second) until SIGNAL aborts; an ended session
// reloads the page. ON_EVENT returns a path to reconnect to, or nothing.
export async function follow(path, onEvent, signal) {
  while (!signal.aborted) {
    try {
      const r = await fetch('/v1' + path, { headers: HEADERS, credentials: 'same-origin', signal, cache: 'no-store' });
      if (r.status === 401) return signedOut();
      if (!r.ok) throw new ApiError(r.status, null);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
          }
          if (!data) continue;
          const parsed = JSON.parse(data);
          if (event === 'ERROR' && parsed.error && parsed.error.code === 'unauthenticated') return signedOut();
          const next = onEvent(event, parsed);
          if (next) path = next;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    await new Promise((done) => setTimeout(done, 1000));
  }
}

// ---- RFC 8785 (JCS) for the values a digest input holds ----

function jcsString(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

// Compares member names by their UTF-16 code units, as RFC 8785 §3.2.3 sorts.
function utf16Order(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a.charCodeAt(i) - b.charCodeAt(i);
    if (d) return d;
  }
  return a.length - b.length;
}

// The canonical JSON text of V: null, booleans, safe integers, strings,
// arrays and objects (what a digest input holds); other numbers are refused.
export function jcs(v) {
  if (v === null) return 'null';
  if (v === true || v === false) return String(v);
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new Error('jcs: only integers are expected in a digest input');
    return String(v);
  }
  if (typeof v === 'string') return jcsString(v);
  if (Array.isArray(v)) return '[' + v.map(jcs).join(',') + ']';
  if (typeof v === 'object')
    return '{' + Object.keys(v).sort(utf16Order).map((k) => jcsString(k) + ':' + jcs(v[k])).join(',') + '}';
  throw new Error('jcs: unsupported value');
}

export const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
export const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
export const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

export async function sha256(data) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

// The message an approval signs (DESIGN.md, "Confidential analytics").
export const approvalMessage = (digestHex) => new TextEncoder().encode(`cloister job approval v1\n${digestHex}\n`);

// ---- Bech32 (BIP 173) for age X25519 recipients ----

const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';

function polymod(values) {
  const gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk ^= gen[i];
  }
  return chk;
}

// "age1…": the Bech32 encoding of a 32-byte X25519 public key.
export function ageRecipient(pub) {
  const hrp = 'age';
  const data = [];
  let acc = 0;
  let bits = 0;
  for (const b of pub) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      data.push((acc >>> bits) & 31);
    }
  }
  if (bits) data.push((acc << (5 - bits)) & 31);
  const expand = [...[...hrp].map((c) => c.charCodeAt(0) >> 5), 0, ...[...hrp].map((c) => c.charCodeAt(0) & 31)];
  const mod = polymod([...expand, ...data, 0, 0, 0, 0, 0, 0]) ^ 1;
  const checksum = [0, 1, 2, 3, 4, 5].map((i) => (mod >>> (5 * (5 - i))) & 31);
  return hrp + '1' + [...data, ...checksum].map((d) => CHARSET[d]).join('');
}

// ---- the browser's keys, kept non-extractable in IndexedDB ----

function db() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open('cloister-portal', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('keys');
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function idb(mode, run) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction('keys', mode);
    const req = run(tx.objectStore('keys'));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

// USER's keys in this browser: {approval: CryptoKeyPair (Ed25519),
// recipient: CryptoKeyPair (X25519)}, or undefined.
export const loadKeys = (user) => idb('readonly', (s) => s.get(user));

// Makes USER's two key pairs here (private halves non-extractable) and keeps them.
export async function makeKeys(user) {
  const approval = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const recipient = await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  const keys = { approval, recipient };
  await idb('readwrite', (s) => s.put(keys, user));
  return keys;
}

// The public halves as the API registers them: {approval: base64, recipient: "age1…"}.
export async function publicHalves(keys) {
  const approval = new Uint8Array(await crypto.subtle.exportKey('raw', keys.approval.publicKey));
  const recipient = new Uint8Array(await crypto.subtle.exportKey('raw', keys.recipient.publicKey));
  return { approval: b64(approval), recipient: ageRecipient(recipient) };
}

// ---- the audit log's checkpoint (docs/audit.md) ----

// Verifies the signed note CHECKPOINT with the verifier key string KEY
// ("<name>+<key id hex>+<base64(0x01 || Ed25519 key)>"). Returns
// {origin, size, root, keyId}, or throws saying what failed.
export async function verifyCheckpoint(checkpoint, key) {
  // name+keyid+base64: the base64 may hold '+' too
  const first = key.indexOf('+');
  const second = key.indexOf('+', first + 1);
  if (first < 0 || second < 0) throw new Error('the audit key is not a note verifier key (name+id+key)');
  const name = key.slice(0, first);
  const keyId = key.slice(first + 1, second);
  const keyB64 = key.slice(second + 1).trim();
  const raw = unb64(keyB64);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error('the audit key is not an Ed25519 note key');
  const pub = raw.slice(1);
  const idInput = new Uint8Array([...new TextEncoder().encode(name + '\n'), 1, ...pub]);
  if (hex((await sha256(idInput)).slice(0, 4)) !== keyId) throw new Error('the audit key ID does not match the key');
  const cut = checkpoint.lastIndexOf('\n\n');
  if (cut < 0) throw new Error('the checkpoint is not a signed note');
  const text = checkpoint.slice(0, cut + 1);
  const line = checkpoint
    .slice(cut + 2)
    .split('\n')
    .find((l) => l.startsWith('\u2014 ' + name + ' '));
  if (!line) throw new Error('the checkpoint has no signature by ' + name);
  const blob = unb64(line.split(' ')[2]);
  if (hex(blob.slice(0, 4)) !== keyId) throw new Error('the signature is by another key');
  const verifier = await crypto.subtle.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify']);
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, verifier, blob.slice(4), new TextEncoder().encode(text));
  if (!ok) throw new Error('the checkpoint signature does not verify');
  const [origin, size, root] = text.split('\n');
  if (origin !== name) throw new Error('the checkpoint is of another log');
  return { origin, size: Number(size), root, keyId };
}
