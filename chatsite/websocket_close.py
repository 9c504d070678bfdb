"""Daphne's WebSockets (Autobahn) close a connection that breaks a limit with a close frame and
its code (1009 for a message over Daphne's 1 MiB) instead of dropping the TCP connection.

Autobahn's factories default to `failByDrop = True`: a client sending a frame over the limit
sees its connection vanish with no reason. Daphne builds its factory without a say in this,
so the default is changed here, on import of the ASGI module, before Daphne builds it. The one
patch of a framework in chatsite; tests/chatsite/test_websocket_close.py fails when Autobahn
changes underneath it.
"""
from autobahn.twisted.websocket import WebSocketServerFactory

_reset_protocol_options = WebSocketServerFactory.resetProtocolOptions


def _reset_protocol_options_closing(self) -> None:
    _reset_protocol_options(self)
    self.failByDrop = False


WebSocketServerFactory.resetProtocolOptions = _reset_protocol_options_closing
