"""The chat socket: validate a frame, call one service, forward what the worker publishes."""
from __future__ import annotations

import json
import logging

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

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401


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
            await database_sync_to_async(services.reply_stop)(user=self.user, message_id=self.generating)
            await self.channel_layer.group_discard(generation_group(self.generating), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.user.is_authenticated:
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
        # Listen before enqueueing, so that not even the first token can be missed.
        self.generating = reply.id
        await self.channel_layer.group_add(generation_group(reply.id), self.channel_name)
        await self._send_json(message_created_frame(user_message, reply, quota.as_dict()))
        await sync_to_async(services.reply_send, thread_sensitive=False)(reply=reply)  # no database work

    async def _stop(self) -> None:
        if self.generating is None:
            return
        outcome = await database_sync_to_async(services.reply_stop)(user=self.user, message_id=self.generating)
        if outcome is services.StopOutcome.STOPPED:  # never reached a worker, so none will report
            await self._end_generation(
                done_frame(self.generating, status="stopped", finish_reason="stop", content="", usage={})
            )

    # Channel-layer handlers: messages the worker publishes to gen.<id>.
    async def gen_token(self, event: dict) -> None:
        await self._send_json(token_frame(self.generating, text=event["text"], index=event["index"]))

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
            await self.channel_layer.group_discard(generation_group(message_id), self.channel_name)
        await self._send_json(frame)

    async def _send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))
