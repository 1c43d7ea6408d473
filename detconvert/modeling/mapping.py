"""PyTorch tensor name <-> Detectron blob name: the mapping-table machinery.

Every module that holds weights declares, at construction, the Detectron blob prefix it stands for
(:func:`declare_blob`). The suffix a tensor gets is data too (:data:`BLOB_SUFFIXES`), following the
Caffe2 helpers that created the blobs (``detectron/modeling/detector.py``): ``Conv``/``FC``/
``ConvTranspose`` store ``<name>_w``/``<name>_b``; ``AffineChannel`` and ``SpatialGN`` store
``<name>_s``/``<name>_b``. :func:`blob_table` walks a module tree, assembles the table of every
parameter and persistent buffer and checks that it is one-to-one and complete.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

import torch
from torch import nn

#: Attribute carrying the Detectron blob prefix of a module (``res2_0_branch2a``, ``res_conv1_bn``).
BLOB_ATTR = "detectron_blob"

#: Per module class: torch tensor name -> Detectron suffix. Classes are matched with isinstance, in
#: order, so subclasses (AffineChannel2d, the fixed bilinear ConvTranspose) need no rows of their own
#: unless their suffixes differ. Filled in by :func:`register_suffixes` for project classes.
BLOB_SUFFIXES: Dict[Type[nn.Module], Dict[str, str]] = {
    nn.Conv2d: {"weight": "_w", "bias": "_b"},
    nn.ConvTranspose2d: {"weight": "_w", "bias": "_b"},
    nn.Linear: {"weight": "_w", "bias": "_b"},
    nn.GroupNorm: {"weight": "_s", "bias": "_b"},  # SpatialGN: <prefix>_gn_s / <prefix>_gn_b
}


class MappingTableError(AssertionError):
    """The assembled table is not one-to-one or misses a tensor: a bug in the model, not user input."""


def register_suffixes(cls: Type[nn.Module], suffixes: Dict[str, str]) -> None:
    """Declare the blob suffixes of a project module class (e.g. AffineChannel2d: ``_s``/``_b``)."""
    BLOB_SUFFIXES[cls] = dict(suffixes)


def declare_blob(module: nn.Module, blob_prefix: str) -> nn.Module:
    """Tag ``module`` with the Detectron blob prefix its tensors are stored under; returns it."""
    setattr(module, BLOB_ATTR, blob_prefix)
    return module


def _suffixes_for(module: nn.Module) -> Dict[str, str]:
    # Most specific class first: project subclasses are registered after the torch base classes.
    for cls in reversed(list(BLOB_SUFFIXES)):
        if isinstance(module, cls):
            return BLOB_SUFFIXES[cls]
    raise MappingTableError(f"{type(module).__name__} has a Detectron blob name but no suffix table")


def _own_tensors(module: nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    tensors: Dict[str, Optional[torch.Tensor]] = {}
    for name, p in module.named_parameters(recurse=False):
        tensors[name] = p
    for name, b in module.named_buffers(recurse=False):
        if name not in module._non_persistent_buffers_set:
            tensors[name] = b
    return tensors


def blob_table(root: nn.Module) -> Dict[str, str]:
    """The mapping table of ``root``: every parameter / persistent buffer name -> Detectron blob.

    Shared submodules (the same module reachable by two paths) appear once, under their first path,
    exactly as :meth:`torch.nn.Module.named_parameters` reports them.

    Raises:
        MappingTableError: a tensor without a blob, a module without a suffix table, or two tensors
            mapped to one blob.
    """
    table: Dict[str, str] = {}
    owner_of_blob: Dict[str, str] = {}
    for mod_name, module in root.named_modules():
        prefix = getattr(module, BLOB_ATTR, None)
        tensors = _own_tensors(module)
        if prefix is None:
            if tensors:
                raise MappingTableError(
                    f"module '{mod_name or type(root).__name__}' ({type(module).__name__}) holds "
                    f"{sorted(tensors)} but declares no Detectron blob"
                )
            continue
        suffixes = _suffixes_for(module)
        for t_name in tensors:
            if t_name not in suffixes:
                raise MappingTableError(f"{mod_name}.{t_name}: no Detectron suffix for tensor '{t_name}'")
            full = f"{mod_name}.{t_name}" if mod_name else t_name
            blob = prefix + suffixes[t_name]
            if blob in owner_of_blob:
                raise MappingTableError(f"blob {blob} claimed by both {owner_of_blob[blob]} and {full}")
            owner_of_blob[blob] = full
            table[full] = blob
    covered = set(table)
    all_tensors = {n for n, _ in root.named_parameters()} | {
        n for n, _ in _persistent_buffers(root)
    }
    if covered != all_tensors:
        raise MappingTableError(f"tensors without a blob: {sorted(all_tensors - covered)[:10]}")
    return table


def _persistent_buffers(root: nn.Module):
    for mod_name, module in root.named_modules():
        for name, b in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), b


def named_tensors(root: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``root`` by name (shared ones once)."""
    out = dict(root.named_parameters())
    out.update(dict(_persistent_buffers(root)))
    return out


def lookup_name(blob: str, available) -> Tuple[str, bool]:
    """The key Detectron reads for ``blob`` (``initialize_gpu_from_weights_file``'s ``]_`` rule).

    Names such as ``_[mask]_res5_0_branch2a_w`` are read verbatim when present, otherwise as the part
    after ``]_`` (``res5_0_branch2a_w``). Returns ``(name, used_fallback)``.
    """
    if blob in available or "]_" not in blob:
        return blob, False
    return blob.split("]_", 1)[1], True
