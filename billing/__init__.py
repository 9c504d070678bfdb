"""Plans, limits and (from the Billing issue on) subscriptions, quotas and costs."""
