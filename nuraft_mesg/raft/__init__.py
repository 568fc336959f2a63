"""Sans-IO Raft core."""
