"""A safe reader for the cfg text Detectron embeds in ``model_final.pkl``.

Detectron's ``save_model_to_weights_file`` (``detectron/utils/net.py``) stores ``yaml.dump(cfg)``: every
node of the config tree is a ``!!python/object/new:detectron.utils.collections.AttrDict`` (older
models: ``utils.collections.AttrDict``, which Detectron's ``load_cfg`` renames through
``_RENAMED_MODULES``), tuples are ``!!python/tuple``, Python-2 strings ``!!python/unicode`` /
``!!python/str``, and the two NumPy values of the config are pickled objects: ``PIXEL_MEANS`` (an
ndarray, ``numpy.core.multiarray._reconstruct`` with ``!!binary`` data) and ``BBOX_XFORM_CLIP`` (an
``np.float64``, ``numpy.core.multiarray.scalar``). NumPy 2 writes the same under ``numpy._core``.

Detectron reads this text with PyYAML's *unsafe* loader, which would run any constructor the text
names. :class:`DetectronCfgLoader` is a :class:`yaml.SafeLoader` that understands exactly the tags
above and refuses every other tag with a :class:`~detconvert.errors.ConfigError` naming it.

Both loaders here (this one and :class:`ConfigYamlLoader`, PyYAML's safe loader for users' config files)
bound what a text can make the reader and its consumers do: the text length (:data:`MAX_YAML_CHARS`),
the nesting depth (:data:`MAX_YAML_DEPTH`) and the number of nodes once anchors are expanded
(:data:`MAX_YAML_NODES`: a "billion laughs" text is a few lines of aliases of aliases). A value the
YAML syntax allows but Python cannot build (an integer of 5,000 digits, a 13th month) is a
``ConfigError`` too.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import numpy as np
import yaml

from detconvert.errors import ConfigError, PathLike

_PY = "tag:yaml.org,2002:python/"

#: Longest YAML text read (Detectron's cfg dumps are ~10 KB, its config files ~2 KB).
MAX_YAML_CHARS = 1 << 20
#: Deepest nesting of YAML collections (a cfg dump nests 4).
MAX_YAML_DEPTH = 64
#: Most nodes once aliases are expanded (a cfg dump has ~1,000; consumers walk every one).
MAX_YAML_NODES = 100_000
# numpy.dtype.__reduce__'s type code ('f8', '<f4'): nothing NumPy would parse as a comma string.
_DTYPE_STRING = re.compile(r"[<>=|]?[A-Za-z?][0-9]{0,3}")

# The AttrDict classes Detectron's dump names (both module paths, see load_cfg's _RENAMED_MODULES).
ATTRDICT_TAGS = (
    _PY + "object/new:detectron.utils.collections.AttrDict",
    _PY + "object/new:utils.collections.AttrDict",
)
# NumPy reconstruction functions, under NumPy 1.x (numpy.core) and 2.x (numpy._core) module paths.
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
RECONSTRUCT_TAGS = tuple(f"{_PY}object/apply:{m}._reconstruct" for m in _NUMPY_MODULES)
SCALAR_TAGS = tuple(f"{_PY}object/apply:{m}.scalar" for m in _NUMPY_MODULES)
DTYPE_TAG = _PY + "object/apply:numpy.dtype"
NDARRAY_NAME_TAG = _PY + "name:numpy.ndarray"


class _NDArrayClassMarker:
    """Stands for ``!!python/name:numpy.ndarray`` (the first argument of ``_reconstruct``)."""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


class _BoundedComposer:
    """Composer limits, before any Python value is constructed: nesting depth, expanded node count."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"collections nested deeper than {MAX_YAML_DEPTH}",
                                              self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _check_expanded(node)
        return node


def _check_expanded(root: yaml.Node) -> None:
    """Nodes and depth of the tree a consumer walks, each alias expanded: counted over the node graph,
    each node once (memo), so a billion-laughs text costs microseconds to refuse. A node that holds
    itself (``&a [*a]``) is refused too."""
    sizes: Dict[int, tuple] = {}
    active = set()

    def visit(node: yaml.Node) -> tuple:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                              node.start_mark)
        active.add(key)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        count, height = 1, 0
        for child in children:
            child_count, child_height = visit(child)
            count, height = count + child_count, max(height, child_height)
            if count > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_YAML_NODES:,} nodes once aliases are expanded", node.start_mark)
        if height + 1 > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"collections nested deeper than {MAX_YAML_DEPTH} once aliases are expanded",
                node.start_mark)
        active.discard(key)
        sizes[key] = (count, height + 1)
        return sizes[key]

    visit(root)


