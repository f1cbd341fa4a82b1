from hypothesis import HealthCheck, settings

pytest_plugins = ["controlplane.testing.pytest_plugin"]

# These machines are shared and noisy: a time-based health check must not fail a property
# test whose examples are fine. No example database: a run replays only its own examples
# (CI starts from a clean clone anyway), so local runs and CI test the same thing.
settings.register_profile(
    "shared-machine", suppress_health_check=[HealthCheck.too_slow], deadline=None,
    database=None,
)
settings.load_profile("shared-machine")
