"""A distributed control plane for VM clouds, on etcd and gRPC."""

__version__ = "0.1.0"
