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
