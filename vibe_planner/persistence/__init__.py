"""Checkpoint persistence: the manager, the store interface, the codec and the run recorder."""
