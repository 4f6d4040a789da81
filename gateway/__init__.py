"""The gateway: the one public door of LLM OS (gRPC API, later OAuth 2.0 protected)."""
