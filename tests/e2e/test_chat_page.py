"""The chat page in Chromium, as people use it, against a live Daphne with the tiny model.
Each test saves a screenshot in tests/artifacts/."""
import json
import re
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import start_embedded_server
from tests.e2e.servers import BIN, ROOT

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "a-long-Passw0rd!"
LONG = 60_000  # ms: a tiny model's 1,000-token answer on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """Long answers (the tiny model writes up to its 1,024-token context), many messages."""
    server = start_embedded_server(tmp_path_factory.mktemp("chat-page"), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32",
                                   FREE_MAX_OUTPUT_TOKENS="1000", FREE_MESSAGES_PER_WINDOW="1000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory, tiny_model_dir):
    """Answers cut at 8 tokens and 4 messages per window: Continue and the quota banner."""
    server = start_embedded_server(tmp_path_factory.mktemp("capped"), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32",
                                   FREE_MAX_OUTPUT_TOKENS="8", FREE_MESSAGES_PER_WINDOW="4")
    yield server
    server.stop()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_up(page: Page, server, username: str) -> None:
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/chat/$"))
    ready(page)


def ready(page: Page) -> None:
    """The chat page's script has loaded and set up its handlers."""
    expect(page.locator("body[data-ready]")).to_have_count(1)


def shell(server, code: str) -> str:
    """Run Django code against the server's database; its last printed line."""
    result = subprocess.run([str(BIN / "python"), "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def seed(server, username: str, turns: list[tuple[str, str]]) -> int:
    """A conversation of `username` with these (question, answer) turns, as if the model wrote them."""
    code = f"""
from django.contrib.auth import get_user_model
from chatsite.models import Conversation, Message
owner = get_user_model().objects.get(username={username!r})
conversation = Conversation.objects.create(owner=owner, title={turns[0][0][:60]!r})
parent = None
for question, answer in {turns!r}:
    parent = Message.objects.create(conversation=conversation, parent=parent, role="user", content=question)
    parent = Message.objects.create(conversation=conversation, parent=parent, role="assistant", content=answer,
                                    status="done", finish_reason="eos")
conversation.current = parent
conversation.save()
print(conversation.id)
"""
    return int(shell(server, code))


def saved(server, message_id: int) -> dict:
    code = f"""
import json
from chatsite.models import Message
m = Message.objects.get(id={message_id})
print(json.dumps({{"content": m.content, "status": m.status, "parent": m.parent_id}}))
"""
    return json.loads(shell(server, code))


def ask(page: Page, text: str) -> None:
    ready(page)
    page.get_by_label("Message", exact=True).fill(text)
    page.keyboard.press("Enter")


def answer_id(page: Page) -> int:
    return int(page.locator(".message.assistant").last.get_attribute("data-id"))


def test_sign_up_and_chat(page: Page, server):
    sign_up(page, server, "chatter")
    ask(page, "Hello there")
    expect(page.locator(".message.user .content")).to_have_text("Hello there")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=LONG)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    expect(page.locator("#conversations li.active")).to_contain_text("Hello there")
    assert page.evaluate("window.chatsiteAssembly") == {"checked": 1, "mismatches": 0}
    text = page.locator(".message.assistant .content").inner_text()
    assert text.strip() and text.strip() in saved(server, answer_id(page))["content"]
    screenshot(page, "chat")


def test_code_is_highlighted_with_a_working_copy_and_tables_render(page: Page, server, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_up(page, server, "coder")
    answer = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nUse `add`."
    conversation = seed(server, "coder", [("Write add in Python", answer)])
    page.goto(f"{server.url}/chat/{conversation}/")
    code = page.locator(".message.assistant pre code")
    expect(code).to_have_text("def add(a, b):\n    return a + b\n")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(page.locator(".message.assistant table td").first).to_have_text("1")
    expect(page.locator(".message.assistant :not(pre) > code")).to_have_text("add")
    page.get_by_role("button", name="Copy code").click()
    expect(page.get_by_role("button", name="Copy code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b\n"
    screenshot(page, "code")


def test_a_code_block_being_written_has_its_header_and_is_highlighted_when_it_ends(page: Page, server):
    """The page's streaming renderer, fed an answer a piece at a time as frames feed it: an
    open fence shows its header (language, Copy) at once, so nothing moves when it closes;
    its code is highlighted, and Copy enabled, once it ends."""
    sign_up(page, server, "streamer")
    parts = page.evaluate(r"""async () => {
        const {StreamingView} = await import("/static/chat/render.js");
        const element = document.createElement("div");
        document.body.append(element);
        const view = new StreamingView(element);
        const seen = (text) => {
            view.update(text);
            return {headers: [...element.querySelectorAll(".code-header span")].map((span) => span.textContent),
                    code: element.querySelector("pre code")?.textContent ?? null,
                    copy: element.querySelector(".copy-code")?.disabled ? "disabled" : "enabled",
                    highlighted: element.querySelectorAll(".hljs-keyword").length};
        };
        return [seen("Here:\n\n```python\ndef add(a, b):\n"),
                seen("Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nDone")];
    }""")
    assert parts[0] == {"headers": ["python"], "code": "def add(a, b):\n", "copy": "disabled", "highlighted": 0}
    assert parts[1] == {"headers": ["python"], "code": "def add(a, b):\n    return a + b\n", "copy": "enabled",
                        "highlighted": 2}


def test_html_from_a_user_or_the_model_is_inert(page: Page, server):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_up(page, server, "attacker")
    hostile = ('<img src=x onerror="alert(1)"> <script>alert(2)</script> [click](javascript:alert(3)) '
               '<a href="javascript:alert(4)">x</a> [safe](https://example.com)')
    conversation = seed(server, "attacker", [(hostile, hostile)])
    page.goto(f"{server.url}/chat/{conversation}/")
    ask(page, '<svg onload="alert(5)"></svg>')
    expect(page.locator(".message.assistant.status-done")).to_have_count(2, timeout=LONG)
    page.wait_for_timeout(300)
    assert dialogs == []
    messages = page.locator("#messages")
    assert messages.locator("script, img, svg, [onerror], [onload]").count() == 0
    assert messages.locator('a[href^="javascript"]').count() == 0
    safe = messages.locator('a[href="https://example.com"]')
    expect(safe).to_have_attribute("rel", "noopener noreferrer")
    expect(page.locator(".message.user .content").first).to_contain_text("<img src=x")  # shown as text
    screenshot(page, "xss")


def test_stop_and_escape_stop_the_answer_and_keep_its_text(page: Page, server):
    sign_up(page, server, "stopper")
    ask(page, "Tell me everything")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=LONG)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator(".message.assistant.status-stopped")).to_have_count(1, timeout=LONG)
    expect(page.locator(".message.assistant .note")).to_have_text("Stopped.")
    assert saved(server, answer_id(page))["status"] == "stopped"
    ask(page, "Again")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=LONG)
    page.keyboard.press("Escape")
    expect(page.locator(".message.assistant.status-stopped")).to_have_count(2, timeout=LONG)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
    screenshot(page, "stop")


def test_regenerate_and_edit_keep_alternatives_and_the_model_gets_the_branch_shown(page: Page, server):
    sign_up(page, server, "brancher")
    ask(page, "First question")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    first_answer = answer_id(page)
    page.get_by_role("button", name="Write another answer").click()
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    expect(page.locator(".message.assistant .version")).to_have_text("2 / 2")
    page.get_by_role("button", name=re.compile("Previous version")).click()
    expect(page.locator(".message.assistant .version")).to_have_text("1 / 2")
    assert answer_id(page) == first_answer
    ask(page, "Follow-up on the first answer")
    expect(page.locator(".message.assistant.status-done")).to_have_count(2, timeout=LONG)
    follow_up = saved(server, answer_id(page))
    assert saved(server, follow_up["parent"])["parent"] == first_answer  # the branch on screen
    page.get_by_role("button", name="Edit and resend this message").first.click()
    page.get_by_label("Edit your message").fill("First question, edited")
    page.get_by_role("button", name="Send", exact=True).first.click()
    expect(page.locator(".message.user .version").first).to_have_text("2 / 2", timeout=LONG)
    expect(page.locator(".message.user .content").first).to_have_text("First question, edited")
    expect(page.locator(".message")).to_have_count(2)  # the new branch starts at the edit
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    page.reload()  # the branch shown is remembered
    expect(page.locator(".message.user .content").first).to_have_text("First question, edited")
    screenshot(page, "branches")


def test_a_reload_mid_answer_receives_all_of_it(page: Page, server):
    sign_up(page, server, "reloader")
    ask(page, "A long story")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=LONG)
    page.wait_for_timeout(150)
    page.reload()
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    assembly = page.evaluate("window.chatsiteAssembly")
    assert assembly == {"checked": 1, "mismatches": 0}, "the resumed page assembled text that differs from the saved"
    answer = saved(server, answer_id(page))
    assert answer["status"] == "done" and len(answer["content"]) > 100
    screenshot(page, "reload")


def test_a_dropped_socket_reconnects_by_itself_and_receives_all_of_it(page: Page, server):
    blocked = {"on": False, "sockets": []}

    def route(socket_route):
        if blocked["on"]:
            socket_route.close(code=1006)
            return
        socket_route.connect_to_server()
        blocked["sockets"].append(socket_route)

    page.route_web_socket(re.compile(r"/ws/chat/"), route)
    sign_up(page, server, "dropper")
    ask(page, "A long story")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1, timeout=LONG)
    blocked["on"] = True
    blocked["sockets"][-1].close(code=1006)
    expect(page.locator("#offline-banner")).to_be_visible()
    page.wait_for_timeout(1500)  # reconnection attempts are refused meanwhile
    blocked["on"] = False
    expect(page.locator("#offline-banner")).to_be_hidden(timeout=LONG)
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    assert page.evaluate("window.chatsiteAssembly") == {"checked": 1, "mismatches": 0}
    assert len(blocked["sockets"]) >= 2
    screenshot(page, "dropped")


