"""The storage service of LLM OS."""
