"""The OpenAI-compatible HTTP API: the gRPC servicer's application code, spoken in
OpenAI's JSON, so the tools people already have (the openai SDK, LangChain, benchmark
clients) work against LLM OS with its identities, tenants, quotas and audit."""
