"""VMs: the state machine (a pure table), the VM service, sync with skip/orphans, HA."""
