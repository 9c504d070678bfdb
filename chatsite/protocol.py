"""The /ws/chat/ JSON protocol: parse what clients send, shape what the server sends.

Client → server: send, edit, regenerate, continue (each starts a reply), stop, watch (follow a
conversation and resume its reply in progress from an offset).
Server → client: model, message.created, token, done, error, conversation.updated.
Every frame and code: docs/protocol.md.
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
class EditFrame:
    """A new version of the user's message `message_id`."""

    message_id: int
    content: str


@dataclass(frozen=True)
class RegenerateFrame:
    """Another answer in place of the answer `message_id`."""

    message_id: int


@dataclass(frozen=True)
class ContinueFrame:
    """More of the answer `message_id`, cut at its length limit."""

    message_id: int


@dataclass(frozen=True)
class StopFrame:
    """Stop the reply `message_id` (None: the one this socket follows)."""

    message_id: int | None = None


@dataclass(frozen=True)
class WatchFrame:
    """Follow a conversation: its new messages (from other tabs) and, when `message_id` is a
    reply in progress, that reply from character `offset` on (what the page already has)."""

    conversation_id: int
    message_id: int | None = None
    offset: int = 0


ClientFrame = SendFrame | EditFrame | RegenerateFrame | ContinueFrame | StopFrame | WatchFrame
KINDS = ("send", "edit", "regenerate", "continue", "stop", "watch")


def parse_client_frame(text: str | None, *, max_content_chars: int) -> ClientFrame:
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
    if kind not in KINDS:
        expected = ", ".join(f'"{name}"' for name in KINDS)
        raise ProtocolError("unknown_type", f"Unknown frame type {kind!r}; expected one of {expected}.")
    if kind == "send":
        conversation_id = _id(frame, "conversation", required=False)
        return SendFrame(conversation_id=conversation_id, content=_content(frame, max_content_chars))
    if kind == "edit":
        return EditFrame(message_id=_id(frame, "message"), content=_content(frame, max_content_chars))
    if kind == "regenerate":
        return RegenerateFrame(message_id=_id(frame, "message"))
    if kind == "continue":
        return ContinueFrame(message_id=_id(frame, "message"))
    if kind == "stop":
        return StopFrame(message_id=_id(frame, "message", required=False))
    offset = frame.get("offset", 0)
    if not _is_int(offset) or offset < 0:
        raise ProtocolError("bad_frame", "\"offset\" must be a whole number of characters, at least 0.")
    return WatchFrame(conversation_id=_id(frame, "conversation"), message_id=_id(frame, "message", required=False),
                      offset=offset)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(frame: dict, name: str, *, required: bool = True) -> int | None:
    value = frame.get(name)
    if value is None and not required:
        return None
    if not _is_int(value) or not 0 < value < 2**63:
        raise ProtocolError("bad_frame", f"\"{name}\" must be an id{'' if required else ' or null'}.")
    return value


def _content(frame: dict, max_content_chars: int) -> str:
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
    return content


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


class MessageCreatedFrame(TypedDict, total=False):
    type: Literal["message.created"]
    conversation: dict
    user_message: MessageOut
    message: MessageOut
    branch: list[dict]  # the whole shown branch, alternatives included (selectors.branch_out)
    quota: QuotaOut  # to the socket that sent it only: the sender's window


class ModelFrame(TypedDict):
    type: Literal["model"]
    state: Literal["loading", "ready"]


class ConversationUpdatedFrame(TypedDict):
    type: Literal["conversation.updated"]
    conversation: int
    title: str


class TokenFrame(TypedDict):
    type: Literal["token"]
    message: int
    text: str
    index: int | None  # the first token's position; None on the text a resume catches up with
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


def message_created_frame(user_message, assistant_message, branch: list[dict], quota: QuotaOut | None = None
                          ) -> MessageCreatedFrame:
    conversation = assistant_message.conversation
    frame: MessageCreatedFrame = {
        "type": "message.created",
        "conversation": {"id": conversation.id, "title": conversation.title},
        "user_message": message_out(user_message),
        "message": message_out(assistant_message),
        "branch": branch,
    }
    if quota is not None:
        frame["quota"] = quota
    return frame


def model_frame(*, ready: bool) -> ModelFrame:
    return {"type": "model", "state": "ready" if ready else "loading"}


def conversation_updated_frame(conversation_id: int, title: str) -> ConversationUpdatedFrame:
    return {"type": "conversation.updated", "conversation": conversation_id, "title": title}


def token_frame(message_id: int, *, text: str, index: int | None, offset: int) -> TokenFrame:
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
