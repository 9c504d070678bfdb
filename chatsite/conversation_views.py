"""The chat page's requests that are not live: list and search conversations, rename, delete,
show another branch, export, and feedback on an answer. JSON in and out (exports excepted);
the page's own script calls them with its CSRF token."""
from __future__ import annotations

import datetime
import functools
import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from chatsite import services
from chatsite.models import Conversation, Message
from chatsite.selectors import PAGE_SIZE, branch_out, conversation_get, conversation_list
from chatsite.untrusted import UntrustedInputError, json_loads, text_problem


def _not_found_as_json(view):
    """A conversation or message that does not exist, or is someone else's: 404 in JSON."""
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (Conversation.DoesNotExist, Message.DoesNotExist):
            return _error(404, "No such conversation or message.")

    return wrapped


def conversation_out(conversation: Conversation) -> dict:
    return {"id": conversation.id, "title": conversation.title, "updated_at": conversation.updated_at.isoformat()}


def conversations_page(*, user, before: tuple | None = None, query: str = "") -> dict:
    """A page of the sidebar's list, and the cursor to the next one (None at the end)."""
    conversations = conversation_list(user=user, limit=PAGE_SIZE + 1, before=before, query=query)
    more = len(conversations) > PAGE_SIZE
    conversations = conversations[:PAGE_SIZE]
    cursor = None
    if more:
        last = conversations[-1]
        cursor = f"{last.updated_at.isoformat()}|{last.id}"
    return {"conversations": [conversation_out(c) for c in conversations], "next": cursor}


@login_required
@require_GET
def conversations(request: HttpRequest) -> JsonResponse:
    """GET ?q=words&next=<cursor>: the user's conversations, newest first, 50 a page."""
    before = None
    if cursor := request.GET.get("next", ""):
        stamp, _, conversation_id = cursor.partition("|")
        updated_at = parse_datetime(stamp)
        if updated_at is None or not conversation_id.isdigit():
            return _error(400, "That page cursor is not one this server gave.")
        before = (updated_at, int(conversation_id))
    query = request.GET.get("q", "").strip()[:200]
    return JsonResponse(conversations_page(user=request.user, before=before, query=query))


@login_required
@require_POST
@_not_found_as_json
def rename(request: HttpRequest, conversation_id: int) -> JsonResponse:
    body = _body(request)
    title = body.get("title")
    if not isinstance(title, str) or text_problem(title):
        return _error(400, "Give the conversation a title.")
    try:
        conversation = services.conversation_rename(user=request.user, conversation_id=conversation_id, title=title)
    except ValueError as error:
        return _error(400, str(error))
    return JsonResponse(conversation_out(conversation))


@login_required
@require_POST
@_not_found_as_json
def delete(request: HttpRequest, conversation_id: int) -> JsonResponse:
    try:
        services.conversation_delete(user=request.user, conversation_id=conversation_id)
    except services.ConversationBusy as busy:
        return _error(409, str(busy))
    return JsonResponse({"deleted": conversation_id})


@login_required
@require_POST
@_not_found_as_json
def show_branch(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """POST {"message": id}: show the alternative `message` and the branch below it."""
    message_id = _body(request).get("message")
    if not isinstance(message_id, int):
        return _error(400, "\"message\" must be a message id.")
    conversation = services.conversation_show_branch(user=request.user, conversation_id=conversation_id,
                                                     message_id=message_id)
    return JsonResponse({"branch": branch_out(conversation=conversation)})


@login_required
@require_POST
@_not_found_as_json
def feedback(request: HttpRequest, message_id: int) -> JsonResponse:
    """POST {"rating": 1 | -1 | 0, "comment": "..."}: 0 takes a rating back."""
    body = _body(request)
    rating, comment = body.get("rating"), body.get("comment", "")
    if not isinstance(rating, int) or not isinstance(comment, str) or text_problem(comment):
        return _error(400, "Send a rating of 1, -1 or 0 and, if you like, a comment.")
    try:
        given = services.feedback_give(user=request.user, message_id=message_id, rating=rating, comment=comment)
    except ValueError as error:
        return _error(400, str(error))
    return JsonResponse({"message": message_id, "rating": given.rating if given else 0,
                         "comment": given.comment if given else ""})


@login_required
@require_GET
def export(request: HttpRequest, conversation_id: int, kind: str) -> HttpResponse:
    """The branch on screen as Markdown or JSON, as a download."""
    if kind not in ("md", "json"):
        raise Http404("Export as .md or .json")
    conversation = _own(request.user, conversation_id)
    branch = branch_out(conversation=conversation)
    name = slugify(conversation.title)[:50] or f"conversation-{conversation.id}"
    if kind == "json":
        document = {
            "title": conversation.title, "exported_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "messages": [{"role": m["role"], "content": m["content"], "status": m["status"]} for m in branch],
        }
        response = HttpResponse(json.dumps(document, indent=2, ensure_ascii=False), content_type="application/json")
    else:
        lines = [f"# {conversation.title}", ""]
        for message in branch:
            lines += [f"## {'You' if message['role'] == Message.Role.USER else 'Assistant'}", "", message["content"], ""]
        response = HttpResponse("\n".join(lines), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.{kind}"'
    return response


def _own(user, conversation_id: int) -> Conversation:
    try:
        return conversation_get(user=user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None


def _body(request: HttpRequest) -> dict:
    try:
        body = json_loads(request.body)
    except UntrustedInputError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)
