"""The /ws/chat/ JSON protocol: parse what clients send, shape what the server sends.

Client → server: {"type": "send", "conversation": <id or null>, "content": "..."}
                 {"type": "stop"}
Server → client: message.created, token, done, error (docs/protocol.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from chatsite.untrusted import UntrustedInputError, json_loads, text_problem


class ProtocolError(Exception):
    """A frame the server refuses; `code` is stable for programs, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SendFrame:
    conversation_id: int | None
    content: str


@dataclass(frozen=True)
class StopFrame:
    """Stop the reply this socket is waiting for."""


def parse_client_frame(text: str | None, *, max_content_chars: int) -> SendFrame | StopFrame:
    """Validate one client frame; raise ProtocolError saying what is wrong."""
    if text is None:
        raise ProtocolError("bad_frame", "Frames must be JSON text, not binary.")
    try:
        frame = json_loads(text)
    except UntrustedInputError as error:
        raise ProtocolError("bad_json", f"The frame is not valid JSON: {error}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_frame", "A frame must be a JSON object with a \"type\".")
    kind = frame.get("type")
    if kind == "stop":
        return StopFrame()
    if kind != "send":
        raise ProtocolError("unknown_type", f"Unknown frame type {kind!r}; expected \"send\" or \"stop\".")
    conversation_id = frame.get("conversation")
    if conversation_id is not None and (not isinstance(conversation_id, int) or isinstance(conversation_id, bool)):
        raise ProtocolError("bad_frame", "\"conversation\" must be a conversation id or null.")
    content = frame.get("content")
    if not isinstance(content, str):
        raise ProtocolError("empty_content", "\"content\" is missing; send the message text.")
    content = content.strip()
    if not content:
        raise ProtocolError("empty_content", "The message is empty.")
    if problem := text_problem(content):
        raise ProtocolError("bad_text", f"The message {problem}.")
    if len(content) > max_content_chars:
        raise ProtocolError(
            "too_long", f"The message has {len(content):,} characters; your plan allows {max_content_chars:,}."
        )
    return SendFrame(conversation_id=conversation_id, content=content)


class MessageOut(TypedDict):
    id: int
    role: str
    content: str
    status: str
    parent: int | None


class QuotaOut(TypedDict):
    plan: str
    plan_name: str
    limit: int  # messages per window
    remaining: int
    window_s: int
    resets_at: str | None  # ISO time the oldest counted message leaves the window


class MessageCreatedFrame(TypedDict):
    type: Literal["message.created"]
    conversation: dict
    user_message: MessageOut
    message: MessageOut
    quota: QuotaOut


class TokenFrame(TypedDict):
    type: Literal["token"]
    message: int
    text: str
    index: int
    offset: int  # where `text` begins in the reply's content, in characters


class DoneFrame(TypedDict):
    type: Literal["done"]
    message: int
    status: str
    finish_reason: str
    content: str
    usage: dict


class ErrorFrame(TypedDict, total=False):
    type: Literal["error"]
    code: str
    error: str
    message: int
    retry_after: int  # rate_limited: seconds until one more message is allowed
    quota: QuotaOut  # rate_limited: the window as it stands


def message_out(message) -> MessageOut:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "parent": message.parent_id,
    }


def message_created_frame(user_message, assistant_message, quota: QuotaOut) -> MessageCreatedFrame:
    conversation = assistant_message.conversation
    return {
        "type": "message.created",
        "conversation": {"id": conversation.id, "title": conversation.title},
        "user_message": message_out(user_message),
        "message": message_out(assistant_message),
        "quota": quota,
    }


def token_frame(message_id: int, *, text: str, index: int, offset: int) -> TokenFrame:
    return {"type": "token", "message": message_id, "text": text, "index": index, "offset": offset}


def done_frame(message_id: int, *, status: str, finish_reason: str, content: str, usage: dict) -> DoneFrame:
    return {
        "type": "done",
        "message": message_id,
        "status": status,
        "finish_reason": finish_reason,
        "content": content,
        "usage": usage,
    }


def error_frame(code: str, error: str, message_id: int | None = None) -> ErrorFrame:
    frame: ErrorFrame = {"type": "error", "code": code, "error": error}
    if message_id is not None:
        frame["message"] = message_id
    return frame


def rate_limited_frame(error: str, retry_after: int, quota: QuotaOut) -> ErrorFrame:
    return {"type": "error", "code": "rate_limited", "error": error, "retry_after": retry_after, "quota": quota}
