import pytest
from django.urls import reverse

from tests.chatsite.factories import conversation_with_reply

pytestmark = pytest.mark.django_db


def test_sign_up_creates_the_account_and_logs_in(client, django_user_model):
    response = client.post(
        reverse("signup"), {"username": "ada", "password1": "a-long-Passw0rd!", "password2": "a-long-Passw0rd!"}
    )
    assert response.status_code == 302 and response.url == reverse("chat")
    assert django_user_model.objects.filter(username="ada").exists()
    assert client.get(reverse("chat")).status_code == 200


def test_sign_up_with_mismatched_passwords_shows_the_error_and_creates_nothing(client, django_user_model):
    response = client.post(reverse("signup"), {"username": "ada", "password1": "a-long-Passw0rd!", "password2": "x"})
    assert response.status_code == 200
    assert "didn’t match" in response.content.decode() or "didn't match" in response.content.decode()
    assert not django_user_model.objects.exists()


def test_log_in_and_log_out(client, make_user):
    user = make_user()
    response = client.post(reverse("login"), {"username": user.username, "password": "a-long-Passw0rd!"})
    assert response.status_code == 302
    assert client.get(reverse("chat")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("chat")).status_code == 302


def test_chat_pages_need_login(client, make_user):
    conversation, _, _ = conversation_with_reply(make_user())
    for url in (reverse("chat"), reverse("conversation", args=[conversation.id])):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_a_user_sees_their_conversation_and_its_messages(client, make_user):
    user = make_user()
    conversation, _, _ = conversation_with_reply(user, content="What is 2+2?", reply_text="It is 4.")
    client.force_login(user)
    page = client.get(reverse("conversation", args=[conversation.id])).content.decode()
    assert "What is 2+2?" in page and "It is 4." in page


def test_another_users_conversation_is_not_found(client, make_user):
    conversation, _, _ = conversation_with_reply(make_user(), content="secret question")
    client.force_login(make_user())
    response = client.get(reverse("conversation", args=[conversation.id]))
    assert response.status_code == 404
    assert "secret question" not in client.get(reverse("chat")).content.decode()


def test_staff_reach_the_admin_and_others_do_not(client, make_user):
    client.force_login(make_user())
    assert client.get("/admin/chatsite/message/").status_code == 302
    client.force_login(make_user(is_staff=True, is_superuser=True))
    conversation_with_reply(make_user())
    assert client.get("/admin/chatsite/message/").status_code == 200
    assert client.get("/admin/chatsite/conversation/").status_code == 200
