"""The harness's gRPC-serving child processes: the shared process model.

ServingProcess lives in controlplane.serving (outside testing/, so that `controlplane up`
uses the same model without importing the harness); this module keeps the harness's import
path for NodeProcess, AgentProcess, MdsProcess and the tests that subclass it.
"""

from __future__ import annotations

from controlplane.serving import CHANNEL_OPTIONS, ServingProcess, health_status

__all__ = ["CHANNEL_OPTIONS", "ServingProcess", "health_status"]