class ConfigYamlLoader(_BoundedComposer, yaml.SafeLoader):
    """PyYAML's safe loader with the limits of :class:`_BoundedComposer` (users' Detectron config files)."""


class DetectronCfgLoader(_BoundedComposer, yaml.SafeLoader):
    """SafeLoader plus the tags Detectron's ``yaml.dump(cfg)`` emits; nothing else."""


def _refuse(loader: DetectronCfgLoader, tag_suffix: str, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {_short_tag(node.tag)} is not one Detectron's cfg dump emits", node.start_mark
    )


def _refuse_unknown(loader: DetectronCfgLoader, node: yaml.Node) -> Any:
    return _refuse(loader, "", node)


def _construct_attrdict(loader: DetectronCfgLoader, node: yaml.Node) -> Dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "AttrDict node is not a mapping", node.start_mark)
    fields = loader.construct_mapping(node, deep=True)  # 'state' ({__immutable__: ...}) is checked, then dropped
    unknown = set(fields) - {"dictitems", "state"}
    if unknown:
        raise yaml.constructor.ConstructorError(
            None, None, f"AttrDict node has unexpected fields {sorted(unknown)}", node.start_mark
        )
    items = fields.get("dictitems") or {}
    if not isinstance(items, dict):
        raise yaml.constructor.ConstructorError(None, None, "AttrDict dictitems is not a mapping", node.start_mark)
    return dict(items)


def _construct_tuple(loader: DetectronCfgLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_str(loader: DetectronCfgLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))


def _construct_ndarray_name(loader: DetectronCfgLoader, node: yaml.Node) -> type:
    return _NDArrayClassMarker


def _apply_args(loader: DetectronCfgLoader, node: yaml.Node) -> Dict[str, Any]:
    """``!!python/object/apply`` nodes are either a sequence (args) or a mapping (args, state)."""
    if isinstance(node, yaml.SequenceNode):
        return {"args": loader.construct_sequence(node, deep=True)}
    return loader.construct_mapping(node, deep=True)


def _as_text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _construct_dtype(loader: DetectronCfgLoader, node: yaml.Node) -> np.dtype:
    # numpy.dtype.__reduce__: (dtype, (kind+size, align, copy), (version, byteorder, ...)).
    fields = _apply_args(loader, node)
    args = list(fields.get("args") or [])
    if not args or not isinstance(args[0], (str, bytes)) or not _DTYPE_STRING.fullmatch(_as_text(args[0])):
        raise yaml.constructor.ConstructorError(None, None, "numpy.dtype needs a type code such as 'f8'",
                                                node.start_mark)
    try:
        dtype = np.dtype(_as_text(args[0]))
    except (TypeError, ValueError, SyntaxError):
        raise yaml.constructor.ConstructorError(
            None, None, f"unknown numpy dtype {_as_text(args[0])!r}", node.start_mark) from None
    if dtype.kind not in "biufc":
        raise yaml.constructor.ConstructorError(
            None, None, f"numpy dtype {dtype} is not numeric", node.start_mark
        )
    state = fields.get("state")
    if isinstance(state, tuple) and len(state) > 1 and _as_text(state[1]) == ">":
        dtype = dtype.newbyteorder(">")
    return dtype


def _construct_scalar(loader: DetectronCfgLoader, node: yaml.Node) -> Any:
    # numpy.core.multiarray.scalar(dtype, raw bytes) -> a NumPy scalar; given back as a Python number.
    args = _apply_args(loader, node).get("args") or []
    if len(args) != 2 or not isinstance(args[0], np.dtype) or not isinstance(args[1], bytes):
        raise yaml.constructor.ConstructorError(None, None, "malformed numpy scalar", node.start_mark)
    dtype, raw = args
    if len(raw) != dtype.itemsize:
        raise yaml.constructor.ConstructorError(
            None, None, f"numpy scalar of {dtype} has {len(raw)} bytes", node.start_mark
        )
    return np.frombuffer(raw, dtype=dtype)[0].item()


