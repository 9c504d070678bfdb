"""The staff console (/console/) and Prometheus metrics (/metrics)."""
from chatsite.settings.env import env_float, env_str

# What one worker's machine costs an hour. The default is a typical on-demand price of one
# NVIDIA H100 in a public cloud (docs/console.md); set your own.
COMPUTE_HOURLY_COST_USD = env_float("COMPUTE_HOURLY_COST_USD", 3.00)
# Plus's monthly price for the revenue figures, where Stripe's price cannot be read.
PLUS_PRICE_USD = env_float("PLUS_PRICE_USD", 20.00)
# How often usage records are added up for the console (the embedded worker's timer, or
# Celery beat in the distributed mode); 0: never (run `manage.py usage_rollup` yourself).
USAGE_ROLLUP_INTERVAL_S = env_float("USAGE_ROLLUP_INTERVAL_S", 3600.0)
# A bearer token for /metrics; empty: the endpoint is off (404).
METRICS_TOKEN = env_str("METRICS_TOKEN")
