"""The OpenAI-compatible API's wire format: parse and validate a chat-completion request,
shape responses, chunks and errors as OpenAI's clients expect them."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse

from chatsite.untrusted import UntrustedInputError, json_loads, text_problem
from inference import SamplingParams

ROLES = {"system", "user", "assistant", "developer"}
MAX_STOP = 4
logger = logging.getLogger(__name__)

UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "modalities", "prediction")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error_response(error: Exception) -> JsonResponse:
    """What the API answers for an exception no view handled: the client's fault as a 4xx,
    anything else as a 500, both in OpenAI's shape (the traceback goes to the log only)."""
    if isinstance(error, Http404):
        api_error = ApiError(404, "Unknown API path. This server serves /v1/models and /v1/chat/completions.",
                             code="unknown_url")
    elif isinstance(error, RequestDataTooBig):
        api_error = ApiError(413, "The request body is too large.", code="request_too_large")
    elif isinstance(error, SuspiciousOperation):
        api_error = ApiError(400, "The request was refused as malformed.")
    else:
        logger.error("API request failed", exc_info=error)
        api_error = ApiError(500, "The server had an error while processing your request.", type="server_error")
    return JsonResponse(api_error.body(), status=api_error.status)


@dataclass(frozen=True)
class ChatCompletionRequest:
    messages: list[dict[str, str]]
    stream: bool = False
    n: int = 1
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    sampling: dict = field(default_factory=dict)  # SamplingParams fields the client set


def parse_chat_completion(
    body: bytes,
    *,
    model_name: str,
    max_input_chars: int,
    max_output_tokens: int,
    max_choices: int,
    max_messages: int = 64,
    max_total_chars: int = 16000,
) -> ChatCompletionRequest:
    """Validate a /v1/chat/completions body against the model and the caller's plan."""
    try:
        data = json_loads(body)
    except UntrustedInputError as error:
        raise ApiError(400, f"We could not parse the JSON body of your request: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist. This server serves `{model_name}`.",
                       param="model", code="model_not_found")
    for name in UNSUPPORTED:
        if data.get(name):
            raise ApiError(400, f"`{name}` is not supported by this server.", param=name)
    if data.get("logprobs"):
        raise ApiError(400, "`logprobs` is not supported by this server.", param="logprobs")
    response_format = data.get("response_format")
    if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise ApiError(400, "Only the `text` response_format is supported.", param="response_format")

    messages = _messages(data.get("messages"), max_input_chars, max_messages, max_total_chars)
    stream = _typed(data, "stream", bool, False)
    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "`stream_options` must be an object.", param="stream_options")
    n = _typed(data, "n", int, 1)
    best_of = _typed(data, "best_of", int, 1)
    for name, value in (("n", n), ("best_of", best_of)):
        if not 1 <= value <= max_choices:
            raise ApiError(400, f"`{name}` is {value}; your plan allows 1 to {max_choices}.", param=name)

    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    sampling: dict = {}
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, "`max_tokens` must be a whole number of at least 1.", param="max_tokens")
        if max_tokens > max_output_tokens:
            raise ApiError(400, f"`max_tokens` is {max_tokens}; your plan allows at most {max_output_tokens}.",
                           param="max_tokens")
        sampling["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "repetition_penalty"):
        if data.get(name) is not None:
            sampling[name] = _number(data, name)
    for name in ("top_k", "min_tokens", "seed"):
        if data.get(name) is not None:
            sampling[name] = _typed(data, name, int, None)
    if sampling.get("top_k") == -1:  # vLLM's spelling of "no top-k"
        sampling["top_k"] = 0
    if data.get("ignore_eos") is not None:
        sampling["ignore_eos"] = _typed(data, "ignore_eos", bool, False)
    stop = data.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, f"`stop` must be a string or a list of at most {MAX_STOP} non-empty strings.", param="stop")
        sampling["stop"] = stops
    if best_of > 1:
        sampling["best_of"] = best_of
    try:  # ranges are SamplingParams' to judge; its message names the field
        SamplingParams(**{**sampling, "stop": tuple(sampling.get("stop", ())),
                          "max_new_tokens": sampling.get("max_new_tokens", max_output_tokens)})
    except ValueError as error:
        raise ApiError(400, str(error).capitalize() + ".") from None
    return ChatCompletionRequest(
        messages=messages,
        stream=stream,
        n=n,
        include_usage=bool(stream and stream_options.get("include_usage")),
        sampling=sampling,
    )


def _messages(raw, max_input_chars: int, max_messages: int, max_total_chars: int) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "`messages` must be a non-empty list.", param="messages")
    if len(raw) > max_messages:
        raise ApiError(400, f"`messages` has {len(raw):,} messages; your plan allows {max_messages:,} in one call.",
                       param="messages")
    messages = []
    total_chars = 0
    for index, message in enumerate(raw):
        param = f"messages.[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise ApiError(400, f"{param} must be an object with a role of {', '.join(sorted(ROLES))}.", param=param)
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": "..."}]
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise ApiError(400, f"{param}.content: only text parts are supported.", param=f"{param}.content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{param}.content must be a string.", param=f"{param}.content")
        if len(content) > max_input_chars:
            raise ApiError(400, f"{param}.content has {len(content):,} characters; your plan allows {max_input_chars:,}.",
                           param=f"{param}.content")
        if problem := text_problem(content):
            raise ApiError(400, f"{param}.content {problem}.", param=f"{param}.content")
        total_chars += len(content)
        if total_chars > max_total_chars:
            raise ApiError(400, f"The messages have more than {max_total_chars:,} characters together, "
                                "your plan's limit for one call.", param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": content})
    if not any(message["content"].strip() for message in messages):
        raise ApiError(400, "The messages have no text for the model to answer.", param="messages")
    return messages


def _typed(data: dict, name: str, kind: type, default):
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, f"`{name}` must be {'a whole number' if kind is int else 'true or false'}.", param=name)
    return value


def _number(data: dict, name: str) -> float:
    value = data[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ApiError(400, f"`{name}` must be a number.", param=name)
    return float(value)


FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length"}


def finish_reason(reason: str) -> str:
    """OpenAI's name for why a choice ended; a stopped one counts as `stop`."""
    return FINISH_REASONS.get(reason, "stop")


def usage_out(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(*, completion_id: str, created: int, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


def chunk(*, completion_id: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: "1h2m3s", "6m0s", "20s"."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
