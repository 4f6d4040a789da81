"""The compute engine: continuous batching over a KV cache for the Llama model."""
