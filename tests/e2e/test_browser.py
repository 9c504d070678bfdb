"""A person in Chromium: sign up, ask, watch the answer stream in, reload and find it."""
import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def sign_up(page: Page, base_url: str, username: str) -> None:
    page.goto(base_url + "/chat/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_role("link", name="Sign up").first.click()
    page.fill("#id_username", username)
    page.fill("#id_password1", "a-long-Passw0rd!")
    page.fill("#id_password2", "a-long-Passw0rd!")
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/chat/$"))


@pytest.mark.real_model
def test_a_new_user_asks_the_real_model_and_watches_paris_stream_in(page: Page, real_model_server, tmp_path):
    sign_up(page, real_model_server.url, "browser-user")
    page.fill("#input", "What is the capital of France?")
    page.keyboard.press("Enter")
    answer = page.locator(".message.assistant .content").last
    # The answer streams: the cursor shows while tokens arrive, then the message is done.
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=60_000)
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=60_000)
    expect(answer).to_contain_text("Paris")
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    expect(page.locator("#conversations li.active")).to_contain_text("What is the capital of France?")
    page.screenshot(path=str(tmp_path / "chat.png"))

    page.reload()
    expect(page.locator(".message.user .content")).to_have_text("What is the capital of France?")
    expect(page.locator(".message.assistant .content")).to_contain_text("Paris")


def test_stop_button_and_log_out(page: Page, embedded_server):
    sign_up(page, embedded_server.url, "browser-stopper")
    expect(page.locator("#plan")).to_contain_text("Plan: Free")
    expect(page.locator("#quota")).to_have_text("20 of 20 messages left")
    page.fill("#input", "Hello")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator(".message.assistant:not(.streaming)")).to_have_count(1, timeout=30_000)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.locator("#quota")).to_contain_text(re.compile(r"^19 of 20 messages left · next frees up at \d"))
    page.get_by_role("link", name="Upgrade").click()
    expect(page.locator("#billing-off")).to_contain_text("Billing is not configured on this server")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/(login|logout)/"))