def test_two_tabs_on_one_conversation_both_see_the_stream(page: Page, server, context):
    sign_up(page, server, "two-tabs")
    ask(page, "Start")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    other = context.new_page()
    other.goto(page.url if "/chat/" in page.url and page.url.rstrip("/").split("/")[-1].isdigit()
               else page.evaluate("location.href"))
    expect(other.locator(".message.assistant")).to_have_count(1)
    other.wait_for_timeout(500)  # its socket is watching
    ask(page, "Next")
    expect(other.locator(".message.user")).to_have_count(2, timeout=LONG)
    for tab in (page, other):
        expect(tab.locator(".message.assistant.status-done")).to_have_count(2, timeout=LONG)
    assert page.locator(".message.assistant .content").last.inner_text() == \
        other.locator(".message.assistant .content").last.inner_text()
    ask(other, "From the other tab")
    expect(page.locator(".message.user")).to_have_count(3, timeout=LONG)
    screenshot(other, "two-tabs")


def test_rename_delete_search_and_export(page: Page, server):
    sign_up(page, server, "organiser")
    first = seed(server, "organiser", [("Quantum physics basics", "Waves and particles.")])
    seed(server, "organiser", [("Pasta recipe", "Boil water.")])
    page.goto(f"{server.url}/chat/{first}/")
    page.get_by_role("button", name="Rename").click()
    page.get_by_label("New title").fill("Physics notes")
    page.keyboard.press("Enter")
    expect(page.locator("#title")).to_have_text("Physics notes")
    expect(page.locator("#conversations li.active")).to_have_text("Physics notes")
    page.get_by_label("Search conversations").fill("particles")
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li")).to_have_text("Physics notes")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export Markdown").click()
    assert Path(download.value.path()).read_text().startswith("# Physics notes\n")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export JSON").click()
    assert json.loads(Path(download.value.path()).read_text())["messages"][1]["content"] == "Waves and particles."
    page.get_by_label("Search conversations").fill("")
    expect(page.locator("#conversations li")).to_have_count(2)
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Keep it").click()
    expect(page.locator("#conversations li")).to_have_count(2)
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Delete for good").click()
    expect(page).to_have_url(re.compile(r"/chat/$"))
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li")).to_have_text("Pasta recipe")
    screenshot(page, "organise")


