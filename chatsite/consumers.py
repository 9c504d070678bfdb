"""The chat socket: validate a frame, call one service, forward what the workers publish.

A socket follows one reply at a time (the one its page shows being written) and one
conversation (new messages sent from the user's other tabs). Closing the socket stops nothing:
the reply goes on, and a page that opens or reconnects catches up with `watch`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from billing.plans import plan_for_user
from billing.quota import QuotaExceeded
from chatsite import services
from chatsite.embedded import embedded_worker_ensure
from chatsite.live import live_text
from chatsite.models import Conversation, Message
from chatsite.protocol import (
    ContinueFrame,
    EditFrame,
    ProtocolError,
    RegenerateFrame,
    SendFrame,
    StopFrame,
    WatchFrame,
    conversation_updated_frame,
    done_frame,
    error_frame,
    message_created_frame,
    model_frame,
    parse_client_frame,
    rate_limited_frame,
    token_frame,
)
from chatsite.publisher import generation_group, user_group
from chatsite.selectors import branch_out, replies_ended
from inference.worker import engine_ready

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
QUIET_CHECK_S = 5.0  # a reply silent this long is looked up in the database
MODEL_CHECK_S = 0.5  # while the model loads, how often the socket looks
CLOSE_TOO_LARGE = 4009  # 1009 (RFC 6455: too big) in the range an application may send
# A send frame of the longest Plus message, every character escaped as JSON's \uXXXX, is
# about 200,000 characters; Daphne refuses frames over 1 MiB itself (also with 1009).
MAX_FRAME_CHARS = 256 * 1024
NOT_FOUND = {
    Conversation.DoesNotExist: "That conversation does not exist.",
    Message.DoesNotExist: "That message does not exist.",
}


def conversation_group(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.user = self.scope["user"]
        self.following: int | None = None  # the reply whose frames this socket forwards
        self._sent_upto = 0  # where the followed reply's text this socket has sent ends (characters)
        # Held while a client frame is handled: an end found in the database by a background
        # look (`_watch_for_a_lost_end`) waits for it, so it never precedes `message.created`.
        self._handling = asyncio.Lock()
        self.watching: int | None = None  # the conversation whose new messages it is told of
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        self._last_frame_at = time.monotonic()
        await self.accept()
        if not self.user.is_authenticated:
            await self._send_json(error_frame("not_authenticated", "Log in to chat."))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        embedded_worker_ensure()
        try:
            await self._join(user_group(self.user.id))
        except Exception as error:  # the socket still serves; sends say "unavailable" until Redis is back
            logger.warning("could not join the user's group: %r", error)
        await self._send_json(model_frame(ready=self._model_ready()))
        if not self._model_ready():
            self._background(self._tell_when_the_model_is_ready())

    async def disconnect(self, code: int) -> None:
        # Nothing stops with the socket: the reply is written on, and saved.
        self.closed = True
        if self.user.is_authenticated:
            await self._leave(user_group(self.user.id))
        if self.following is not None:
            await self._leave(generation_group(self.following))
        if self.watching is not None:
            await self._leave(conversation_group(self.watching))

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
            async with self._handling:
                plan = await database_sync_to_async(plan_for_user)(self.user)
                frame = parse_client_frame(text_data, max_content_chars=plan.max_input_chars)
                if isinstance(frame, StopFrame):
                    await self._stop(frame.message_id or self.following)
                elif isinstance(frame, WatchFrame):
                    await self._watch(frame)
                else:
                    await self._start(frame, plan)
        except ProtocolError as error:
            await self._send_json(error_frame(error.code, error.message))
        except tuple(NOT_FOUND) as missing:
            await self._send_json(error_frame("not_found", NOT_FOUND[type(missing)]))
        except Exception:
            logger.exception("chat socket frame failed")
            await self._send_json(error_frame("internal", "Something went wrong on our side. Please try again."))

    async def _start(self, frame, plan) -> None:
        """A send, edit, regeneration or continuation: save it, queue its reply, follow it."""
        start = {
            SendFrame: lambda: services.message_send(
                user=self.user, plan=plan, conversation_id=frame.conversation_id, content=frame.content),
            EditFrame: lambda: services.message_edit(
                user=self.user, plan=plan, message_id=frame.message_id, content=frame.content),
            RegenerateFrame: lambda: services.reply_regenerate(user=self.user, plan=plan, message_id=frame.message_id),
            ContinueFrame: lambda: services.reply_continue(user=self.user, plan=plan, message_id=frame.message_id),
        }[type(frame)]
        try:
            turn = await database_sync_to_async(start)()
        except services.ConversationBusy as busy:
            raise ProtocolError("busy", str(busy)) from None
        except services.CannotContinue as refused:
            raise ProtocolError("cannot_continue", str(refused)) from None
        except services.ServiceUnavailable:
            raise ProtocolError("unavailable", services.UNAVAILABLE) from None
        except QuotaExceeded as refused:
            await self._send_json(rate_limited_frame(str(refused), refused.retry_after_s, refused.status.as_dict()))
            return
        reply = turn.reply
        try:
            # Listen before enqueueing, so that not even the first token can be missed; the frames
            # the worker publishes wait for this handler to return, so message.created goes first.
            await self._follow(reply.id, len(reply.content))  # a continuation's text is in message.created
            await sync_to_async(services.reply_send, thread_sensitive=False)(reply=reply)  # no database work
        except Exception:
            logger.warning("could not queue reply %s; withdrawing the message", reply.id, exc_info=True)
            await self._unfollow()
            await database_sync_to_async(services.turn_withdraw)(turn=turn)
            raise ProtocolError("unavailable", services.UNAVAILABLE) from None
        branch = await database_sync_to_async(branch_out)(conversation=reply.conversation)
        await self._send_json(message_created_frame(turn.question, reply, branch, turn.quota.as_dict()))
        try:
            await self._watch_conversation(reply.conversation_id)
        except Exception as error:  # this tab misses other tabs' messages until its next load
            logger.warning("could not watch conversation %s: %r", reply.conversation_id, error)
        await self._tell_other_tabs(reply, turn.question, branch)

    async def _watch(self, frame: WatchFrame) -> None:
        conversation = await database_sync_to_async(Conversation.objects.get)(
            id=frame.conversation_id, owner=self.user, source=Conversation.Source.CHAT
        )
        await self._watch_conversation(conversation.id)
        if frame.message_id is None:
            return
        await self._follow(frame.message_id, frame.offset)
        reply = await database_sync_to_async(Message.objects.get)(id=frame.message_id, conversation=conversation)
        if not reply.in_progress:  # it ended while the page was away: the rest of its text, then its end
            await self._end_from_database(reply)
            return
        # The text as far as it has streamed: the live pieces, or the last save if those are
        # gone (a Redis outage). Frames published from here on follow this one; the page skips
        # what it already has by their offsets.
        try:
            text = await sync_to_async(live_text, thread_sensitive=False)(reply.id, reply.content)
        except Exception as error:
            logger.warning("live text of reply %s unreadable: %r", reply.id, error)
            text = ""
        if len(reply.content) > len(text):
            text = reply.content
        if len(text) > frame.offset:
            await self._send_json(token_frame(reply.id, text=text[frame.offset:], index=None, offset=frame.offset))
            self._sent_upto = max(self._sent_upto, len(text))

    async def _stop(self, message_id: int | None) -> None:
        if message_id is None:
            return
        try:
            outcome = await database_sync_to_async(services.reply_stop)(user=self.user, message_id=message_id)
        except services.ServiceUnavailable:
            raise ProtocolError("unavailable", "The service is temporarily unavailable; the answer could not be "
                                               "stopped. Please try again in a moment.") from None
        if outcome is services.StopOutcome.STOPPED:  # it never reached a worker, so none will report: tell every tab
            # A continuation stopped in the queue keeps the text it had.
            reply = await database_sync_to_async(Message.objects.get)(id=message_id)
            await self.channel_layer.group_send(generation_group(message_id), {
                "type": "gen.done", "message": message_id, "status": "stopped", "finish_reason": "stop",
                "content": reply.content,
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
            })

    # Channel-layer handlers: what workers publish to gen.<id> and user.<id>, and what other
    # tabs announce on conversation.<id>.
    async def gen_token(self, event: dict) -> None:
        if not self._is_followed(event):
            return
        self._last_frame_at = time.monotonic()
        offset = event.get("offset", 0)
        await self._send_json(token_frame(self.following, text=event["text"], index=event["index"], offset=offset))
        self._sent_upto = max(self._sent_upto, offset + len(event["text"]))

    async def gen_done(self, event: dict) -> None:
        if self._is_followed(event):
            await self._end_following(done_frame(
                self.following, status=event["status"], finish_reason=event["finish_reason"],
                content=event["content"], usage=event["usage"],
            ))

    async def gen_error(self, event: dict) -> None:
        if self._is_followed(event):
            await self._end_following(error_frame("generation_failed", event["error"], self.following))

    def _is_followed(self, event: dict) -> bool:
        """Whether `event` is the followed reply's. One of a reply followed before may arrive
        late: its end was read from the database (`_watch_for_a_lost_end`) while its frames
        were still on their way, and they reached this channel before it left the group."""
        return self.following is not None and event.get("message", self.following) == self.following

    async def conversation_updated(self, event: dict) -> None:
        await self._send_json(conversation_updated_frame(event["conversation"], event["title"]))

    async def conversation_started(self, event: dict) -> None:
        """Another tab started a reply in the conversation this one shows: show and follow it."""
        if event["origin"] == self.channel_name:
            return
        await self._follow(event["frame"]["message"]["id"], len(event["frame"]["message"]["content"]))
        await self._send_json(event["frame"])

    async def _tell_other_tabs(self, reply, question, branch) -> None:
        try:
            await self.channel_layer.group_send(conversation_group(reply.conversation_id), {
                "type": "conversation.started", "origin": self.channel_name,
                "frame": message_created_frame(question, reply, branch),
            })
        except Exception as error:  # they see it at their next load
            logger.warning("could not tell other tabs of reply %s: %r", reply.id, error)

    async def _follow(self, message_id: int, offset: int = 0) -> None:
        """Forward the reply's frames from now on; the page has its text up to `offset` (its
        word for it, though this socket may have sent more: frames get lost on the way)."""
        self._sent_upto = offset
        if self.following == message_id:
            return
        await self._unfollow()
        self.following = message_id
        self._last_frame_at = time.monotonic()
        await self.channel_layer.group_add(generation_group(message_id), self.channel_name)
        self._background(self._watch_for_a_lost_end(message_id))

    async def _unfollow(self) -> None:
        if self.following is not None:
            message_id, self.following = self.following, None
            await self._leave(generation_group(message_id))

    async def _watch_conversation(self, conversation_id: int) -> None:
        if self.watching == conversation_id:
            return
        if self.watching is not None:
            await self._leave(conversation_group(self.watching))
        self.watching = conversation_id
        await self._join(conversation_group(conversation_id))

    async def _end_following(self, frame: dict) -> None:
        await self._unfollow()
        await self._send_json(frame)

    async def _watch_for_a_lost_end(self, message_id: int) -> None:
        """While the reply is silent, look in the database every QUIET_CHECK_S for its end: the
        worker's end frame is lost if the channel layer was down when it was sent."""
        while self.following == message_id and not self.closed:
            await asyncio.sleep(QUIET_CHECK_S)
            if self.following != message_id or time.monotonic() - self._last_frame_at < QUIET_CHECK_S:
                continue
            try:
                ended = await database_sync_to_async(replies_ended)(message_ids=[message_id])
            except Exception as error:
                logger.warning("could not look up reply %s: %r", message_id, error)
                continue
            if not ended:
                continue
            async with self._handling:  # after a send's message.created, never before
                if self.following == message_id:
                    await self._end_from_database(ended[0])

    async def _end_from_database(self, reply: Message) -> None:
        """End the followed reply as the database has it: first the text this socket has not
        sent (its frames were slow, or it followed the reply late), then its end."""
        if len(reply.content) > self._sent_upto:
            await self._send_json(token_frame(reply.id, text=reply.content[self._sent_upto:], index=None,
                                              offset=self._sent_upto))
        await self._end_following(self._end_frame_of(reply))

    @staticmethod
    def _end_frame_of(reply: Message) -> dict:
        if reply.status == Message.Status.FAILED:
            return error_frame("generation_failed", reply.error or "The model could not answer.", reply.id)
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        return done_frame(reply.id, status=reply.status, finish_reason=reply.finish_reason, content=reply.content,
                          usage=usage)

    @staticmethod
    def _model_ready() -> bool:
        """Only the embedded mode's web process has the model; elsewhere workers load theirs at start."""
        return engine_ready() or not settings.CHATSITE_EMBEDDED_WORKER

    async def _tell_when_the_model_is_ready(self) -> None:
        while not self._model_ready():
            await asyncio.sleep(MODEL_CHECK_S)
            if self.closed:
                return
        await self._send_json(model_frame(ready=True))

    def _background(self, coroutine) -> None:
        """Run `coroutine` beside the socket's handlers, holding on to it (the loop keeps only
        weak references to tasks)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, group: str) -> None:
        """Best effort: while Redis is away the membership stays, and it expires with the group."""
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except Exception as error:
            logger.warning("could not leave %s: %r", group, error)

    async def _send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))
