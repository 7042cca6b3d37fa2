"""Reference implementations that only tests use: the pure-Python (or plain-kernel) loops
the fast kernels replaced. Each module defines kernels under `dlserver.kernels`' names and
signatures, so a test runs the guest on them with one swap:

    with kernels.using(reference.training):
        ...
"""
