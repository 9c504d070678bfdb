from django.contrib import admin

from billing.models import ApiKey, PlanGrant, StripeCustomer, StripeEvent, Subscription, UsageRecord


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "digest", "created_at", "last_used_at")


@admin.register(PlanGrant)
class PlanGrantAdmin(admin.ModelAdmin):
    """Staff grant or revoke Plus here, each time with a reason. Rows are a record: they can
    be added, not edited or deleted; a later row overrides an earlier one."""

    list_display = ("user", "action", "reason", "expires_at", "granted_by", "created_at")
    list_filter = ("action",)
    search_fields = ("user__username", "user__email", "reason")
    fields = ("user", "action", "reason", "expires_at")
    autocomplete_fields = ("user",)

    def save_model(self, request, obj, form, change):
        obj.granted_by = request.user
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Mirrors of Stripe and usage: written by the code, read by staff."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ("stripe_id", "user", "status", "current_period_end", "cancel_at_period_end", "past_due_since", "synced_at")
    list_filter = ("status", "cancel_at_period_end")
    search_fields = ("stripe_id", "customer_id", "user__username")


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ("stripe_id", "user", "created_at")
    search_fields = ("stripe_id", "user__username")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "created", "processed_at")
    list_filter = ("type",)
    search_fields = ("id",)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "plan", "source", "status", "prompt_tokens", "completion_tokens", "compute_s")
    list_filter = ("plan", "source", "status")
    search_fields = ("user__username",)
    date_hierarchy = "created_at"
