"""The search's fast path on CPUs, which scoring plugs in: drop-in layers (``layers``), the C kernels and
their build (``native_kernels``, ``kernels/*.c``), residual adds fused into batch norms
(``residual_fusion``) and freed memory kept in the process (``allocator``). Same values as the
definitions in ``search.proxies`` to fp32 rounding; speed and accuracy in docs/benchmarks.md.
"""
