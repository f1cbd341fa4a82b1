"""The libvirt backend of the host agent: real guests (QEMU, KVM where it works, TCG
otherwise) as libvirt domains, one agent per host (see ``backend.py``)."""
