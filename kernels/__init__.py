"""Triton kernels of mplfast, shipped inside the wheel as ``mplfast.kernels``.

Import these modules only through ``mplfast.kernels``; the top-level name ``kernels`` belongs to
another package on the index. Each module needs ``triton``; on a machine without a GPU they run
under ``TRITON_INTERPRET=1``.
"""
