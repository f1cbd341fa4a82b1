"""The host agent: a gRPC server (server.py) over a hypervisor backend (backend.py), with the
simulated backend (sim.py) the tests and benchmarks use; ``controlplane agent`` (main.py)."""
