from django.urls import path

from chatsite.console import views

urlpatterns = [
    path("", views.overview, name="console"),
    path("roll-up/", views.roll_up, name="console-roll-up"),
    path("users/", views.users, name="console-users"),
    path("users/<int:user_id>/", views.user_detail, name="console-user"),
]
