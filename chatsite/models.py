"""The chat domain: a conversation owns a tree of messages; the shown branch ends at `current`."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    class Source(models.TextChoices):
        CHAT = "chat"
        API = "api"  # one per /v1/chat/completions call; not listed on the chat page

    class TitleSource(models.TextChoices):
        MESSAGE = "message"  # the first message, cut off: until the model writes one
        MODEL = "model"
        USER = "user"  # renamed; the model never overwrites it

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    title_source = models.CharField(max_length=10, choices=TitleSource.choices, default=TitleSource.MESSAGE)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.CHAT)
    # The last message of the branch the user sees; new messages continue it.
    current = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        """Mirrors inference.RequestStatus value for value (a test holds them equal); spelled
        out so that web processes need not import torch."""

        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        STOPPED = "stopped"
        FAILED = "failed"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # Siblings (same parent) are alternatives: a regenerated answer or an edited question.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.CharField(max_length=500, blank=True, default="")  # why a reply failed, for the user
    # Sampling asked for by an API call (SamplingParams field names); empty: the chat defaults.
    sampling = models.JSONField(default=dict, blank=True)
    # The plan that admitted a reply (billing.plans code): its queue, priority and caps apply.
    plan = models.CharField(max_length=16, blank=True, default="")
    finish_reason = models.CharField(max_length=40, blank=True, default="")  # eos, length, stop, ...
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    queue_wait_s = models.FloatField(null=True, blank=True)  # sent → first forward pass
    ttft_s = models.FloatField(null=True, blank=True)  # sent → first token
    decode_s = models.FloatField(null=True, blank=True)  # first token → last token
    compute_s = models.FloatField(null=True, blank=True)  # this reply's share of forward-pass time
    # A reply being generated is leased to one worker (chatsite/leases.py): `lease_owner` is the
    # claim's token, renewed while it streams; a lapsed lease is taken over. On a pending reply
    # `lease_expires_at` is when it may be sent to the queue again, if no worker claimed it.
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)  # claims this round; bounded, so a reply that kills workers ends
    # Completion tokens written before the current round of generation: a reply the user asked
    # to continue after the plan's cap gets a whole cap more, counted from here.
    tokens_before = models.PositiveIntegerField(default=0)
    # When the user last asked to continue it: its current round's arrival, which its queue
    # wait and time to first token are measured from (else from `created_at`).
    continued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "lease_expires_at"], name="message_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    @property
    def in_progress(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.STREAMING)


class Feedback(models.Model):
    """A user's thumbs up or down on an answer, with an optional comment (for staff, and later
    for fine-tuning). One per user and answer; sending again replaces it."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(choices=[(1, "Good"), (-1, "Bad")])
    comment = models.TextField(blank=True, default="", max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="one_feedback_per_user_and_message")]
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"{'+1' if self.rating > 0 else '-1'} on message {self.message_id} by {self.user}"
