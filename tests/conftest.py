pytest_plugins = ["controlplane.testing.pytest_plugin"]