def _construct_reconstruct(loader: DetectronCfgLoader, node: yaml.Node) -> np.ndarray:
    # ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b') then __setstate__((version, shape, dtype,
    # is_fortran, raw bytes)).
    fields = _apply_args(loader, node)
    args = list(fields.get("args") or [])
    state = fields.get("state")
    if not args or args[0] is not _NDArrayClassMarker:
        raise yaml.constructor.ConstructorError(
            None, None, "_reconstruct of something other than numpy.ndarray", node.start_mark
        )
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise yaml.constructor.ConstructorError(None, None, "malformed ndarray state", node.start_mark)
    shape, dtype, is_fortran, raw = state[-4:]
    if not isinstance(dtype, np.dtype) or not isinstance(raw, (bytes, str)):
        raise yaml.constructor.ConstructorError(None, None, "malformed ndarray state", node.start_mark)
    try:
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise yaml.constructor.ConstructorError(None, None, "malformed ndarray state", node.start_mark) from None
    nbytes = dtype.itemsize
    for size in shape:  # Python ints, stopped as soon as the shape needs more than the data has
        nbytes *= size
        if size < 0 or nbytes > len(raw):
            break
    if len(shape) > 32 or any(s < 0 for s in shape) or nbytes != len(raw):
        raise yaml.constructor.ConstructorError(
            None, None, f"ndarray data has {len(raw)} bytes, shape {shape} of {dtype} needs more", node.start_mark
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if is_fortran else "C")
    return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # own, writable, native-endian copy


for _tag in ATTRDICT_TAGS:
    DetectronCfgLoader.add_constructor(_tag, _construct_attrdict)
for _tag in RECONSTRUCT_TAGS:
    DetectronCfgLoader.add_constructor(_tag, _construct_reconstruct)
for _tag in SCALAR_TAGS:
    DetectronCfgLoader.add_constructor(_tag, _construct_scalar)
DetectronCfgLoader.add_constructor(DTYPE_TAG, _construct_dtype)
DetectronCfgLoader.add_constructor(NDARRAY_NAME_TAG, _construct_ndarray_name)
DetectronCfgLoader.add_constructor(_PY + "tuple", _construct_tuple)
DetectronCfgLoader.add_constructor(_PY + "unicode", _construct_str)
DetectronCfgLoader.add_constructor(_PY + "str", _construct_str)
DetectronCfgLoader.add_multi_constructor(_PY, _refuse)  # any other python/* tag
DetectronCfgLoader.add_constructor(None, _refuse_unknown)  # any other unknown tag


def _parse(text: str, loader: type, where: str, prefix: str) -> Any:
    """``yaml.load`` with ``loader``; every failure a one-line ConfigError naming ``where``."""
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{prefix}: {len(text):,} characters, more than any Detectron config "
                          f"(at most {MAX_YAML_CHARS:,} read)", where)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - both loaders are SafeLoaders
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{prefix}: {problem}{line}", where) from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A scalar YAML accepts that Python cannot build (int('9' * 5000), a 13th month), or an
        # unhashable mapping key from a Python tag.
        raise ConfigError(f"{prefix}: a value Python cannot build ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''})", where) from None


def load_config_yaml(text: str, source: Optional[PathLike] = None) -> Any:
    """A user's Detectron config file (plain YAML, PyYAML's safe loader, bounded); None when empty.

    Raises:
        ConfigError: ``not valid YAML: ...`` naming ``source`` (and the line where known).
    """
    return _parse(text, ConfigYamlLoader, "<yaml text>" if source is None else str(source), "not valid YAML")


def load_detectron_cfg_text(text: str, source: Optional[PathLike] = None) -> Dict[str, Any]:
    """Parse the cfg text Detectron embeds in a weight file, safely.

    Args:
        text: the YAML text (``model_final.pkl['cfg']``), as written by Python 2 or Python 3.
        source: the file the text came from, for error messages.

    Returns:
        The cfg tree as nested plain dicts. Tuples stay tuples, ``PIXEL_MEANS`` is a float64
        ndarray of shape (1, 1, 3), ``BBOX_XFORM_CLIP`` a Python float.

    Raises:
        ConfigError: the text is not YAML, is not a mapping, or uses a tag Detectron does not emit
            (the tag is named; nothing it names is ever imported or called).
    """
    where = f"{source}: embedded cfg" if source is not None else "embedded cfg"
    if isinstance(text, bytes):
        text = text.decode("latin1")
    if not isinstance(text, str):
        raise ConfigError(f"the cfg is a {type(text).__name__}, not YAML text", where)
    data = _parse(text, DetectronCfgLoader, where, "cannot read the cfg YAML")
    if not isinstance(data, dict):
        raise ConfigError(f"the cfg is a {type(data).__name__}, not a mapping of config keys", where)
    return data
