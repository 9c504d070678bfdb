"""The one lock billing takes: a user's row, held to the end of the current transaction."""
from django.contrib.auth import get_user_model


def user_row_lock(*, user_id: int) -> None:
    """SELECT … FOR UPDATE the user's row: writers about one user (quota counts, Stripe syncs,
    customer creation) run one after another. Call inside a transaction. SQLite ignores
    FOR UPDATE; there the IMMEDIATE transactions (settings) serialise every writer."""
    # NO KEY UPDATE: other rows pointing at the user (usage records, messages) can still be
    # inserted meanwhile; only another lock of this kind waits.
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user_id).values_list("pk", flat=True).first()