def test_the_list_goes_past_fifty(page: Page, server):
    sign_up(page, server, "hoarder")
    code = """
from django.contrib.auth import get_user_model
from chatsite.models import Conversation
owner = get_user_model().objects.get(username="hoarder")
Conversation.objects.bulk_create([Conversation(owner=owner, title=f"chat {n}") for n in range(120)])
print("ok")
"""
    shell(server, code)
    page.reload()
    expect(page.locator("#conversations li")).to_have_count(50)
    page.get_by_role("button", name="Load more").click()
    expect(page.locator("#conversations li")).to_have_count(100)
    page.get_by_role("button", name="Load more").click()
    expect(page.locator("#conversations li")).to_have_count(120)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()


def test_an_answer_cut_at_the_cap_says_so_and_continues(page: Page, capped_server):
    sign_up(page, capped_server, "continuer")
    ask(page, "Count to a hundred")
    expect(page.locator(".message.assistant .note")).to_have_text("Cut off at your plan's answer length.", timeout=LONG)
    before = saved(capped_server, answer_id(page))["content"]
    page.get_by_role("button", name="Continue the answer").click()
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    expect(page.locator(".message.assistant .note")).to_have_text("Cut off at your plan's answer length.", timeout=LONG)
    after = saved(capped_server, answer_id(page))["content"]
    assert after.startswith(before) and len(after) > len(before)
    screenshot(page, "continue")


