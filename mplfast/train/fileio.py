"""Writing run outputs: atomic replacement with the user's normal file mode, and telling a
full or read-only disk apart from a bug.

Every file mplfast replaces (checkpoints, model files, exports, ``summary.json``, the
metrics log when a resume trims it, plots, ablation tables) goes through :func:`write_atomic`:
a temp file in the target's folder (same file system, so the rename is atomic), fsynced, then
``os.replace``-d over the target and the folder fsynced. A crash or a full disk at any moment
leaves the old file or the new one, never a torn one, and never a stray temp file.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; the file is given the
mode ``open()`` would have given it (0666 less the umask: 0644 under the usual 022) before the
rename, so an export is as readable as the JSON beside it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from typing import IO, Callable

# errors of the storage rather than of mplfast: no space, quota, read-only file system, no
# permission, file too large, I/O error (a failing or disconnected disk)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.EFBIG, errno.EIO, errno.ENOTDIR})


def _umask() -> int:
    # /proc/self/status reads it without changing it (os.umask can only be read by setting it,
    # which races with any other thread creating files)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def write_atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` atomically by what ``write(f)`` writes to a binary file object.

    On any failure (a full disk included) ``path`` is untouched and the temp file removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening directories
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_text_atomic(path: str, text: str) -> None:
    """:func:`write_atomic` of a UTF-8 text."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def storage_error(exc: BaseException) -> OSError | None:
    """The storage error behind ``exc``, if any: ``exc`` itself or an exception it was raised
    from or while handling (torch.save turns a failed write into a RuntimeError raised while
    handling the OSError), whose errno is in :data:`DISK_ERRNOS`."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None
