"""The chat socket: validate a frame, call one service, forward what the worker publishes."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from billing.plans import plan_for_user
from billing.quota import QuotaExceeded
from chatsite import services
from chatsite.embedded import embedded_worker_ensure
from chatsite.models import Conversation
from chatsite.protocol import (
    ProtocolError,
    SendFrame,
    done_frame,
    error_frame,
    message_created_frame,
    parse_client_frame,
    rate_limited_frame,
    token_frame,
)
from chatsite.publisher import generation_group
from chatsite.selectors import replies_ended

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
QUIET_CHECK_S = 5.0  # a reply silent this long is looked up in the database
CLOSE_TOO_LARGE = 4009  # 1009 (RFC 6455: too big) in the range an application may send
# A send frame of the longest Plus message, every character escaped as JSON's \uXXXX, is
# about 200,000 characters; Daphne refuses frames over 1 MiB itself (also with 1009).
MAX_FRAME_CHARS = 256 * 1024


class ChatConsumer(AsyncWebsocketConsumer):
    """One socket of one logged-in user; at most one reply generating at a time."""

    async def connect(self) -> None:
        self.user = self.scope["user"]
        self.generating: int | None = None  # id of the reply this socket is waiting for
        await self.accept()
        if not self.user.is_authenticated:
            await self._send_json(error_frame("not_authenticated", "Log in to chat."))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        embedded_worker_ensure()

    async def disconnect(self, code: int) -> None:
        # A closed tab stops its reply: nobody reads it, and its text so far is kept.
        if self.generating is not None:
            try:
                await database_sync_to_async(services.reply_stop)(user=self.user, message_id=self.generating)
            except services.ServiceUnavailable:
                logger.warning("could not stop reply %s of a closed socket", self.generating)
            await self._leave(self.generating)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.user.is_authenticated:
            return
        if len(text_data or bytes_data or "") > MAX_FRAME_CHARS:
            await self._send_json(error_frame(
                "too_large", f"Frames are limited to {MAX_FRAME_CHARS // 1024} KiB; the socket is closed."
            ))
            await self.close(code=CLOSE_TOO_LARGE)
            return
        try:
            plan = await database_sync_to_async(plan_for_user)(self.user)
            frame = parse_client_frame(text_data, max_content_chars=plan.max_input_chars)
            if isinstance(frame, SendFrame):
                await self._send_message(frame, plan)
            else:
                await self._stop()
        except ProtocolError as error:
            await self._send_json(error_frame(error.code, error.message))
        except Exception:
            logger.exception("chat socket frame failed")
            await self._send_json(error_frame("internal", "Something went wrong on our side. Please try again."))

    async def _send_message(self, frame: SendFrame, plan) -> None:
        if self.generating is not None:
            raise ProtocolError("busy", "Wait for the answer to finish, or stop it, before sending again.")
        try:
            user_message, reply, quota = await database_sync_to_async(services.message_send)(
                user=self.user, plan=plan, conversation_id=frame.conversation_id, content=frame.content
            )
        except Conversation.DoesNotExist:
            raise ProtocolError("not_found", "That conversation does not exist.") from None
        except QuotaExceeded as refused:
            await self._send_json(rate_limited_frame(str(refused), refused.retry_after_s, refused.status.as_dict()))
            return
        # Listen before enqueueing, so that not even the first token can be missed; the frames
        # the worker publishes wait for this handler to return, so message.created goes first.
        self.generating = reply.id
        try:
            await self.channel_layer.group_add(generation_group(reply.id), self.channel_name)
            await sync_to_async(services.reply_send, thread_sensitive=False)(reply=reply)  # no database work
        except Exception:
            logger.warning("could not queue reply %s; withdrawing the message", reply.id, exc_info=True)
            self.generating = None
            await self._leave(reply.id)
            await database_sync_to_async(services.message_send_withdraw)(user_message=user_message, reply=reply, quota=quota)
            raise ProtocolError("unavailable", services.UNAVAILABLE) from None
        await self._send_json(message_created_frame(user_message, reply, quota.as_dict()))
        self._last_frame_at = time.monotonic()
        asyncio.get_running_loop().create_task(self._watch_for_a_lost_end(reply.id))

    async def _watch_for_a_lost_end(self, message_id: int) -> None:
        """While the reply is silent, look in the database every QUIET_CHECK_S for its end: the
        worker's end frame is lost if the channel layer was down when it was sent."""
        while self.generating == message_id:
            await asyncio.sleep(QUIET_CHECK_S)
            if self.generating != message_id or time.monotonic() - self._last_frame_at < QUIET_CHECK_S:
                continue
            try:
                ended = await database_sync_to_async(replies_ended)(message_ids=[message_id])
            except Exception as error:
                logger.warning("could not look up reply %s: %r", message_id, error)
                continue
            if ended and self.generating == message_id:
                reply = ended[0]
                if reply.status == reply.Status.FAILED:
                    frame = error_frame("generation_failed", reply.error or "The model could not answer.", message_id)
                else:
                    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                    frame = done_frame(message_id, status=reply.status, finish_reason=reply.finish_reason,
                                       content=reply.content, usage=usage)
                await self._end_generation(frame)

    async def _stop(self) -> None:
        if self.generating is None:
            return
        try:
            outcome = await database_sync_to_async(services.reply_stop)(user=self.user, message_id=self.generating)
        except services.ServiceUnavailable:
            raise ProtocolError("unavailable", "The service is temporarily unavailable; the answer could not be "
                                               "stopped. Please try again in a moment.") from None
        if outcome is services.StopOutcome.STOPPED:  # never reached a worker, so none will report
            await self._end_generation(
                done_frame(self.generating, status="stopped", finish_reason="stop", content="", usage={})
            )

    # Channel-layer handlers: messages the worker publishes to gen.<id>.
    async def gen_token(self, event: dict) -> None:
        self._last_frame_at = time.monotonic()
        await self._send_json(
            token_frame(self.generating, text=event["text"], index=event["index"], offset=event.get("offset", 0))
        )

    async def gen_done(self, event: dict) -> None:
        await self._end_generation(
            done_frame(
                self.generating,
                status=event["status"],
                finish_reason=event["finish_reason"],
                content=event["content"],
                usage=event["usage"],
            )
        )

    async def gen_error(self, event: dict) -> None:
        await self._end_generation(error_frame("generation_failed", event["error"], self.generating))

    async def _end_generation(self, frame: dict) -> None:
        message_id, self.generating = self.generating, None
        if message_id is not None:
            await self._leave(message_id)
        await self._send_json(frame)

    async def _leave(self, message_id: int) -> None:
        """Stop listening to a reply. Best effort: while Redis is away the membership stays,
        and it expires with the group."""
        try:
            await self.channel_layer.group_discard(generation_group(message_id), self.channel_name)
        except Exception as error:
            logger.warning("could not leave the group of reply %s: %r", message_id, error)

    async def _send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))
