"""``objective.compile``: the ``torch.compile`` twin of a transformer for training, and its CPU graph pass.

``CpuFastPaths`` rewrites two things that are slow on a CPU into the same math done faster (docs/bench/README.md):

- a matrix product whose output has very few columns (``(M, K) @ (K, N)``, ``N <= 8``) runs at a tenth of the
  machine's matmul speed in MKL, and a rank-4 LoRA is made of them (``x @ A^T``, ``g @ B``, ``lora_B``'s
  gradient ``g^T @ h``): each becomes ``(b^T @ a^T)^T``, the same sums with the narrow side as rows, 2-6x faster;
- the tanh GELU of Wan's feed-forward (and its backward) spends its time in a vectorised ``tanh`` 3.7x slower
  than ``exp`` here: ``tanh(z) = 2 sigmoid(2 z) - 1`` computes the same values, within float rounding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten
NARROW = 8  # at most this many output columns: transposed (measured: 2-6x faster at 4 and 8, slower from 16)
TALL = 64  # and at least this many rows
GELUS = ("aten.gelu.default", "aten.gelu_backward.default")  # their decomposition's tanh: by a sigmoid


def compile_problem(device: str) -> str | None:
    """Why ``torch.compile`` (Inductor) cannot build kernels for ``device`` here, or None: a CPU needs a C++
    compiler (``$CXX`` or g++), a CUDA GPU needs Triton. Checked before a run with ``objective.compile`` starts."""
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on a GPU needs Triton, which is not installed"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        cxx = get_cpp_compiler()
    except Exception as err:  # noqa: BLE001  (Inductor raises its own errors when no compiler is found)
        return f"torch.compile on a CPU needs a C++ compiler: {err}"
    if shutil.which(cxx) is None and not Path(cxx).is_file():
        return f"torch.compile on a CPU needs a C++ compiler; {cxx!r} (or $CXX) is not installed"
    return None


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)`` with ``CpuFastPaths`` (same weights: an ``OptimizedModule`` wraps it)."""
    return torch.compile(model, options={"post_grad_custom_post_pass": CpuFastPaths()})


def _emit(graph: torch.fx.Graph, op, *args) -> torch.fx.Node:
    """A new node ``op(*args)`` with its ``val`` (a fake tensor) computed from its inputs', as later passes read."""
    node = graph.call_function(op, args)
    node.meta["val"] = op(*(a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args))
    return node


def _on_cpu(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type == "cpu"


class CpuFastPaths(CustomGraphPass):
    """Post-grad pass over Inductor's forward and backward graphs; only nodes on a CPU change."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function" or not _on_cpu(node):
                continue
            if node.target is aten.mm.default:
                self.narrow_matmul(graph, node)
            elif node.target is aten.tanh.default and str(node.meta.get("original_aten")) in GELUS:
                self.tanh_by_sigmoid(graph, node)

    @staticmethod
    def narrow_matmul(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
        """``mm(a, b)`` of output ``(M, N)``, ``N <= NARROW``, ``M >= TALL`` -> ``mm(b^T, a^T)^T`` (views)."""
        m, n = node.meta["val"].shape
        a, b = node.args
        if not (isinstance(m, int) and isinstance(n, int) and n <= NARROW and m >= TALL):
            return
        if not all(isinstance(t, torch.fx.Node) and "val" in t.meta for t in (a, b)):
            return
        with graph.inserting_before(node):
            prod = _emit(
                graph,
                aten.mm.default,
                _emit(graph, aten.permute.default, b, [1, 0]),
                _emit(graph, aten.permute.default, a, [1, 0]),
            )  # (N, M)
            out = _emit(graph, aten.permute.default, prod, [1, 0])  # (M, N)
        node.replace_all_uses_with(out)
        graph.erase_node(node)

    @staticmethod
    def tanh_by_sigmoid(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
        """``tanh(z) = 2 sigmoid(2 z) - 1`` (within 1e-7 absolute): for the ``tanh`` that Inductor's
        decomposition of the tanh GELU and of its backward leaves in the graph."""
        (z,) = node.args
        with graph.inserting_before(node):
            s = _emit(graph, aten.sigmoid.default, _emit(graph, aten.mul.Tensor, z, 2.0))
            out = _emit(graph, aten.sub.Tensor, _emit(graph, aten.mul.Tensor, s, 2.0), 1.0)
        node.replace_all_uses_with(out)
        graph.erase_node(node)

    def uuid(self) -> bytes:
        """Inductor's cache key for this pass: this file's contents."""
        return get_hash_for_files((__file__,))
