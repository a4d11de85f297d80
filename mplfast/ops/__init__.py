"""Fused ops of mplfast, one package per op (``soft_ce``, ``uda``, ``grad_dot``), each with its
public function, registered custom ops (``op.py``), plain-torch definition (``reference.py``) and
native wrapper (``native.py``); the Triton kernels are ``mplfast.kernels.<op>``. One contract
(``contract.py``) holds the primitives' signatures and checks (docs/DESIGN.md).
"""
from mplfast.ops.grad_dot import grad_dot, grad_dot_delta
from mplfast.ops.soft_ce import soft_cross_entropy
from mplfast.ops.uda import uda_loss

__all__ = ["soft_cross_entropy", "uda_loss", "grad_dot", "grad_dot_delta"]
