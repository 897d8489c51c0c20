"""Shared machinery of the runners: config checks, distributed set-up, loops, checkpoints."""
