"""Kept only for `controlplane.cli.up.supervisor`, which still imports ring_to_dict from
here: the client commands moved to one module per noun (cli/cluster.py, hosts.py, vms.py,
config.py, storage.py, images.py). Delete this file once up imports
`controlplane.cli.cluster.ring_to_dict`."""

from controlplane.cli.cluster import ring_to_dict

__all__ = ["ring_to_dict"]
