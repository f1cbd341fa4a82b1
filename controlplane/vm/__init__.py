"""VMs: the state machine (a pure table), the VM service, sync with its skip/orphan rules, and HA."""
