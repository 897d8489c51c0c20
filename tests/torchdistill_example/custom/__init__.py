"""Stand-in for torchdistill's example package ``examples/hf_transformers/custom`` (its GLUE configs list it under
``dependencies``; its wheel does not ship it). Same modules and registrations, imported the same way."""
from custom import forward_proc, loss, optim  # noqa: F401
