from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    name = "chatsite"
    default_auto_field = "django.db.models.BigAutoField"
