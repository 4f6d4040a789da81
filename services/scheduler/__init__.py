"""The scheduler service of LLM OS."""
