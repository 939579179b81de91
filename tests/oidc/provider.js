// A real OpenID provider (npm's oidc-provider) on loopback HTTPS for the
// OIDC login tests. Usage:
//   node provider.js PORT CERT.pem KEY.pem CLIENTS.json
// Accounts: any login name; alice is in group devs. Prints "ready" once
// listening. Development interactions (login and consent forms) are on.
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, clientsFile] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;
const groups = { alice: ['devs'] };

const provider = new Provider(issuer, {
  clients: JSON.parse(fs.readFileSync(clientsFile, 'utf8')),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  conformIdTokenClaims: false, // scope claims in the ID token, as many providers do
  cookies: { keys: ['cloister-oidc-test'] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, groups: groups[id] || [] };
      },
    };
  },
});

// refusals go to the log the tests print when they fail
for (const event of ['grant.error', 'authorization.error', 'server_error']) {
  provider.on(event, (ctx, err) => console.error(`${event}: ${err.message} ${err.error_description || ''}`));
}

https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log('ready'));
