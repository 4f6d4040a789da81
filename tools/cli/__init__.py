"""`llmos`, the command-line client of LLM OS."""
