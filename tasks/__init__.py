"""Prefect tasks that wire the pure functions of dfd into flows."""
