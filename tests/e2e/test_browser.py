"""A new user meets the real model in Chromium: the page says the model is loading, the first
question waits for it, "Paris" streams in, the model titles the conversation, a reload finds
it all. The rest of the page is tested with the tiny model in test_chat_page.py."""
import re
import subprocess

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.servers import BIN, ROOT
from tests.e2e.test_chat_page import ask, screenshot, sign_up

pytestmark = pytest.mark.browser


@pytest.mark.real_model
def test_a_new_user_asks_the_real_model_and_watches_paris_stream_in(page: Page, real_model_server):
    """The first test of the session to use this server: its model is still loading."""
    sign_up(page, real_model_server, "browser-user")
    banner = page.locator("#model-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Loading the model")
    ask(page, "What is the capital of France?")  # queued until the model is ready
    expect(page.locator(".message.assistant .note")).to_have_text("Waiting for the model…")
    screenshot(page, "loading")
    expect(banner).to_be_hidden(timeout=90_000)  # the model has loaded
    expect(page.locator(".message.assistant .note")).to_have_count(0)
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=60_000)
    answer = page.locator(".message.assistant .content")
    expect(answer).to_contain_text("Paris")
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    # The model's title replaces the first message in the list, without a reload.
    code = ("from chatsite.models import Conversation; "
            "c = Conversation.objects.get(owner__username='browser-user'); print(c.title_source, c.title)")
    expect(page.locator("#conversations li.active")).not_to_have_text("What is the capital of France?", timeout=60_000)
    source, title = subprocess.run([str(BIN / "python"), "manage.py", "shell", "-c", code], cwd=ROOT,
                                   env=real_model_server.env, capture_output=True, text=True, check=True
                                   ).stdout.strip().splitlines()[-1].split(" ", 1)
    assert source == "model"
    expect(page.locator("#conversations li.active")).to_have_text(title)
    screenshot(page, "paris")
    page.reload()
    expect(page.locator(".message.user .content")).to_have_text("What is the capital of France?")
    expect(page.locator(".message.assistant .content")).to_contain_text("Paris")
