from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from billing.views import stripe_webhook
from chatsite import api, views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.chat, name="chat"),
    path("chat/<int:conversation_id>/", views.chat, name="conversation"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("account/", include("billing.urls")),
    path("stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("v1/models", api.models, name="api-models"),
    path("v1/chat/completions", api.chat_completions, name="api-chat-completions"),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
]
