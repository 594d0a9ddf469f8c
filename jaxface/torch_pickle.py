"""Read PyTorch checkpoint files into numpy without importing torch.

jaxface converts published PyTorch weights (RetinaFace, BlazeFace, MobileNet
backbones) into Flax parameters.  Requiring torch just to read those files
would pull a very large dependency into every install, so this module parses
the two on-disk formats written by ``torch.save`` directly:

* the zip format (default since torch 1.6): ``<prefix>/data.pkl`` plus one
  raw little-endian record per storage under ``<prefix>/data/<key>``;
* the legacy format (``_use_new_zipfile_serialization=False`` and every file
  written by torch < 1.6): a stream of pickles - magic number, protocol
  version, sys info, the object, the list of storage keys - followed by the
  raw storages, each prefixed by its int64 little-endian element count.

Pickles can execute arbitrary code, so unpickling goes through an explicit
allow-list of globals; anything else is rejected with a ``ValueError`` before
it can be called.

Only numpy and the standard library are imported here.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Union

import numpy as np

__all__ = ["load_torch_file"]

PathLike = Union[str, "os.PathLike[str]"]

# First pickle of every legacy-format file and the protocol it announces.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _DType:
    """How one torch dtype is stored on disk and what numpy type it becomes."""

    name: str  # torch name, e.g. "float32"
    disk: np.dtype | None  # little-endian element layout; None = unsupported
    convert: Callable[[np.ndarray], np.ndarray] | None = None  # disk -> output

    @property
    def output(self) -> np.dtype:
        """The native-endian dtype handed to callers."""
        assert self.disk is not None
        if self.name == "bfloat16":
            return np.dtype(np.float32)
        if self.name == "complex32":
            return np.dtype(np.complex64)
        return self.disk.newbyteorder("=")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the upper half of an IEEE float32; widen by shifting.
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _c32_to_c64(raw: np.ndarray) -> np.ndarray:
    out = np.empty(raw.shape, np.complex64)
    out.real = raw["re"]
    out.imag = raw["im"]
    return out


_D = _DType
_DTYPES: dict[str, _DType] = {
    d.name: d
    for d in (
        _D("float64", np.dtype("<f8")),
        _D("float32", np.dtype("<f4")),
        _D("float16", np.dtype("<f2")),
        _D("bfloat16", np.dtype("<u2"), _bf16_to_f32),
        _D("int64", np.dtype("<i8")),
        _D("int32", np.dtype("<i4")),
        _D("int16", np.dtype("<i2")),
        _D("int8", np.dtype("i1")),
        _D("uint8", np.dtype("u1")),
        _D("uint16", np.dtype("<u2")),
        _D("uint32", np.dtype("<u4")),
        _D("uint64", np.dtype("<u8")),
        _D("bool", np.dtype("?")),
        _D("complex64", np.dtype("<c8")),
        _D("complex128", np.dtype("<c16")),
        _D("complex32", np.dtype([("re", "<f2"), ("im", "<f2")]), _c32_to_c64),
        # Known to torch but with no faithful numpy equivalent.
        _D("float8_e5m2", None),
        _D("float8_e4m3fn", None),
        _D("float8_e5m2fnuz", None),
        _D("float8_e4m3fnuz", None),
        _D("float8_e8m0fnu", None),
        _D("float4_e2m1fn_x2", None),
        _D("qint8", None),
        _D("qint32", None),
        _D("quint8", None),
        _D("quint4x2", None),
        _D("quint2x4", None),
    )
}
# torch also exposes its dtypes under these aliases (``torch.float`` ...).
_DTYPE_ALIASES = {
    "double": "float64",
    "float": "float32",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}
# Legacy storage classes (``torch.FloatStorage`` ...) carry the dtype.
_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    # Raw bytes; the tensor's dtype comes from _rebuild_tensor_v3.
    "UntypedStorage": "uint8",
}


class _TorchDtype(str):
    """A ``torch.<dtype>`` object found in a pickle, kept as its name.

    Subclassing ``str`` means a dtype stored as plain data (e.g. in a config
    dict) reaches the caller as the readable string ``"torch.float32"``.
    """

    spec: _DType


def _torch_dtype(name: str) -> _TorchDtype:
    spec = _DTYPES[_DTYPE_ALIASES.get(name, name)]
    obj = _TorchDtype(f"torch.{name}")
    obj.spec = spec
    return obj


@dataclass(frozen=True)
class _StorageClass:
    """Stand-in for ``torch.FloatStorage`` & co. inside persistent ids."""

    name: str
    dtype: _DType


class _TensorType:
    """Stand-in for ``torch.Tensor`` in ``_rebuild_from_type_v2``."""


class _ParameterType:
    """Stand-in for ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""


