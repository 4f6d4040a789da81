"""OpenAI request bodies -> the gRPC API's requests. Pure logic, no I/O.

Only the shape is checked here (types, which parameters exist, what fits the protobuf
fields, and the values the gRPC API reads as "not set", such as `top_p: 0`); the values
are checked by the same code that checks gRPC requests (`gateway.validation`, the
engine), so the two APIs accept and refuse alike. A parameter LLM OS cannot honour is refused naming
it, never dropped: a caller asking for tools or a JSON schema must not get free text
that merely looks like an answer. Parameters sent as null are taken as not sent.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from llmos.errors import InvalidArgument, Unsupported
from llmos.priority import PriorityClass
from llmos.v1 import gateway_pb2, inference_pb2

#: choices per request (`n`): each is a generation of its own
MAX_CHOICES = 8
MAX_USER_CHARS = 256
#: OpenAI's default temperature (the gRPC API's is 0, greedy)
OPENAI_TEMPERATURE = 1.0
PRIORITY_HEADER = "x-llmos-priority"

_SAMPLING = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "stream",
    "stream_options",
    # LLM OS (and vLLM) extensions the engine honours
    "top_k",
    "ignore_eos",
}
CHAT_PARAMETERS = _SAMPLING | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION_PARAMETERS = _SAMPLING | {"prompt"}
EMBEDDING_PARAMETERS = {"model", "input", "encoding_format", "user"}

#: parameters accepted only with the value that asks for nothing LLM OS lacks
_HARMLESS: dict[str, Any] = {
    "response_format": lambda v: v == {"type": "text"},
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "logit_bias": lambda v: v == {},
    "store": lambda v: v is False,
    "service_tier": lambda v: v in ("auto", "default"),
    "echo": lambda v: v is False,
    "suffix": lambda v: v == "",
    "best_of": lambda v: v == 1,
}
_WHY_NOT = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "response_format": "only {'type': 'text'} is supported (no JSON mode or JSON schema)",
    "logit_bias": "is not supported",
    "echo": "is not supported",
    "suffix": "is not supported",
    "best_of": "only 1 is supported",
    "dimensions": "is not supported: embeddings have the model's own size",
}


@dataclass
class GenerationCall:
    """A chat or completion request as gRPC requests: one per prompt, each run `n` times."""

    kind: Literal["chat", "generate"]
    requests: list[gateway_pb2.ChatRequest | gateway_pb2.GenerateRequest]
    model: str
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    priority: int = 0  # the x-llmos-priority header's class
    #: parameters the caller spelt another accepted way (for error messages)
    aliases: dict[str, str] = field(default_factory=dict)

    def choices(self) -> list[gateway_pb2.ChatRequest | gateway_pb2.GenerateRequest]:
        """Every generation to run, in choice order. A seeded request's choices get
        consecutive seeds: identical draws would make `n` pointless."""
        runs = []
        for request in self.requests:
            for index in range(self.n):
                run = copy.deepcopy(request)
                if index and run.params.HasField("seed"):
                    run.params.seed = (run.params.seed + index) % 2**63
                runs.append(run)
        return runs


@dataclass
class EmbeddingCall:
    request: gateway_pb2.EmbedRequest
    base64: bool = False


def _present(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _check_known(body: dict[str, Any], known: set[str]) -> None:
    for name, value in body.items():
        if name in known:
            continue
        check = _HARMLESS.get(name)
        if check is not None and check(value):
            continue
        # a feature asked for, not a malformed request: newer SDKs send parameters
        # older servers do not know, and must not be taken for attackers
        raise Unsupported(name, _WHY_NOT.get(name, "is not a parameter LLM OS supports"))


INT32_MAX = 2**31 - 1


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidArgument(name, f"must be {what}")
    if not isinstance(value, kind):
        raise InvalidArgument(name, f"must be {what}")
    return value


def _int32(body: dict[str, Any], name: str) -> int | None:
    """An integer parameter bound for an int32 field (larger ones are no count of
    anything LLM OS could do: refused here rather than overflowing the field)."""
    value = _typed(body, name, int, "an integer")
    if value is not None and not -INT32_MAX <= value <= INT32_MAX:
        raise InvalidArgument(name, f"must be at most {INT32_MAX}")
    return value  # type: ignore[no-any-return]


def request_body(raw: Any) -> dict[str, Any]:
    """The JSON body as an object, nulls dropped."""
    if not isinstance(raw, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return _present(raw)


def _params(body: dict[str, Any], aliases: dict[str, str]) -> inference_pb2.GenerationParams:
    params = inference_pb2.GenerationParams()
    max_tokens = _int32(body, "max_tokens")
    newer = _int32(body, "max_completion_tokens")
    if newer is not None:
        if max_tokens is not None and max_tokens != newer:
            raise InvalidArgument("max_completion_tokens", "differs from max_tokens; send one")
        max_tokens = newer
        aliases["max_tokens"] = "max_completion_tokens"
    if max_tokens is not None:  # 0 would read as "not set" (the default) over gRPC
        if max_tokens <= 0:
            raise InvalidArgument(aliases.get("max_tokens", "max_tokens"), "must be at least 1")
        params.max_tokens = max_tokens
    temperature = _typed(body, "temperature", (int, float), "a number")
    params.temperature = OPENAI_TEMPERATURE if temperature is None else temperature
    top_p = _typed(body, "top_p", (int, float), "a number")
    if top_p is not None:  # 0 would read as "not set" (1.0) over gRPC
        if top_p <= 0:
            raise InvalidArgument("top_p", "must be in (0, 1]")
        params.top_p = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        params.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        params.stop.extend(stop)
    elif stop is not None:
        raise InvalidArgument("stop", "must be a string or a list of strings")
    seed = _typed(body, "seed", int, "an integer")
    if seed is not None:
        if not 0 <= seed < 2**63:
            raise InvalidArgument("seed", "must be between 0 and 2^63-1")
        params.seed = seed
    for name in ("presence_penalty", "frequency_penalty"):
        value = _typed(body, name, (int, float), "a number")
        if value is not None:
            setattr(params, name, value)
    top_k = _int32(body, "top_k")
    if top_k is not None:
        if top_k < -1:
            raise InvalidArgument("top_k", "must be -1 or 0 (off) or a positive count")
        params.top_k = max(top_k, 0)  # vLLM's -1 means off, as 0 does here
    params.ignore_eos = bool(_typed(body, "ignore_eos", bool, "true or false"))
    return params


def _generation(
    raw: Any, known: set[str], priority: str, kind: Literal["chat", "generate"]
) -> tuple[dict[str, Any], GenerationCall, inference_pb2.GenerationParams]:
    """What chat and completion bodies share: the checked body, the call, the params."""
    body = request_body(raw)
    _check_known(body, known)
    model = _typed(body, "model", str, "a string") or ""
    n = _int32(body, "n")
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise InvalidArgument("n", f"must be between 1 and {MAX_CHOICES}")
    user = _typed(body, "user", str, "a string")
    if user is not None and len(user) > MAX_USER_CHARS:
        raise InvalidArgument("user", f"must be at most {MAX_USER_CHARS} characters")
    stream = bool(_typed(body, "stream", bool, "true or false"))
    options = _typed(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise InvalidArgument("stream_options", "is only allowed with stream: true")
    unknown = set(options) - {"include_usage"}
    if unknown:
        raise InvalidArgument(f"stream_options.{sorted(unknown)[0]}", "is not supported")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidArgument("stream_options.include_usage", "must be true or false")
    call = GenerationCall(
        priority=int(PriorityClass.parse(priority, PRIORITY_HEADER)),
        kind=kind,
        requests=[],
        model=model,
        n=n or 1,
        stream=stream,
        include_usage=include_usage,
    )
    return body, call, _params(body, call.aliases)


def chat_call(raw: Any, priority: str = "") -> GenerationCall:
    """A `/v1/chat/completions` body."""
    body, call, params = _generation(raw, CHAT_PARAMETERS, priority, "chat")
    logprobs = _typed(body, "logprobs", bool, "true or false")
    top = _int32(body, "top_logprobs")
    params.logprobs = bool(logprobs)
    params.top_logprobs = top or 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidArgument("messages", "must be a list of messages")
    request = gateway_pb2.ChatRequest(
        model=call.model,
        messages=[_message(m, i) for i, m in enumerate(messages)],
        params=params,
    )
    request.priority = call.priority  # type: ignore[assignment]
    call.requests.append(request)
    return call


def _message(raw: Any, index: int) -> inference_pb2.ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidArgument(where, "must be an object with role and content")
    # what the SDKs send back of an answer (`refusal: null`, ...) is as good as not sent;
    # a participant's `name` is accepted, as the chat template has no place for it
    raw = _present(raw)
    if raw.get("role") == "assistant":
        raw.setdefault("content", "")
    extra = set(raw) - {"role", "content", "name", "refusal"}
    if extra:
        name = sorted(extra)[0]
        why = (
            "tool calling is not supported"
            if name in ("tool_calls", "function_call")
            else ("is not supported")
        )
        raise Unsupported(f"{where}.{name}", why)
    role = raw.get("role")
    if not isinstance(role, str):
        raise InvalidArgument(f"{where}.role", "must be a string")
    content = raw.get("content")
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Unsupported(
                    f"{where}.content[{part_index}].type", "only text parts are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{where}.content[{part_index}].text", "must be a string")
            texts.append(text)
        content = "".join(texts)
    if not isinstance(content, str):
        raise InvalidArgument(f"{where}.content", "must be a string or a list of text parts")
    # OpenAI's newer name for the instructions a system message gives
    return inference_pb2.ChatMessage(
        role="system" if role == "developer" else role, content=content
    )


def completion_call(raw: Any, priority: str = "") -> GenerationCall:
    """A `/v1/completions` body; a list of prompts is one request per prompt."""
    body, call, params = _generation(raw, COMPLETION_PARAMETERS, priority, "generate")
    top = _int32(body, "logprobs")
    if top is not None:
        if not 0 <= top <= 5:
            raise InvalidArgument("logprobs", "must be between 0 and 5")
        params.logprobs, params.top_logprobs = True, top
        call.aliases["top_logprobs"] = "logprobs"
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise InvalidArgument("prompt", "must be a string or a non-empty list of strings")
    if not all(isinstance(p, str) for p in prompts):
        raise Unsupported("prompt", "token-id prompts are not supported; send text")
    if len(prompts) * call.n > MAX_CHOICES:
        raise InvalidArgument("prompt", f"prompts x n must be at most {MAX_CHOICES}")
    for text in prompts:
        request = gateway_pb2.GenerateRequest(model=call.model, prompt=text, params=params)
        request.priority = call.priority  # type: ignore[assignment]
        call.requests.append(request)
    return call


def embedding_call(raw: Any) -> EmbeddingCall:
    """A `/v1/embeddings` body."""
    body = request_body(raw)
    _check_known(body, EMBEDDING_PARAMETERS)
    model = _typed(body, "model", str, "a string") or ""
    text = body.get("input")
    inputs = [text] if isinstance(text, str) else text
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise InvalidArgument("input", "must be a string or a list of strings (not token ids)")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidArgument("encoding_format", "must be 'float' or 'base64'")
    _typed(body, "user", str, "a string")
    return EmbeddingCall(
        gateway_pb2.EmbedRequest(model=model, inputs=inputs), base64=encoding == "base64"
    )
