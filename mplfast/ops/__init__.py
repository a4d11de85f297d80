"""Fused ops of mplfast: public entry points with validation, backend choice and autograd.

``mplfast.ops.reference`` holds the plain-torch definitions; ``mplfast._native`` and
``mplfast.kernels`` implement the same primitives (docs/DESIGN.md).
"""
from mplfast.ops._meta import grad_dot, grad_dot_delta
from mplfast.ops._soft_ce import soft_cross_entropy
from mplfast.ops._uda import uda_loss

__all__ = ["soft_cross_entropy", "uda_loss", "grad_dot", "grad_dot_delta"]
