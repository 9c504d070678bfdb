"""The staff console in Chromium after a real chat with the tiny model: its charts render,
its figures count the chat, nothing breaks the Content Security Policy, and Prometheus can
scrape the same chat from /metrics."""
import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import start_embedded_server
from tests.e2e.test_chat_page import LONG, ask, screenshot, shell, sign_up

pytestmark = pytest.mark.browser
TOKEN = "console-test-metrics-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    server = start_embedded_server(tmp_path_factory.mktemp("console"), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32",
                                   FREE_MAX_OUTPUT_TOKENS="20", METRICS_TOKEN=TOKEN)
    yield server
    server.stop()


def test_a_staff_member_sees_the_chat_counted_and_charted(page: Page, server):
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    sign_up(page, server, "operator")
    ask(page, "Hello console")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    shell(server, "from django.contrib.auth import get_user_model; "
                  "print(get_user_model().objects.filter(username='operator').update(is_staff=True))")
    page.goto(server.url + "/console/?range=today")
    page.get_by_role("button", name="Roll up now").click()
    expect(page.locator("#requests")).to_have_text("1")
    expect(page.locator("#users")).to_have_text("1")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first.locator("rect.free")).to_have_count(1)  # one bar: this hour's one Free request
    assert charts.first.bounding_box()["width"] > 300
    expect(page.locator("#workers-live")).to_contain_text("embedded@chatsite")
    expect(page.locator("#margin-value")).to_have_text(re.compile(r"^-?(\$|\d)"))
    screenshot(page, "console")
    page.get_by_role("link", name="Users", exact=True).click()
    expect(page.locator("#users tbody tr")).to_have_count(1)
    page.get_by_role("link", name="operator", exact=True).last.click()
    expect(page.locator("#conversation-counts")).to_contain_text("Chat")
    expect(page.locator("svg.chart rect.requests")).to_have_count(1)
    screenshot(page, "console-user")
    assert problems == []


def test_prometheus_scrapes_the_chat(server):
    assert httpx.get(server.url + "/metrics").status_code == 401
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    done = re.search(r'chatsite_requests_total\{plan="free",source="chat",status="done"\} (\S+)', text)
    assert done and float(done.group(1)) >= 1
    assert re.search(r'chatsite_time_to_first_token_seconds_count\{plan="free",source="chat"\} [1-9]', text)
    assert 'chatsite_requests_running{worker="embedded@chatsite"}' in text
