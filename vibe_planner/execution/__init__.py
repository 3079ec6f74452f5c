"""Running plans: the scheduler, node contexts, retry policy and built-in handlers."""
