"""Stand-in for `torch` in the NIXL plugin tests.

nixl-cu12 1.3.2's Python API imports torch at module load, but only uses it to recognise
tensors (``isinstance(x, torch.Tensor)``). These tests pass plain address tuples, so a class
that nothing is an instance of is enough, and CI does not download a 2 GB CUDA torch wheel.
conftest.py puts this directory on sys.path only when no real torch is installed.
"""


class Tensor:  # noqa: D101 - nothing is an instance of it
    pass
