"""WLCG tokens beside X.509 proxies (issue 19).

- `profile`: the WLCG common JWT profile as a pure function with named rules
  (`token.issuer`, `token.audience`, `token.expired`, `token.scope`, ...),
  like `policy.decide`;
- `verify`: a token's signature against an issuer's key set, then `profile`;
- `keys`: proxyd's own signing keys as a token issuer: rotation, and the
  key set it publishes (old keys stay published until their tokens expire).
"""
