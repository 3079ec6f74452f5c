"""Checkpoint persistence: the manager, the store protocol and its stores, the codec, the recorder."""
