"""The inference-worker service of LLM OS."""
