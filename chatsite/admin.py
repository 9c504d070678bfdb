from django.contrib import admin

from chatsite.models import Conversation, Feedback, Message


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = ("role", "status", "content", "parent", "completion_tokens", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "created_at", "updated_at")
    list_filter = ("created_at",)
    search_fields = ("title", "owner__username")
    raw_id_fields = ("owner", "current")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "prompt_tokens", "completion_tokens", "ttft_s", "created_at")
    list_filter = ("role", "status", "created_at")
    search_fields = ("content", "conversation__title", "conversation__owner__username")
    raw_id_fields = ("conversation", "parent")
    readonly_fields = ("created_at", "updated_at")


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ("message", "user", "rating", "comment", "updated_at")
    list_filter = ("rating", "updated_at")
    search_fields = ("comment", "message__content", "user__username")
    raw_id_fields = ("message", "user")
    readonly_fields = ("message", "user", "rating", "comment", "created_at", "updated_at")
