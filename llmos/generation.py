"""What a caller may ask of generation: one definition for the gateway, worker and engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmos.errors import InvalidArgument
from llmos.v1 import inference_pb2

MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 256
MAX_TOP_K = 1000
MAX_PENALTY = 2.0
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. temperature 0 means greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        """Whether sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Whether the tokens already generated change the next token's logits."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self, max_new_tokens: int, limit: str = "fit the context window") -> None:
        """Raise InvalidArgument naming the first field that cannot be honoured."""
        if self.max_tokens <= 0:
            raise InvalidArgument("max_tokens", "must be greater than 0")
        if self.max_tokens > max_new_tokens:
            raise InvalidArgument(
                "max_tokens", f"is {self.max_tokens}; at most {max_new_tokens} {limit}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument("temperature", "must be a finite number >= 0")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be between 0 (off) and {MAX_TOP_K}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument("top_p", "must be in (0, 1]")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidArgument("seed", "must be between 0 and 2^63-1")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value) or abs(value) > MAX_PENALTY:
                raise InvalidArgument(name, f"must be between -{MAX_PENALTY} and {MAX_PENALTY}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument("top_logprobs", "needs logprobs to be true")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        for index, sequence in enumerate(self.stop):
            if not sequence or len(sequence) > MAX_STOP_LENGTH:
                raise InvalidArgument(
                    f"stop[{index}]", f"must be 1 to {MAX_STOP_LENGTH} characters"
                )


DEFAULT_MAX_TOKENS = 128


def sampling_params_from_proto(params: inference_pb2.GenerationParams) -> SamplingParams:
    """The API's GenerationParams with defaults filled in (0 means 'not set')."""
    return SamplingParams(
        max_tokens=params.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p or 1.0,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
        ignore_eos=params.ignore_eos,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logprobs=params.logprobs,
        top_logprobs=params.top_logprobs,
    )
