"""What serving costs, in plain arithmetic the console shows next to its figures.

Compute seconds are each request's share of its engine's busy time (docs/engine.md), so
seconds × the hourly price of the machine / 3600 is what a request cost while the machine
worked. Idle time is not in it: the console states that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Published estimates the projection is set beside: ChatGPT's cost of about $700,000 a day
# (SemiAnalysis, 2023, as widely reported) and its volume of 1.5 billion requests a day.
CHATGPT_USD_PER_DAY = 694_444.0
CHATGPT_USD_PER_QUERY = 0.0036
CHATGPT_REQUESTS_PER_DAY = 1_500_000_000


def compute_cost_usd(compute_s: float, hourly_usd: float) -> float:
    return compute_s * hourly_usd / 3600


def per_1k(cost_usd: float, tokens: int) -> float | None:
    return cost_usd * 1000 / tokens if tokens else None


@dataclass(frozen=True)
class Margin:
    """A month of Plus revenue against a month of what serving costs, at the range's pace."""

    subscribers: int
    price_usd: float
    free_cost_per_day_usd: float
    plus_cost_per_day_usd: float

    @property
    def revenue_per_month_usd(self) -> float:  # monthly recurring revenue
        return self.subscribers * self.price_usd

    @property
    def free_cost_per_month_usd(self) -> float:
        return self.free_cost_per_day_usd * 30

    @property
    def plus_cost_per_month_usd(self) -> float:
        return self.plus_cost_per_day_usd * 30

    @property
    def margin_per_month_usd(self) -> float:
        return self.revenue_per_month_usd - self.free_cost_per_month_usd - self.plus_cost_per_month_usd

    @property
    def plus_pays_for_free(self) -> bool:
        return self.margin_per_month_usd >= 0


@dataclass(frozen=True)
class Projection:
    """This stack at someone else's volume: how many workers, and what they cost a day."""

    requests_per_day: float
    output_tokens_per_request: float
    tokens_per_s_per_worker: float  # output tokens a worker writes per busy second
    hourly_usd: float  # one worker's machine

    @property
    def tokens_per_day(self) -> float:
        return self.requests_per_day * self.output_tokens_per_request

    @property
    def workers(self) -> int:
        if self.tokens_per_s_per_worker <= 0:
            return 0
        return math.ceil(self.tokens_per_day / (self.tokens_per_s_per_worker * 86400))

    @property
    def usd_per_day(self) -> float:
        return self.workers * self.hourly_usd * 24

    @property
    def usd_per_request(self) -> float | None:
        return self.usd_per_day / self.requests_per_day if self.requests_per_day else None

    @property
    def against_chatgpt(self) -> float:
        """This stack's daily cost as a share of ChatGPT's published one."""
        return self.usd_per_day / CHATGPT_USD_PER_DAY
