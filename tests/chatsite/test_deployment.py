"""The production profile: `check --deploy` clean behind TLS, and the headers pages carry."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def test_the_production_profile_passes_check_deploy_with_no_warnings(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings", DJANGO_DEBUG="false", DJANGO_HTTPS="true",
        DJANGO_SECRET_KEY="prod-" + "k3y!" * 16, DJANGO_ALLOWED_HOSTS="chat.example.com",
        CHATSITE_DATA_DIR=str(tmp_path),
    )
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


def test_pages_carry_a_content_security_policy_without_inline_script(client):
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy


def test_pages_of_a_logged_in_user_are_not_cached(client, make_user):
    client.force_login(make_user())
    for page in ("/chat/", "/account/api-keys/", "/account/billing/"):
        assert client.get(page)["Cache-Control"] == "no-store", page
    created = client.post("/account/api-keys/", {"name": "secret"})
    assert created["Cache-Control"] == "no-store" and "cs-" in created.content.decode()



WEB_PROCESS = """
import sys
import django
django.setup()
from chatsite.asgi import application
from django.urls import get_resolver
from chatsite.openai_protocol import parse_chat_completion
get_resolver().url_patterns  # every view module
parse_chat_completion(b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7}',
                      model_name="m", max_input_chars=100, max_output_tokens=10, max_choices=1)
print(" ".join(name for name in ("torch", "transformers.models.llama", "inference.engine") if name in sys.modules))
"""


def test_a_distributed_web_process_imports_neither_torch_nor_the_engine(tmp_path):
    """Its views, sockets and the API's validation need the plain-Python part of `inference`:
    torch and the model's code are seconds of imports and 300 MB in every web process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", DJANGO_SECRET_KEY="web-" + "k3y!" * 16,
               DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test", REDIS_URL="redis://127.0.0.1:6379/13",
               CHATSITE_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", WEB_PROCESS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
