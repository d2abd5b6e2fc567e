"""Writing files so that a crash never leaves a half-written one: a temporary file in the same folder (a rename
within one filesystem is atomic; across filesystems it is a copy), fsynced, given the mode an ordinary new file
gets, then renamed over the target, and the folder fsynced so that the rename itself survives a power cut."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

TMP = ".tmp"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask (tools that write through mkstemp,
    safetensors among them, leave 0600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def finish_folder(folder: Path) -> None:
    """Every file in `folder` gets the ordinary mode and reaches the disk (before the folder is renamed)."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, dir_mode() if path.is_dir() else file_mode())
        if path.is_file():
            fsync_path(path)


def fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(
        OSError
    ):  # some filesystems refuse fsync on a folder; the rename is still atomic
        fsync_path(path)


def partial_name(path: Path) -> Path:
    """Where `atomic_write` writes before the rename: a hidden name that no reader looks for."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the whole file at `tmp`; then it replaces `path` in one step."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a folder; give the path of a file to write, e.g. {str(path / 'model.safetensors')!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and disk_full(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(path) from None
        raise
    fsync_dir(path.parent)
    return path


FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write failed for want of space: torch.save and safetensors raise their own error types
    (an 'unexpected pos' RuntimeError, a SafetensorError naming os error 28), so the folder's free space is
    read too, before the partial file is removed."""
    if isinstance(err, OSError) and err.errno in FULL:
        return True
    if "No space left" in str(err) or "os error 28" in str(err):
        return True
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


class DiskFull(OSError):
    """No space left (or the quota reached) while writing a file; the file it would have replaced is intact."""

    def __init__(self, path: Path) -> None:
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            errno.ENOSPC,
            f"no space left on the device while writing {str(path)!r} ({free} there); nothing was replaced: "
            "the file it would have replaced is as it was",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed writers left in `folder` (hidden `.NAME.PID.tmp` files); returns what went."""
    gone = []
    for stray in Path(folder).glob(f".*{TMP}"):
        if stray.is_file():
            stray.unlink(missing_ok=True)
            gone.append(stray)
    return gone
