// RedFlag's test OpenID Connect provider: panva's oidc-provider (OpenID Certified) on 127.0.0.1.
//
// Configured by the environment (tests/oidc_provider/__init__.py starts it):
//   OIDC_PORT           the port to listen on
//   OIDC_CLIENT         JSON {client_id, client_secret, redirect_uris}
//   OIDC_ACCOUNTS       JSON {"<username>": {"groups": [...], "email": "..."}}: the claims each account gets
// Sign-in uses the library's own development interaction pages (a login form that accepts any password
// for a known username, then a consent page): the OAuth 2.0 / OpenID Connect protocol around them, the
// ID token signing and the userinfo endpoint are the library's, as any deployment has them.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const client = JSON.parse(process.env.OIDC_CLIENT);
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');

const provider = new Provider(issuer, {
  clients: [{
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups'],
    email: ['email', 'email_verified'],
  },
  features: { devInteractions: { enabled: true } },
  // The development interactions have no password check: only the accounts the test made exist.
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    const account = accounts[id];
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: id,
          email: account.email || `${id}@example.test`,
          email_verified: true,
          groups: account.groups || [],
        };
      },
    };
  },
  cookies: { keys: ['redflag-test-oidc-provider-cookie-key'] },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
