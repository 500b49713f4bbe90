"""Adapters from an array library's autograd and compilers onto :mod:`.._compute`.

``plain`` serves NumPy and every array-API library without an autograd of
its own; ``torch`` registers custom ops with our VJPs; ``jax`` attaches them
with ``custom_vjp``. Each exposes the same row-level functions, which
:mod:`.._dispatch` calls. Adding a library means one file here and one line
in :func:`.._dispatch.backend`.
"""
