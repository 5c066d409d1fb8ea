"""Writing an output file without ever destroying something that is not one.

Every option of earlymm that writes a file (``boot --save-core``, gdb's ``earlymm-ptdump --output``, the
capture tool's files and fixtures) goes through here, so they all behave alike:

* The target must be a regular file or not exist yet. A device (``/dev/full``), FIFO, socket or
  directory is refused, never replaced. A **symbolic link is refused** too, whatever it points at:
  the file appears where the user said, never somewhere a link leads (a planted link in a shared
  directory cannot redirect a root-owned write).
* An empty path, or one ending in ``/``, names no file: refused.
* The bytes go to a new temporary file beside the target, are flushed and fsync'ed, and only then
  renamed over it: a reader sees the old file or the new one, never half of one. Any error — a full
  disk (ENOSPC), a quota, an I/O error, an exception from the producer — removes the temporary file
  and leaves the target as it was.
* A new file gets ``0666`` less the umask, like any file a shell redirection creates; a replaced
  regular file keeps its permission bits.

Every refusal is a ``WriteError`` whose message is one line naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
SYMLINK_POLICY = "symbolic links are refused, not followed"


class WriteError(Exception):
    """An output file cannot or must not be written; the message is one line."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """'a FIFO', 'a directory', … for an ``st_mode`` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_target(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Raise ``WriteError`` unless ``path`` may be written: a regular file or nothing, in an existing
    directory. Call it before long work, so bad output paths fail at once; ``write_atomically``
    checks again just before it renames."""
    text = os.fspath(path)
    if not text:
        raise WriteError(f"empty {what} path")
    if "\0" in text:
        raise WriteError(f"{what} path {text!r} contains a NUL byte")
    if text.endswith(os.sep) or text.endswith("/."):
        raise WriteError(f"{what} {text!r} names a directory, not a file")
    p = Path(text)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise WriteError(f"cannot write {what} {text}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise WriteError(f"refusing to write {what} {text}: it is {kind_of(st.st_mode)}, not a regular file "
                         f"({SYMLINK_POLICY})" if stat.S_ISLNK(st.st_mode) else
                         f"refusing to write {what} {text}: it is {kind_of(st.st_mode)}, not a regular file")
    parent = p.parent
    try:
        pst = os.stat(parent)
    except OSError as e:
        raise WriteError(f"cannot write {what} {text}: directory {parent}: {e.strerror or e}") from None
    if not stat.S_ISDIR(pst.st_mode):
        raise WriteError(f"cannot write {what} {text}: {parent} is not a directory")
    return p


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device (nothing was written)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded (nothing was written)"
    return f"{e.strerror or e} (nothing was written)"


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[tuple[int, Path]]:
    """A new, empty file in the target's directory (0666 less the umask); removed unless renamed."""
    import secrets  # only when a file is written (hashlib's start-up cost)

    for _ in range(16):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 16 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))
    try:
        yield fd, tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomically(path: str | os.PathLike[str], produce: Callable[[BinaryIO], None],
                     what: str = "output file") -> None:
    """Create or replace the regular file ``path`` with what ``produce`` writes to the binary stream it
    is given. Raises ``WriteError`` (one line) on a refused target or any ``OSError`` — the stream's
    writes inside ``produce`` included (ENOSPC mid-way) —, leaving no temporary file and the old target
    untouched; any other exception from ``produce`` propagates, with the same clean-up."""
    target = check_target(path, what)
    try:
        old = os.lstat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise WriteError(f"cannot write {what} {target}: {_describe(e)}") from None
    if old is not None and not os.access(target, os.W_OK):
        # the rename could replace it anyway; a file its owner made read-only is not ours to replace
        raise WriteError(f"cannot write {what} {target}: the file is read-only (nothing was written)")
    try:
        with _temp_beside(target) as (fd, tmp):
            with os.fdopen(fd, "wb") as out:
                produce(out)
                out.flush()
                os.fsync(out.fileno())
                if old is not None:
                    os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode))
            # The target may have changed while we wrote: check it again right before the rename.
            check_target(target, what)
            os.replace(tmp, target)
    except OSError as e:
        raise WriteError(f"cannot write {what} {target}: {_describe(e)}") from None


def write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "output file") -> None:
    def produce(out: BinaryIO) -> None:
        out.write(data)

    write_atomically(path, produce, what)


def write_text(path: str | os.PathLike[str], text: str, what: str = "output file") -> None:
    write_bytes(path, text.encode("utf-8"), what)


def ensure_directory(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``path`` (and its parents) if missing; refuse anything there that is not a directory
    (a symbolic link to one is accepted: directories are not replaced, only written into)."""
    text = os.fspath(path)
    if not text:
        raise WriteError(f"empty {what} path")
    if "\0" in text:
        raise WriteError(f"{what} path {text!r} contains a NUL byte")
    p = Path(text)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise WriteError(f"cannot create {what} {text}: {e.strerror or e}") from None
    try:
        st = os.stat(p)
    except OSError as e:
        raise WriteError(f"cannot use {what} {text}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{what} {text} is {kind_of(st.st_mode)}, not a directory")
    return p