# --------------------------------------------------------------------------
# storages and tensors
# --------------------------------------------------------------------------


class _LoadError(ValueError):
    """A ValueError whose message already names the file."""


@dataclass(eq=False)
class _Storage:
    """One serialized storage; ``data`` is filled once its bytes are read."""

    key: str
    dtype: _DType  # element type the storage was written with
    nbytes: int
    data: bytes | None = None


@dataclass(eq=False)
class _StorageRef:
    """What a persistent id resolves to: a (possibly offset) storage window."""

    storage: _Storage
    byte_offset: int
    nbytes: int
    dtype: _DType


@dataclass(eq=False)
class _PendingTensor:
    """A tensor whose output array exists but whose bytes may not yet."""

    out: np.ndarray
    ref: _StorageRef
    dtype: _DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) for v in value
    ):
        raise TypeError(f"tensor {what} must be a sequence of ints, got {value!r}")
    return tuple(int(v) for v in value)


class _Loader:
    """State for reading one file: path for messages, storages, pending fills."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.storages: dict[str, _Storage] = {}
        self.pending: list[_PendingTensor] = []
        self.refs_made = 0
        self.refs_used: set[int] = set()

    def error(self, message: str) -> _LoadError:
        return _LoadError(f"{self.path}: {message}")

    # -- tensor rebuild functions (targets of allow-listed globals) --------

    def rebuild_tensor(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        dtype: _DType | None = None,
    ) -> np.ndarray:
        """Allocate the output array now; its values are copied in finish()."""
        if not isinstance(storage, _StorageRef):
            raise self.error(f"tensor storage is {type(storage).__name__}, not a storage")
        dtype = dtype or storage.dtype
        if dtype.disk is None:
            raise self.error(f"tensors of dtype torch.{dtype.name} are not supported")
        shape = _as_int_tuple(size, "size")
        strides = _as_int_tuple(stride, "stride")
        if not isinstance(storage_offset, int):
            raise self.error(f"tensor storage offset {storage_offset!r} is not an int")
        if len(shape) != len(strides):
            raise self.error(f"tensor size {shape} and stride {strides} differ in rank")
        if storage_offset < 0 or min(shape + strides, default=0) < 0:
            raise self.error(
                f"negative size/stride/offset in tensor: size={shape} "
                f"stride={strides} offset={storage_offset}"
            )
        # Bounds check up front: as_strided would otherwise read past the buffer.
        if all(shape):
            last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
            available = storage.nbytes // dtype.disk.itemsize
            if last >= available:
                raise self.error(
                    f"tensor size={shape} stride={strides} offset={storage_offset} "
                    f"reaches element {last} of a storage holding {available}"
                )
        out = np.empty(shape, dtype=dtype.output)
        self.refs_used.add(id(storage))
        self.pending.append(
            _PendingTensor(out, storage, dtype, storage_offset, shape, strides)
        )
        return out

    def rebuild_tensor_v1(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        return self.rebuild_tensor(storage, offset, size, stride)

    def rebuild_tensor_v2(
        self, storage: Any, offset: Any, size: Any, stride: Any,
        requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None,
    ) -> np.ndarray:
        return self.rebuild_tensor(storage, offset, size, stride)

    def rebuild_tensor_v3(
        self, storage: Any, offset: Any, size: Any, stride: Any,
        requires_grad: Any, backward_hooks: Any, dtype: Any, metadata: Any = None,
    ) -> np.ndarray:
        if not isinstance(dtype, _TorchDtype):
            raise self.error(f"_rebuild_tensor_v3 got dtype {dtype!r}, not a torch dtype")
        return self.rebuild_tensor(storage, offset, size, stride, dtype.spec)

    def rebuild_parameter(
        self, data: Any, requires_grad: Any = False, backward_hooks: Any = None,
        state: Any = None,
    ) -> np.ndarray:
        """A Parameter is just its data here; requires_grad and state are dropped."""
        if not isinstance(data, np.ndarray):
            raise self.error(f"parameter data is {type(data).__name__}, not a tensor")
        return data

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """Tensors carrying Python attributes: rebuild the plain tensor only."""
        allowed = {self.rebuild_tensor_v1, self.rebuild_tensor_v2,
                   self.rebuild_tensor_v3, self.rebuild_parameter}
        if func not in allowed or new_type not in (_TensorType, _ParameterType):
            raise self.error(f"unsupported tensor subclass rebuild {func!r}, {new_type!r}")
        return func(*args)

    # -- persistent ids ----------------------------------------------------

    def storage_ref(self, saved_id: Any, legacy: bool) -> _StorageRef:
        """Turn a ``('storage', type, key, location, numel[, view])`` id into a ref."""
        if not isinstance(saved_id, tuple) or not saved_id:
            raise self.error(f"malformed persistent id {saved_id!r}")
        typename = _decode(saved_id[0])
        if typename == "module":
            raise self.error(
                "the file pickles a whole nn.Module (persistent id 'module'); "
                "only state_dicts and plain containers are supported"
            )
        expected = 6 if legacy else 5
        if typename != "storage" or len(saved_id) != expected:
            raise self.error(f"unsupported persistent id {saved_id!r}")
        storage_cls, key, _location, numel = saved_id[1:5]
        view = saved_id[5] if legacy else None
        if not isinstance(storage_cls, _StorageClass):
            raise self.error(f"persistent id names {storage_cls!r}, not a storage class")
        if not isinstance(numel, int) or numel < 0:
            raise self.error(f"bad storage size {numel!r}")
        key = _decode(key)
        dtype = storage_cls.dtype
        itemsize = dtype.disk.itemsize if dtype.disk is not None else 1
        storage = self.storages.get(key)
        if storage is None:
            storage = _Storage(key, dtype, numel * itemsize)
            self.storages[key] = storage
        ref = _StorageRef(storage, 0, numel * itemsize, dtype)
        if view is not None:
            # Pre-1.0 storage views: (view_key, element offset, element count).
            _view_key, offset, view_size = view
            ref = _StorageRef(storage, offset * itemsize, view_size * itemsize, dtype)
        if ref.byte_offset < 0 or ref.byte_offset + ref.nbytes > storage.nbytes:
            raise self.error(f"storage view {view!r} lies outside storage {key!r}")
        self.refs_made += 1
        return ref

    # -- finishing ---------------------------------------------------------

    def finish(self, obj: Any) -> Any:
        """Copy storage bytes into every pending tensor; convert bare storages."""
        for t in self.pending:
            out = t.out
            if out.size == 0:
                continue
            view = self._strided_view(t.ref, t.dtype, t.offset, t.shape, t.stride)
            out[...] = t.dtype.convert(view) if t.dtype.convert else view
        self.pending.clear()
        if self.refs_made != len(self.refs_used):
            # Some storage was pickled on its own rather than inside a tensor.
            obj = self._replace_bare_storages(obj)
        return obj

    def _buffer(self, ref: _StorageRef) -> bytes:
        data = ref.storage.data
        if data is None:
            raise self.error(f"no data was found for storage {ref.storage.key!r}")
        if len(data) < ref.storage.nbytes:
            raise self.error(
                f"storage {ref.storage.key!r} holds {len(data)} bytes, expected "
                f"{ref.storage.nbytes} (file truncated?)"
            )
        return data

    def _strided_view(
        self, ref: _StorageRef, dtype: _DType, offset: int,
        shape: tuple[int, ...], stride: tuple[int, ...],
    ) -> np.ndarray:
        assert dtype.disk is not None
        itemsize = dtype.disk.itemsize
        flat = np.frombuffer(
            self._buffer(ref), dtype=dtype.disk,
            count=ref.nbytes // itemsize, offset=ref.byte_offset,
        )
        return np.lib.stride_tricks.as_strided(
            flat[offset:], shape=shape,
            strides=tuple(s * itemsize for s in stride), writeable=False,
        )

    def _storage_array(self, ref: _StorageRef) -> np.ndarray:
        dtype = ref.dtype
        if dtype.disk is None:
            raise self.error(f"storages of dtype torch.{dtype.name} are not supported")
        n = ref.nbytes // dtype.disk.itemsize
        view = self._strided_view(ref, dtype, 0, (n,), (1,))
        return dtype.convert(view) if dtype.convert else view.astype(dtype.output)

    def _replace_bare_storages(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return self._storage_array(obj)
        if isinstance(obj, dict):
            for k, v in obj.items():
                obj[k] = self._replace_bare_storages(v)
        elif isinstance(obj, list):
            obj[:] = [self._replace_bare_storages(v) for v in obj]
        elif type(obj) is tuple:
            obj = tuple(self._replace_bare_storages(v) for v in obj)
        return obj


def _decode(value: Any) -> str:
    """Python-2 era pickles may hold ids and keys as bytes."""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


# --------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------


def _torch_device(*args: Any) -> str:
    """``torch.device('cuda', 0)`` -> ``'cuda:0'``; device is informational only."""
    if len(args) == 2 and args[1] is not None:
        return f"{args[0]}:{args[1]}"
    return str(args[0])


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Take the reconstructors from numpy objects themselves so that this works
    # for numpy 1 (numpy.core) and 2 (numpy._core) without deprecated imports.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                         ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = reconstruct
        table[(mod, "scalar")] = scalar
    return table


_NUMPY_GLOBALS = _numpy_globals()


def _allowed_globals(loader: _Loader) -> dict[tuple[str, str], Any]:
    """The complete list of globals a checkpoint may reference."""
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): loader.rebuild_tensor_v1,
        ("torch._utils", "_rebuild_tensor_v2"): loader.rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): loader.rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): loader.rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): loader.rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): loader.rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType,
        ("torch.nn.parameter", "Parameter"): _ParameterType,
        ("torch", "Size"): tuple,
        ("torch", "device"): _torch_device,
        ("_codecs", "encode"): _latin1_encode,
        **_NUMPY_GLOBALS,
    }
    for builtins_mod in ("builtins", "__builtin__"):
        for name, value in (("set", set), ("frozenset", frozenset),
                            ("complex", complex), ("slice", slice),
                            ("bytearray", bytearray)):
            table[(builtins_mod, name)] = value
    for name in list(_DTYPES) + list(_DTYPE_ALIASES):
        table[("torch", name)] = _torch_dtype(name)
    for cls_name, dtype_name in _STORAGE_CLASSES.items():
        storage_cls = _StorageClass(cls_name, _DTYPES[dtype_name])
        for mod in ("torch", "torch.cuda", "torch.storage"):
            table[(mod, cls_name)] = storage_cls
    return table


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``."""
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected bytes encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storages."""

    def __init__(self, file: BinaryIO, loader: _Loader, legacy: bool) -> None:
        super().__init__(file, encoding="utf-8")
        self._loader = loader
        self._legacy = legacy
        self._globals = _allowed_globals(loader)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise self._loader.error(
                f"refusing to load disallowed global '{module}.{name}'; only "
                "tensors, parameters and plain containers can be read without "
                "executing code from the file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        return self._loader.storage_ref(pid, self._legacy)


# --------------------------------------------------------------------------
# the two file formats
# --------------------------------------------------------------------------


def _load_zip(path: str, loader: _Loader) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if not names:
            raise loader.error("empty zip archive; expected a torch.save checkpoint")
        # torch.save puts every record under one top-level folder.
        prefix = names[0].split("/", 1)[0]
        pkl = f"{prefix}/data.pkl"
        if pkl not in names:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise loader.error("this is a TorchScript archive (torch.jit.save), "
                                   "not a torch.save checkpoint")
            raise loader.error(f"zip archive has no '{pkl}'; expected a torch.save checkpoint")
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = zf.read(f"{prefix}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise loader.error(f"unknown byteorder record {byteorder!r}")
        pickled = io.BytesIO(zf.read(pkl))
        obj = _RestrictedUnpickler(pickled, loader, legacy=False).load()
        for key, storage in loader.storages.items():
            record = f"{prefix}/data/{key}"
            if record not in names:
                raise loader.error(f"zip archive lacks storage record '{record}'")
            data = zf.read(record)
            if byteorder == "big" and storage.dtype.disk is not None:
                data = _byteswap(data, storage.dtype.disk)
            storage.data = data
    return loader.finish(obj)


def _byteswap(data: bytes, disk: np.dtype) -> bytes:
    """Big-endian zip checkpoints: reorder bytes into the little-endian layout."""
    if disk.fields:  # complex32: swap each float16 half
        disk = np.dtype("<f2")
    if disk.itemsize == 1 or len(data) % disk.itemsize:
        return data
    return np.frombuffer(data, disk.newbyteorder(">")).astype(disk).tobytes()


def _load_legacy(path: str, loader: _Loader) -> Any:
    with open(path, "rb") as fh:
        def header() -> Any:
            return _RestrictedUnpickler(fh, loader, legacy=True).load()

        magic = header()
        if magic != _LEGACY_MAGIC:
            raise loader.error("pickle file is not a torch checkpoint "
                               "(first pickle is not the torch magic number)")
        version = header()
        if version != _LEGACY_PROTOCOL:
            raise loader.error(f"unsupported legacy torch protocol version {version!r}")
        header()  # sys_info; storages are little-endian whatever it says
        obj = _RestrictedUnpickler(fh, loader, legacy=True).load()
        keys = header()
        if not isinstance(keys, list):
            raise loader.error(f"expected the list of storage keys, got {type(keys).__name__}")
        for raw_key in keys:
            key = _decode(raw_key)
            storage = loader.storages.get(key)
            if storage is None:
                raise loader.error(f"storage {key!r} is listed but never referenced")
            head = fh.read(8)
            if len(head) != 8:
                raise loader.error(f"file ends before storage {key!r} (truncated?)")
            (count,) = struct.unpack("<q", head)
            itemsize = storage.dtype.disk.itemsize if storage.dtype.disk is not None else 1
            if count < 0:
                raise loader.error(f"negative size for storage {key!r}")
            data = fh.read(count * itemsize)
            if len(data) != count * itemsize:
                raise loader.error(f"file ends inside storage {key!r} (truncated?)")
            storage.data = data
    return loader.finish(obj)


_EXPECTED = ("expected a torch.save checkpoint: a zip archive (torch >= 1.6) "
             "or the legacy pickle format")


def load_torch_file(path: PathLike) -> Any:
    """Load a ``torch.save`` file with every tensor as a ``numpy.ndarray``.

    Containers (dict, OrderedDict, list, tuple) and plain Python values come
    back as they were saved.  Tensors and ``nn.Parameter``s become C-contiguous
    arrays that own their memory (non-contiguous views and tensors sharing a
    storage are copied out, so mutating one never affects another).
    ``requires_grad``, hooks and Python attributes on tensors are dropped.

    numpy has no bfloat16, so bfloat16 tensors are widened (exactly) to
    float32; complex32 likewise becomes complex64.  Devices are ignored: CUDA
    tensors load onto the host.  ``torch.dtype`` and ``torch.device`` values
    stored as data become strings such as ``"torch.float32"`` and ``"cuda:0"``.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (naming
    the path) for anything that is not a readable checkpoint, including files
    that reference globals outside the allow-list - e.g. a whole pickled
    ``nn.Module`` or a malicious ``os.system`` call.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file ({_EXPECTED})")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a regular file ({_EXPECTED})")
    with open(path, "rb") as fh:
        head = fh.read(4)

    loader = _Loader(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, loader)
        if head.startswith(b"PK"):
            raise loader.error(f"truncated or corrupt zip archive ({_EXPECTED})")
        if head[:1] == b"\x80":  # pickle PROTO opcode
            return _load_legacy(path, loader)
        if not head:
            raise loader.error(f"file is empty ({_EXPECTED})")
        if tarfile.is_tarfile(path):
            raise loader.error(
                "file is a tar archive; the pre-0.4 torch tar format and other "
                f"archives are not supported ({_EXPECTED})")
        raise loader.error(f"unrecognised file contents ({_EXPECTED})")
    except _LoadError:
        raise
    except EOFError as exc:
        raise ValueError(f"{path}: file ends unexpectedly (truncated?)") from exc
    except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error,
            struct.error, UnicodeDecodeError, TypeError, AttributeError,
            IndexError, KeyError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"{path}: corrupt or unsupported checkpoint "
            f"({type(exc).__name__}: {exc})") from exc
