from django.conf import settings
from django.db import models


class ApiKey(models.Model):
    """A key for the /v1/ API. Only its SHA-256 is stored: the key is 256 random bits, so a
    fast hash is as safe as a slow one and keeps every API call cheap."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)  # shown to the user to tell keys apart
    digest = models.CharField(max_length=64, unique=True)  # sha256 hex of the whole key
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class QuotaUse(models.Model):
    """One message counted against its sender's rolling window. Rows older than the window
    are deleted as the user sends more; the lasting record of use is UsageRecord."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_uses")
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["user", "at"])]

    def __str__(self) -> str:
        return f"{self.user} at {self.at:%Y-%m-%d %H:%M:%S}"

class StripeCustomer(models.Model):
    """The Stripe customer created for a user on their first checkout."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stripe_customer")
    stripe_id = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.stripe_id


class Subscription(models.Model):
    """Our copy of a Stripe subscription, rewritten from Stripe's current state on every
    event about it (`billing.subscriptions.subscription_sync`)."""

    class Status(models.TextChoices):
        INCOMPLETE = "incomplete"
        INCOMPLETE_EXPIRED = "incomplete_expired"
        TRIALING = "trialing"
        ACTIVE = "active"
        PAST_DUE = "past_due"
        UNPAID = "unpaid"
        CANCELED = "canceled"
        PAUSED = "paused"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscriptions")
    stripe_id = models.CharField(max_length=255, unique=True)
    customer_id = models.CharField(max_length=255)
    price_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=32, choices=Status.choices)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)  # when we first saw it past_due
    created_at = models.DateTimeField(auto_now_add=True)
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.stripe_id} ({self.status})"


class PlanGrant(models.Model):
    """Staff granting or revoking Plus by hand, with the reason: an append-only record.
    The user's latest row decides; a grant may end by itself at `expires_at`."""

    class Action(models.TextChoices):
        GRANT = "grant", "Grant Plus"
        REVOKE = "revoke", "Revoke a grant"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="plan_grants")
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.GRANT)
    reason = models.TextField(help_text="Why; kept with the record.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="A grant ends by itself then; empty: never.")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} for {self.user}"


class StripeEvent(models.Model):
    """A webhook event already processed; a second delivery of the same id changes nothing."""

    id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField()  # when Stripe created the event
    processed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

class UsageRecord(models.Model):
    """One generation: who, on which plan, how many tokens, how long, how much compute.
    The base of the usage and cost console; kept after conversations are deleted."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    message_id = models.BigIntegerField(unique=True)  # chatsite's Message; billing does not import chatsite
    plan = models.CharField(max_length=16)
    source = models.CharField(max_length=8)  # chat | api
    status = models.CharField(max_length=16)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    queue_wait_s = models.FloatField(default=0.0)
    ttft_s = models.FloatField(null=True, blank=True)
    decode_s = models.FloatField(default=0.0)
    compute_s = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source} message {self.message_id} by {self.user} ({self.plan}, {self.status})"


class UsageHour(models.Model):
    """The usage records of one hour (UTC), one plan and one source, added up by
    `billing.rollup`. Latencies are kept as histograms (`billing.histogram`), so percentiles
    over any range come from these rows alone."""

    hour = models.DateTimeField()
    plan = models.CharField(max_length=16)
    source = models.CharField(max_length=8)
    requests = models.PositiveIntegerField(default=0)
    stopped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    compute_s = models.FloatField(default=0.0)
    decode_s = models.FloatField(default=0.0)
    ttft_hist = models.JSONField(default=dict)  # time to first token
    itl_hist = models.JSONField(default=dict)  # inter-token latency: decode_s / (tokens - 1)
    queue_hist = models.JSONField(default=dict)  # queue wait

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "plan", "source"], name="usage_hour_unique")]
        ordering = ["hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.plan} {self.source}: {self.requests} requests"


class UsageDay(models.Model):
    """One user's usage on one day (UTC) on one plan from one source: active users and the
    per-user tables, without reading the raw records."""

    day = models.DateField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_days")
    plan = models.CharField(max_length=16)
    source = models.CharField(max_length=8)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    compute_s = models.FloatField(default=0.0)
    last_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "user", "plan", "source"], name="usage_day_unique")]
        indexes = [models.Index(fields=["user", "day"], name="usage_day_user")]

    def __str__(self) -> str:
        return f"{self.day} user {self.user_id} {self.plan} {self.source}: {self.requests} requests"
