"""The gateway: the one public door of LLM OS. It serves the public gRPC API (and the
storage and audit APIs, relayed per tenant) behind OAuth 2.0: its own authorization server
or any OIDC issuer's tokens, scopes per RPC, rate limits, a response cache, an audit record
per call."""
