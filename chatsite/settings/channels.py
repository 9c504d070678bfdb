"""Channel layer: Redis across processes when REDIS_URL is set, else in memory (one process),
relayed between the embedded mode's web processes where there are several (chatsite/peers.py)."""
from chatsite.settings.env import env_int, env_str

_redis_url = env_str("REDIS_URL")

if _redis_url:
    CHANNEL_LAYERS = {
        "default": {
            # channels_redis, reconnecting through a Redis outage instead of failing (chatsite/layers.py).
            "BACKEND": "chatsite.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{
                    "address": _redis_url,
                    # A receive blocks on Redis for the layer's brpop_timeout (5 s); redis-py's own
                    # read timeout is 5 s by default too, so an idle socket's receive timed out
                    # and the socket dropped. Reads may take longer than the blocking wait.
                    "socket_timeout": 30,
                    "socket_connect_timeout": 5,
                    "socket_keepalive": True,
                    "health_check_interval": 15,
                }],
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
elif env_int("CHAT_WEB_PROCESSES", 1) > 1:
    CHANNEL_LAYERS = {"default": {"BACKEND": "chatsite.peers.PeerChannelLayer"}}
else:
    # Channels' in-memory layer, with less CPU per message (chatsite/layers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "chatsite.layers.InMemoryChannelLayer"}}
