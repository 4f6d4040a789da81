"""The audit service of LLM OS."""
