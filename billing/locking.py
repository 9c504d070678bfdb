"""The one lock billing takes: a user's row, held to the end of the current transaction."""
from django.contrib.auth import get_user_model
from django.db import connection


def user_row_lock(*, user_id: int) -> None:
    """SELECT … FOR UPDATE the user's row: writers about one user (quota counts, Stripe syncs,
    customer creation) run one after another. Call inside a transaction. SQLite has no row
    locks, so nothing is queried there: its IMMEDIATE transactions (settings) already hold
    the database's one write lock, which serialises every writer."""
    if not connection.features.has_select_for_update:
        return
    # NO KEY UPDATE: other rows pointing at the user (usage records, messages) can still be
    # inserted meanwhile; only another lock of this kind waits.
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user_id).values_list("pk", flat=True).first()