def test_the_quota_banner_offers_an_upgrade(page: Page, capped_server):
    sign_up(page, capped_server, "counter")
    expect(page.locator("#quota")).to_have_text("4 of 4 messages left")
    expect(page.locator("#quota-banner")).to_be_hidden()
    ask(page, "One")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    expect(page.locator("#quota")).to_contain_text(re.compile(r"^3 of 4 messages left · next frees up at ([\w ]+, )?\d{1,2}:\d{2}"))  # a date once it is tomorrow
    banner = page.locator("#quota-banner")
    expect(banner).to_contain_text("3 of 4 messages left on your Free plan")
    for count, text in enumerate(("Two", "Three", "Four"), start=2):
        ask(page, text)
        expect(page.locator(".message.assistant.status-done")).to_have_count(count, timeout=LONG)
    expect(banner).to_contain_text("You have used all 4 messages")
    ask(page, "Five")
    expect(page.locator("#status")).to_contain_text("Plus raises the limit")
    page.get_by_role("link", name="Upgrade to Plus").click()
    expect(page.locator("#billing-off")).to_contain_text("Billing is not configured")
    screenshot(page, "quota")


def test_on_a_phone_the_list_is_a_drawer_and_nothing_scrolls_sideways(page: Page, server):
    page.set_viewport_size({"width": 390, "height": 844})
    sign_up(page, server, "phone")
    conversation = seed(server, "phone", [("A long question " * 20, "```\n" + "x" * 300 + "\n```\n\n" + "word " * 200)])
    page.goto(f"{server.url}/chat/{conversation}/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_in_viewport()
    sidebar = page.locator("#sidebar")
    assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0  # off screen
    page.get_by_role("button", name="Conversations").click()
    expect(page.get_by_role("button", name="Conversations")).to_have_attribute("aria-expanded", "true")
    page.wait_for_timeout(300)
    assert sidebar.bounding_box()["x"] >= 0
    screenshot(page, "phone-drawer")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0
    screenshot(page, "phone")


def test_dark_theme_follows_the_system_and_the_toggle(page: Page, server):
    page.emulate_media(color_scheme="dark")
    sign_up(page, server, "night-owl")
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) == "rgb(13, 17, 23)"
    page.get_by_role("button", name="Switch between light and dark theme").click()
    assert page.evaluate(background) == "rgb(255, 255, 255)"
    page.reload()  # the choice is kept
    assert page.evaluate(background) == "rgb(255, 255, 255)"
    page.get_by_role("button", name="Switch between light and dark theme").click()
    assert page.evaluate(background) == "rgb(13, 17, 23)"
    screenshot(page, "dark")


def test_keyboard_and_screen_reader_basics(page: Page, server):
    sign_up(page, server, "keyboarder")
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    assert page.locator("#messages").get_attribute("aria-live") == "polite"
    ask(page, "Hi")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    unnamed = page.evaluate("""[...document.querySelectorAll('button, a[href], input, textarea')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim() || e.labels?.length || e.placeholder))
        .map(e => e.outerHTML)""")
    assert unnamed == []
    page.keyboard.press("Shift+Tab")
    focused = page.evaluate("document.activeElement.tagName")
    assert focused in ("BUTTON", "A", "INPUT", "TEXTAREA")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_pages_work_under_the_content_security_policy(page: Page, server):
    violations = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
    sign_up(page, server, "csp-checker")
    ask(page, "Hi")
    expect(page.locator(".message.assistant.status-done")).to_have_count(1, timeout=LONG)
    page.goto(server.url + "/account/billing/")
    assert violations == []
