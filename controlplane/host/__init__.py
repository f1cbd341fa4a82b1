"""Hosts: records, the agent client, and the tracker that pings and syncs owned hosts."""
