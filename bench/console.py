"""The console at scale: fill a fresh PostgreSQL database with 1,000,000 usage records of
10,000 users over 90 days, roll them up, time every console page (median of 5) and write
bench/results/console.json.

    python -m bench.console [--rows N] [--users N] [--database-url URL] [--keep]

Without --database-url a database is created on 127.0.0.1:5432 and dropped at the end.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import random
import statistics
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DAYS = 90
RUNS = 5


def create_database() -> str:
    import psycopg

    name = f"chatsite_console_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(rows: int, users: int, now: datetime.datetime) -> None:
    """Users (a tenth on Plus, and busier), their subscriptions, and usage records spread over
    DAYS days with a daily rhythm, written with COPY."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from billing.models import Subscription

    rng = random.Random(42)
    model = get_user_model()
    model.objects.bulk_create(
        [model(username=f"user{index:05d}", email=f"user{index:05d}@example.com", password="!") for index in range(users)],
        batch_size=5000,
    )
    ids = list(model.objects.order_by("id").values_list("id", flat=True))
    plus = set(ids[: users // 10])
    Subscription.objects.bulk_create([
        Subscription(user_id=user_id, stripe_id=f"sub_{user_id}", customer_id=f"cus_{user_id}", status="active")
        for user_id in plus
    ], batch_size=5000)
    weights = [5 if user_id in plus else 1 for user_id in ids]
    chosen = rng.choices(ids, weights=weights, k=rows)
    start = now - datetime.timedelta(days=DAYS)
    buffer = io.StringIO()
    for index, user_id in enumerate(chosen):
        on_plus = user_id in plus
        day = rng.randrange(DAYS)
        hour = min(int(rng.triangular(0, 24, 15)), 23)
        at = start + datetime.timedelta(days=day, hours=hour, seconds=rng.randrange(3600))
        if at > now:
            at = now - datetime.timedelta(seconds=rng.randrange(3600))
        completion = rng.randint(5, 2048 if on_plus else 512)
        decode = completion * rng.uniform(0.02, 0.06)
        queue = rng.expovariate(10 if on_plus else 2)
        status = rng.choices(["done", "stopped", "failed"], weights=[90, 9, 1])[0]
        source = "api" if rng.random() < 0.2 else "chat"
        buffer.write(
            f"{user_id}\t{index + 1}\t{'plus' if on_plus else 'free'}\t{source}\t{status}\t{rng.randint(10, 3000)}\t"
            f"{completion}\t{queue:.4f}\t{queue + rng.uniform(0.05, 0.4):.4f}\t{decode:.4f}\t"
            f"{decode * rng.uniform(0.2, 1.0):.4f}\t{at.isoformat()}\n"
        )
    buffer.seek(0)
    with connection.cursor() as cursor, cursor.cursor.copy(
        "COPY billing_usagerecord (user_id, message_id, plan, source, status, prompt_tokens, completion_tokens,"
        " queue_wait_s, ttft_s, decode_s, compute_s, created_at) FROM STDIN"
    ) as copy:
        while chunk := buffer.read(1 << 20):
            copy.write(chunk)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def time_pages(paths: list[str]) -> dict[str, float]:
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.test import Client

    staff = get_user_model().objects.create_user("console-bench-staff", password="x-long-Passw0rd!", is_staff=True)
    client = Client()
    client.force_login(staff)
    medians = {}
    for path in paths:
        times = []
        for _ in range(RUNS):
            cache.clear()  # no help from the live panel's cache: every run reads the database
            started = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code)
        medians[path] = statistics.median(times)
        print(f"{medians[path]:7.3f} s  {path}", flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--keep", action="store_true", help="keep the database it created")
    args = parser.parse_args()
    created = "" if args.database_url else create_database()
    os.environ["DATABASE_URL"] = args.database_url or f"{POSTGRES}/{created}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("DJANGO_SECRET_KEY", "console-benchmark-" + uuid.uuid4().hex)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        from billing.rollup import usage_roll_up

        call_command("migrate", verbosity=0)
        now = timezone.now()
        started = time.perf_counter()
        fill(args.rows, args.users, now)
        print(f"filled {args.rows:,} records of {args.users:,} users in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        usage_roll_up(since=(now - datetime.timedelta(days=DAYS + 1)).date())
        rollup_s = time.perf_counter() - started
        print(f"rolled up in {rollup_s:.0f} s")
        from django.contrib.auth import get_user_model

        busiest = get_user_model().objects.get(username="user00000").id
        today = now.date()
        paths = [
            "/console/?range=today", "/console/?range=7d", "/console/?range=30d",
            f"/console/?range=custom&from={today - datetime.timedelta(days=DAYS - 1)}&to={today}",
            "/console/users/?range=30d", "/console/users/?range=30d&sort=-cost&page=20",
            "/console/users/?range=30d&q=user0042", "/console/users/?range=30d&format=csv",
            f"/console/users/{busiest}/",
        ]
        medians = time_pages(paths)
        from bench.engine import cpu_model

        result = {
            "rows": args.rows, "users": args.users, "days": DAYS, "page_s": max(medians.values()),
            "pages": medians, "rollup_s": rollup_s, "database": "postgresql",
            "machine": f"{cpu_model()}, {os.cpu_count()} cores", "date": datetime.date.today().isoformat(),
        }
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "console.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"slowest page: {result['page_s']:.3f} s (median of {RUNS}); wrote {path}")
    finally:
        if created and not args.keep:
            from django.db import connections

            connections.close_all()
            drop_database(created)


if __name__ == "__main__":
    main()
