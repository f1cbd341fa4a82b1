"""Storage on the management node: the MDS client with try-next (``mds``, its pure policy
in ``retry``), primary storage records and their MDS health (``primary``, served by
``primary_service``), volume chains (``chain`` pure, ``qemuimg``, ``images``), block jobs
(``blockjobs`` pure judge and runner, ``livejobs``) and VolumeService (``service``). The
simulated MDS is a process of its own (``controlplane.mds``); the agent-side block-job
drivers live in ``controlplane.agent.drivers``."""
