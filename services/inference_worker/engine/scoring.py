"""Label scoring for classification, in memory bounded by the request's size limits.

A classification scores every label as a continuation of one prompt. The obvious way,
`log_softmax(lm_head(hidden))` over the whole batch, materialises logits for every
position of every row: rows x tokens x vocabulary floats (a 30k-character text with 32
labels asked for tens of GB). Only the logits that predict a label's own tokens matter,
so the hidden states at those positions are gathered first and only they go through the
LM head: label tokens x vocabulary floats, a few MB at most.

The text itself is bounded too, and refused rather than truncated: a cut text would be
classified on what it no longer says, and the caller could not tell. The gateway refuses
long text by characters before any work is sent (`gateway/validation.py`); the limit here
is in tokens, for callers that reach a worker another way and for tokenizers that pack
few characters per token. The rows of one Triton batch go through the model one at a
time so a batch of 32 labels costs the memory of one row's activations, not 32.
"""

from __future__ import annotations

import math

import torch

from llmos.errors import InvalidArgument
from llmos.model.llama import LlamaForCausalLM
from llmos.model.text import TextCodec
from llmos.v1 import inference_pb2

#: the longest classification prompt (instructions, the labels, the text), in tokens
MAX_CLASSIFY_PROMPT_TOKENS = 2048
#: the longest label, in tokens (the gateway allows 200 characters)
MAX_LABEL_TOKENS = 64


def classification_prompt(codec: TextCodec, text: str, labels: list[str]) -> list[int]:
    """The prompt a label's likelihood is measured after."""
    question = (
        "Classify the text into one of these labels: "
        + ", ".join(labels)
        + f".\nText: {text}\nAnswer with the label only."
    )
    return codec.encode(codec.render_chat([{"role": "user", "content": question}]))


def check_classification_tokens(prompt: list[int], label: list[int], max_context: int) -> None:
    """Refuse a (prompt, label) pair too long to score, naming the field at fault."""
    if not label:
        raise InvalidArgument("labels", "must not be empty")
    if len(label) > MAX_LABEL_TOKENS:
        raise InvalidArgument("labels", f"each label may be at most {MAX_LABEL_TOKENS} tokens")
    limit = min(MAX_CLASSIFY_PROMPT_TOKENS, max_context - len(label))
    if len(prompt) > limit:
        raise InvalidArgument(
            "text",
            f"with the labels makes a {len(prompt)}-token prompt; "
            f"classification accepts at most {limit} tokens",
        )


def label_log_likelihood(model: LlamaForCausalLM, prompt: list[int], label: list[int]) -> float:
    """log P(label | prompt): the LM head runs only where it predicts a label token."""
    device = model.lm_head.weight.device  # the model's, wherever it runs
    ids = torch.tensor([prompt + label], device=device)
    hidden = model.hidden_states(ids, torch.arange(ids.shape[1], device=device).expand_as(ids))
    # the hidden state at position i predicts token i + 1
    wanted = hidden[0, len(prompt) - 1 : len(prompt) - 1 + len(label)]
    logprobs = torch.log_softmax(model.lm_head(wanted).float(), dim=-1)
    rows = torch.arange(len(label), device=device)
    return float(logprobs[rows, torch.tensor(label, device=device)].sum())


def label_log_likelihoods(
    model: LlamaForCausalLM, prompts: list[list[int]], labels: list[list[int]]
) -> list[float]:
    """log P(label | prompt) for each pair of a batch, one pair through the model at a time."""
    with torch.inference_mode():
        return [
            label_log_likelihood(model, prompt, label)
            for prompt, label in zip(prompts, labels, strict=True)
        ]


def rank_labels(labels: list[str], scores: list[float]) -> inference_pb2.ClassifyResult:
    """Labels best first, each with its log-likelihood and its softmax over the labels."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    ranked = sorted(zip(labels, scores, weights, strict=True), key=lambda r: -r[1])
    return inference_pb2.ClassifyResult(
        scores=[
            inference_pb2.LabelScore(label=label, log_likelihood=score, probability=w / total)
            for label, score, w in ranked
        ]
    )
