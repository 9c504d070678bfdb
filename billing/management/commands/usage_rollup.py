"""manage.py usage_rollup [--since DAY] [--until DAY] [--all]: add usage records up for the console."""
import datetime
import time

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Min

from billing.models import UsageRecord
from billing.rollup import usage_roll_up


def _day(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a day (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Recompute the console's hourly and daily roll-ups of usage (UTC days, both ends included)."

    def add_arguments(self, parser):
        parser.add_argument("--since", type=_day, help="first day (default: the newest rolled-up day)")
        parser.add_argument("--until", type=_day, help="last day (default: today)")
        parser.add_argument("--all", action="store_true", help="every day since the oldest record")

    def handle(self, *args, since=None, until=None, all=False, **options):
        if all:
            oldest = UsageRecord.objects.aggregate(oldest=Min("created_at"))["oldest"]
            since = oldest.astimezone(datetime.UTC).date() if oldest else None
            if since is None:
                self.stdout.write("No usage records.")
                return
        started = time.perf_counter()
        read = usage_roll_up(since=since, until=until)
        self.stdout.write(f"Rolled up {read:,} usage records in {time.perf_counter() - started:.1f} s.")
