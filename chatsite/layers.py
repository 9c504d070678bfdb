"""The embedded mode's channel layer: Channels' InMemoryChannelLayer, made cheaper per message.

Every token frame of every reply passes through the layer twice (`group_send`, `receive`), on
the server's event loop, while the model needs both cores. Channels' own layer, at each of
those calls, walks every channel and every group membership looking for expired entries, and
`group_send` makes a task per member channel. With 32 replies streaming that is about a
tenth of the event loop's CPU. Here expired entries are swept at most
once a second, and a group's members are sent to one after another, which is the same thing:
`send` never waits (it puts the message on the channel's queue, or raises ChannelFull at once).
"""
from __future__ import annotations

import contextlib
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

SWEEP_EVERY_S = 1.0  # messages expire after `expiry` (60 s): a sweep this late changes nothing


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        super()._clean_expired()

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):  # as Channels does: a full channel misses the message
                await self.send(channel, message)
