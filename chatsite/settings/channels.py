"""Channel layer: Redis across processes when REDIS_URL is set, else in memory (one process)."""
from chatsite.settings.env import env_str

_redis_url = env_str("REDIS_URL")

if _redis_url:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_redis_url], "capacity": 1000, "expiry": 60},
        }
    }
else:
    # Channels' in-memory layer, with less CPU per message (chatsite/layers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "chatsite.layers.InMemoryChannelLayer"}}
