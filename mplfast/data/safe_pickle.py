"""A restricted unpickler for the CIFAR python batches: numpy arrays and plain containers only.

``pickle.load`` runs whatever callable a file names, so a doctored ``data_batch_1`` could run
code on the machine that opens it (torchvision reads these files with plain ``pickle.load``).
A CIFAR batch is a dict of bytes/str keys holding a list of ints (the labels), a list of
file names, a string, and one uint8 array; rebuilding that array is the only callable it
needs. :func:`restricted_loads` resolves exactly those names, each to a checking wrapper:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` (numpy 1.x
  and 2.x pickles, protocols 0-4), given ``numpy.ndarray`` (resolved to a marker, never
  called) and a simple dtype code; the array's contents then come from ``ndarray.__setstate__``,
  which checks the buffer length against the shape;
* ``numpy.dtype`` for bool/int/uint/float codes only (no object or void dtypes);
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (protocol 5);
* ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` for numeric scalars;
* ``_codecs.encode(str, "latin1")``, which Python 3 protocol-2 pickles use for ``bytes``.

Anything else, ``os.system`` or ``builtins.eval`` included, is refused before it is resolved.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from mplfast.errors import UserError

MAX_BYTES = 1 << 30   # the CIFAR-100 train file is 155 MB; a bigger "batch" is not one
_SIMPLE_KINDS = "biuf"


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` in a pickle: accepted by _reconstruct, never callable."""


_NDARRAY = _NdarrayMarker()


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("ascii")
    if isinstance(v, str):
        return v
    raise pickle.UnpicklingError(f"expected a dtype code, got {type(v).__name__}")


def _simple_dtype(v: Any) -> np.dtype:
    dt = v if isinstance(v, np.dtype) else np.dtype(_text(v))
    if dt.kind not in _SIMPLE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {dt} is not a plain numeric dtype")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's pickles always pass (ndarray, (0,), b'b'): an empty array that __setstate__ fills
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("only plain numpy arrays may be rebuilt")
    return np.ndarray((0,), dtype=_simple_dtype(dtype))


def _dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    return _simple_dtype(obj)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("malformed numpy buffer")
    return np.frombuffer(buf, dtype=_simple_dtype(dtype)).reshape(tuple(shape), order=order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dt = _simple_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dt)[0]


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): _encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list."""


class _Restricted(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler: its memo is a dict, while the C one grows an array to the
    largest memo index a file names (``LONG_BINPUT 2**31`` would zero-fill 16 GB); a CIFAR
    batch has few opcodes (one big string, the labels, the file names), so speed is the same."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def restricted_loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` resolving only the names in ``ALLOWED``; ``RefusedGlobal`` otherwise.

    ``encoding="bytes"`` reads Python 2 ``str`` objects (CIFAR's keys and file names) as bytes."""
    return _Restricted(io.BytesIO(data), encoding=encoding).load()


def load_file(path: str | os.PathLike[str], what: str) -> Any:
    """Read and restrictedly unpickle the file at ``path``; ``UserError`` (one line naming the
    file) if it is too big, names a callable outside the allow-list, or is not a pickle.
    ``what`` names the expected content for the message ("CIFAR-10 batch")."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise UserError(f"{path}: {size} bytes is too big for a {what}; refusing")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return restricted_loads(data)
    except RefusedGlobal as e:
        raise UserError(f"{path}: refusing to load this {what}: its pickle calls {e}, which a "
                        f"{what} never needs (a doctored or foreign file)") from None
    except MemoryError:
        raise UserError(f"{path}: not a readable {what} (it claims more memory than there is)") from None
    except Exception as e:  # noqa: BLE001 - any other failure: not a pickle we can read
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}"
                        f"{': ' + first if first else ''})") from None

