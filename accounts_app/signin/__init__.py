"""Signing in: django-allauth's log-in with second factors (TOTP, WebAuthn, recovery codes) and OpenID
Connect single sign-on, fitted to RedFlag.

- ``policy``: who must hold a second factor, who is break-glass (one definition each).
- ``middleware``: sends a person who must hold a second factor and has none to set one up.
- ``adapters``: allauth's hooks (no sign-up, lock-outs recorded, SSO-only, claims mapped to roles).
- ``sso``: the claim-to-role mapping.
- ``events``: the sign-in events (lock-outs, refusals, factor changes), never with a secret.
- ``signals``: allauth's MFA signals turned into those events.
- ``forms``: allauth's second-factor form, its lock-out recorded.
- ``checks``: REDFLAG_OIDC_ROLE_MAP checked by ``manage.py check``.
- ``views``/``urls``: the one sign-in page (rate-limited per address) and allauth's pages.
"""
