"""chatsite/websocket_close.py changes one default of Autobahn, under Daphne: these fail when
Autobahn changes underneath it. Against a real Daphne: tests/e2e/test_embedded_limits.py."""
import inspect

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol

import chatsite.asgi  # noqa: F401 - applies the change


def test_a_factory_built_as_daphne_builds_one_closes_instead_of_dropping():
    factory = WebSocketServerFactory()
    assert factory.failByDrop is False
    factory.setProtocolOptions(maxMessagePayloadSize=1024 * 1024, maxFramePayloadSize=1024 * 1024)
    assert factory.failByDrop is False


def test_autobahn_still_fails_a_connection_by_that_option():
    assert "failByDrop" in inspect.getsource(WebSocketProtocol._fail_connection)
    assert WebSocketProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG == 1009
