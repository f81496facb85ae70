"""Example handlers for forkserve: ``--handler examples.kv:handle`` from the repository root."""
