// The passkey ceremonies: the only script the proxy's pages run (inlined where a passkey
// button is, and allowed by its hash alone). A button carries what it needs in data-
// attributes; the server keeps each challenge and checks every answer.
(function () {
  'use strict';
  function fromB64u(s) {
    var b = s.replace(/-/g, '+').replace(/_/g, '/');
    while (b.length % 4) b += '=';
    return Uint8Array.from(atob(b), function (c) { return c.charCodeAt(0); });
  }
  function toB64u(buf) {
    var s = '';
    new Uint8Array(buf).forEach(function (b) { s += String.fromCharCode(b); });
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function say(text) {
    var el = document.getElementById('passkey-status');
    if (el) { el.textContent = text; el.hidden = false; }
  }
  async function post(url, csrf, body) {
    var res = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
      body: JSON.stringify(body),
    });
    var json = {};
    try { json = await res.json(); } catch (e) { /* not JSON: said below */ }
    if (!res.ok) throw new Error(json.message || 'The server answered ' + res.status + '.');
    return json;
  }
  async function add(button) {
    var name = document.getElementById('passkey-name');
    var options = (await post('/.auth/passkeys/register/options', button.dataset.csrf,
      { name: name ? name.value : '' })).publicKey;
    options.challenge = fromB64u(options.challenge);
    options.user.id = fromB64u(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = fromB64u(c.id); });
    var cred = await navigator.credentials.create({ publicKey: options });
    var r = cred.response;
    await post('/.auth/passkeys/register', button.dataset.csrf, {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: toB64u(r.attestationObject),
        clientDataJSON: toB64u(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined,
      },
      extensions: cred.getClientExtensionResults(),
    });
    location.assign(button.dataset.next);
  }
  async function signIn(button) {
    var options = (await post('/.auth/passkeys/sign-in/options', button.dataset.csrf,
      { req: button.dataset.req || null })).publicKey;
    options.challenge = fromB64u(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = fromB64u(c.id); });
    var cred = await navigator.credentials.get({ publicKey: options });
    var r = cred.response;
    var done = await post('/.auth/passkeys/sign-in', button.dataset.csrf, {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: toB64u(r.authenticatorData),
        clientDataJSON: toB64u(r.clientDataJSON),
        signature: toB64u(r.signature),
        userHandle: r.userHandle ? toB64u(r.userHandle) : null,
      },
      extensions: cred.getClientExtensionResults(),
    });
    location.assign(done.next);
  }
  [['passkey-add', add], ['passkey-sign-in', signIn]].forEach(function (pair) {
    var button = document.getElementById(pair[0]);
    if (!button) return;
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say('This browser cannot use passkeys.');
      return;
    }
    button.hidden = false;
    button.addEventListener('click', async function () {
      button.disabled = true;
      try {
        await pair[1](button);
      } catch (e) {
        say(e && e.name === 'NotAllowedError'
          ? 'The passkey prompt was closed or timed out. Please try again.'
          : (e && e.message) || 'Something went wrong. Please try again.');
      } finally {
        button.disabled = false;
      }
    });
  });
})();
