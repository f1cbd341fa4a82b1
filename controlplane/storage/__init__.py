"""Storage: the metadata-server (MDS) client with try-next (``mds``, its pure policy in
``retry``) and a simulated MDS to test it against (``mds_sim``, ``mds_main``)."""
