// Cloister's passkey pages (served by the api role under /v1/auth/passkey/,
// CSP script-src 'self'): /register#<invite token> registers a passkey for
// the invited user, /login[?rd=&bind=&exp=&mac=] signs in with one. The
// browser only runs the WebAuthn ceremony; the server checks everything.
"use strict";

const base = "/v1/auth/passkey/";

function b64u(buf) {
  const bytes = new Uint8Array(buf);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64u(s) {
  const t = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(t.length);
  for (let i = 0; i < t.length; i++) out[i] = t.charCodeAt(i);
  return out.buffer;
}

function show(state, text) {
  document.body.dataset.state = state;
  document.getElementById("status").textContent = text;
}

async function call(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Accept": "application/json"},
    credentials: "same-origin",
    body: JSON.stringify(body),
  });
  let doc = {};
  try {
    doc = await r.json();
  } catch (e) {
    doc = {};
  }
  if (!r.ok) {
    const msg = (doc.error && doc.error.message) || ("the server answered " + r.status);
    throw new Error(msg);
  }
  return doc;
}

function withIds(list) {
  return (list || []).map((c) => Object.assign({}, c, {id: unb64u(c.id)}));
}

async function register(invite) {
  const begin = await call("register/begin", {invite: invite});
  const pk = begin.publicKey;
  pk.challenge = unb64u(pk.challenge);
  pk.user.id = unb64u(pk.user.id);
  pk.excludeCredentials = withIds(pk.excludeCredentials);
  show("working", "Waiting for your authenticator…");
  const cred = await navigator.credentials.create({publicKey: pk});
  const done = await call("register/finish", {
    invite: invite,
    id: cred.id,
    clientDataJSON: b64u(cred.response.clientDataJSON),
    attestationObject: b64u(cred.response.attestationObject),
  });
  show("done", "Passkey registered for " + done.user + ". You can now sign in with it.");
  const next = document.getElementById("next");
  next.href = base + "login";
  next.textContent = "Sign in";
  next.hidden = false;
}

async function login() {
  const begin = await call("login/begin" + location.search, {});
  const pk = begin.publicKey;
  pk.challenge = unb64u(pk.challenge);
  pk.allowCredentials = withIds(pk.allowCredentials);
  show("working", "Waiting for your authenticator…");
  const cred = await navigator.credentials.get({publicKey: pk});
  const r = cred.response;
  const done = await call("login/finish", {
    id: cred.id,
    clientDataJSON: b64u(r.clientDataJSON),
    authenticatorData: b64u(r.authenticatorData),
    signature: b64u(r.signature),
    userHandle: r.userHandle ? b64u(r.userHandle) : null,
  });
  if (done.redirect) {
    show("done", "Signed in as " + done.user + "; going back to " + done.service + "…");
    location.assign(done.redirect);
  } else {
    show("done", "Signed in as " + done.user + ".");
  }
}

function start() {
  const page = location.pathname.slice(base.length);
  const go = document.getElementById("go");
  let run;
  if (page === "register") {
    const invite = location.hash.slice(1);
    history.replaceState(null, "", location.pathname); // the token leaves the address bar
    document.getElementById("title").textContent = "Register a passkey";
    document.getElementById("intro").textContent = invite
      ? "Your administrator invited you to Cloister. Register a passkey on this device to sign in without a password."
      : "This invitation link is incomplete: open the whole link you were given.";
    go.textContent = "Register a passkey";
    run = invite ? () => register(invite) : null;
  } else {
    document.getElementById("title").textContent = "Sign in";
    document.getElementById("intro").textContent = "Sign in to Cloister with your passkey.";
    go.textContent = "Sign in with a passkey";
    run = login;
  }
  if (!window.PublicKeyCredential) {
    show("error", "This browser does not support passkeys (WebAuthn).");
    return;
  }
  if (!run) {
    show("error", "No invitation token in the link.");
    return;
  }
  go.disabled = false;
  go.addEventListener("click", () => {
    go.disabled = true;
    run().catch((e) => {
      show("error", "Failed: " + e.message);
      go.disabled = false;
    });
  });
}

document.addEventListener("DOMContentLoaded", start);
