"""Engines of task models: one class per kind, each answering a batch of works at once.

Triton's dynamic batcher hands a task model's backend the requests that arrived
together; an engine here turns those works into results in one pass of its library
(spaCy, CTranslate2), so batching is the engine's speed, never a change in its answers.
These modules import no Triton and no transport, so they run in unit tests as they do
inside the Triton container.
"""
