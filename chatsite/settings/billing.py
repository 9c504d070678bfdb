"""Plans, quotas and Stripe. Without Stripe keys the product runs with billing switched off:
everyone is Free unless staff grant Plus in the admin."""
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings.celery import CHAT_QUEUE_FREE, CHAT_QUEUE_PLUS
from chatsite.settings.env import env_float, env_int, env_str

# Messages count against a rolling window: at any moment, the sends of the last
# BILLING_QUOTA_WINDOW_S seconds. One API call counts as one message, whatever its `n`.
BILLING_QUOTA_WINDOW_S = env_int("BILLING_QUOTA_WINDOW_S", 3 * 3600)

BILLING_PLANS = {
    "free": {
        "name": "Free",
        "messages_per_window": env_int("FREE_MESSAGES_PER_WINDOW", 20),
        "max_input_chars": env_int("FREE_MAX_INPUT_CHARS", 4000),
        "max_output_tokens": env_int("FREE_MAX_OUTPUT_TOKENS", 512),
        "max_best_of": env_int("FREE_MAX_BEST_OF", 1),
        # One API call: how many messages, how many characters in all, and how many tokens once
        # templated (with a 512-token answer, inside the default model's 8,192-token context).
        "max_messages_per_call": env_int("FREE_MAX_MESSAGES_PER_CALL", 64),
        "max_total_chars": env_int("FREE_MAX_TOTAL_CHARS", 16000),
        "max_prompt_tokens": env_int("FREE_MAX_PROMPT_TOKENS", 4096),
        "priority": 0,
        "queue": CHAT_QUEUE_FREE,
    },
    "plus": {
        "name": "Plus",
        "messages_per_window": env_int("PLUS_MESSAGES_PER_WINDOW", 200),  # fair use
        # No limit of its own: about what SmolLM2's 8,192-token context holds; a longer
        # conversation is trimmed from the oldest turns, a longer message is refused by the worker.
        "max_input_chars": env_int("PLUS_MAX_INPUT_CHARS", 32000),
        "max_output_tokens": env_int("PLUS_MAX_OUTPUT_TOKENS", 2048),
        "max_best_of": env_int("PLUS_MAX_BEST_OF", 4),
        "max_messages_per_call": env_int("PLUS_MAX_MESSAGES_PER_CALL", 256),
        "max_total_chars": env_int("PLUS_MAX_TOTAL_CHARS", 64000),
        "max_prompt_tokens": env_int("PLUS_MAX_PROMPT_TOKENS", 6144),  # + a 2,048-token answer
        "priority": 10,
        "queue": CHAT_QUEUE_PLUS,
    },
}
PLUS_PRICE_LABEL = env_str("PLUS_PRICE_LABEL", "$20/month")  # shown on the upgrade page

# A subscription whose renewal failed (`past_due`) keeps Plus this long while Stripe retries.
BILLING_PAST_DUE_GRACE_S = env_float("BILLING_PAST_DUE_GRACE_DAYS", 7.0) * 86400

STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")  # sk_live_… / sk_test_…; empty: billing off
STRIPE_PRICE_PLUS = env_str("STRIPE_PRICE_PLUS")  # the recurring price Plus subscribes to
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")  # whsec_… of the webhook endpoint
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "https://api.stripe.com")  # tests point it at a fake
STRIPE_HTTP_CLIENT = None  # tests only: a stripe.HTTPClient that answers instead of the network

if STRIPE_SECRET_KEY and not (STRIPE_PRICE_PLUS and STRIPE_WEBHOOK_SECRET):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY is set: set STRIPE_PRICE_PLUS and STRIPE_WEBHOOK_SECRET too")
