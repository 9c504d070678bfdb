from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from billing.views import stripe_webhook
from chatsite import api, conversation_views, views
from chatsite.metrics import metrics_view

urlpatterns = [
    # The API first: Django tries the patterns in order, and every miss costs a call.
    path("v1/models", api.models, name="api-models"),
    path("v1/chat/completions", api.chat_completions, name="api-chat-completions"),
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.chat, name="chat"),
    path("chat/<int:conversation_id>/", views.chat, name="conversation"),
    path("chat/conversations/", conversation_views.conversations, name="conversations"),
    path("chat/<int:conversation_id>/rename/", conversation_views.rename, name="conversation-rename"),
    path("chat/<int:conversation_id>/delete/", conversation_views.delete, name="conversation-delete"),
    path("chat/<int:conversation_id>/branch/", conversation_views.show_branch, name="conversation-branch"),
    path("chat/<int:conversation_id>/export.<str:kind>", conversation_views.export, name="conversation-export"),
    path("chat/messages/<int:message_id>/feedback/", conversation_views.feedback, name="message-feedback"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/login/", views.ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("account/", include("billing.urls")),
    path("stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("console/", include("chatsite.console.urls")),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
]

if settings.MAIL_ENABLED:  # a reset link needs mail to travel by
    urlpatterns += [
        path("accounts/password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
        path("accounts/password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
        path("accounts/reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(),
             name="password_reset_confirm"),
        path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    ]
