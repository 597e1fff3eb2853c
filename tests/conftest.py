"""Shared test settings: a deterministic, deadline-free hypothesis profile (fast by default)."""

from hypothesis import HealthCheck, settings

settings.register_profile("tsfa", deadline=None, derandomize=True, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tsfa")
