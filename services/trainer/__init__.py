"""The trainer service of LLM OS."""
