"""Atomic writes (a file either appears complete or not at all, so a killed job leaves no half output),
and the one safetensors reader/writer every checkpoint, plugin and header goes through.

Everything is written to a temporary sibling and renamed into place (rename is atomic on POSIX
within one file system), which is also what makes Snakemake's rerun-after-kill safe. The temporary
file is created private (mkstemp's 0600) and given the mode a plain `open()` would have produced
(0666 minus the umask) just before the rename, so outputs on a shared cluster stay readable by the
group when the umask says so.

A killed write leaves its temporary (`.NAME.XXXXXXXX.tmp`); the next write of the same output removes it
(`clean_temporaries`). A writer holds an flock on its temporary while it writes, so only the temporaries of
dead writers go, and never a file that is not one of that output's temporaries. A write that fails removes
the folders it created for its output; a write that fails because the file system is full says so
(OSError ENOSPC), whatever the library writing the file raised.

Torch-free on purpose: the report scripts use these helpers without importing models or engines
(safetensors and torch are imported inside the functions that need them).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from functools import lru_cache
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import TocomError


def _umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a new file gets from open(): 0o666 minus the umask."""
    return 0o666 & ~_umask()


def _temporary(path: Path) -> dict:
    """mkstemp/mkdtemp arguments for a temporary beside `path` (`clean_temporaries` recognises the names)."""
    return {"prefix": f".{path.name}.", "suffix": ".tmp", "dir": path.parent}


def clean_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes of `path` left beside it (files or folders named
    `.NAME.XXXXXXXX.tmp`, no live writer holding their lock; never a symlink); returns what it removed."""
    path = Path(path)
    pattern, removed = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp"), []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name) or entry.is_symlink():
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # raises when a live writer holds it
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.insert(0, folder)
        folder = folder.parent
    if missing:
        missing[-1].mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _no_space_left(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _raise_named(e: Exception, path: Path) -> None:
    """Why a write of `path` failed, naming it: torch.save says "unexpected pos" and safetensors "os error 28" on a
    full file system (ENOSPC then), a plain write's OSError has no file name."""
    if not isinstance(e, OSError) and _no_space_left(path.parent):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
    if isinstance(e, OSError) and e.errno and not e.filename:
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    created = _make_parents(path.parent)
    clean_temporaries(path)
    fd, tmp = tempfile.mkstemp(**_temporary(path))
    fcntl.flock(fd, fcntl.LOCK_EX)        # held while this write runs: clean_temporaries leaves the file alone
    tmp, done = Path(tmp), False
    try:
        try:
            yield tmp
            os.chmod(tmp, default_mode())
            os.replace(tmp, path)
            done = True
        except Exception as e:
            _raise_named(e, path)
            raise
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)
        if not done:
            _remove_empty(created)


def _reserve(path: Path) -> str:
    fd, name = tempfile.mkstemp(**_temporary(path))
    os.close(fd)
    return name


@contextmanager
def atomic_folder(path: str | Path, may_replace: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; when the block succeeds it becomes `path`, replacing what
    is there only if `may_replace(path)` says so (else TocomError, and the folder is dropped). A killed run
    leaves at most temporaries that `clean_temporaries(path)` removes."""
    path = Path(path)
    created = _make_parents(path.parent)
    clean_temporaries(path)
    tmp = Path(tempfile.mkdtemp(**_temporary(path)))
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = False
    try:
        try:
            yield tmp
        except Exception as e:
            _raise_named(e, path)
            raise
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.lexists(path):
            if not may_replace(path):
                raise TocomError(f"{path} exists and was not written by this step; move it away or write elsewhere")
            # moved aside under a temporary's name (what a folder can be renamed onto: an empty folder), then dropped
            folder = path.is_dir() and not path.is_symlink()
            old = tempfile.mkdtemp(**_temporary(path)) if folder else _reserve(path)
            os.replace(path, old)
            os.replace(tmp, path)
            if folder:
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
        else:
            os.replace(tmp, path)
        done = True
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
        os.close(fd)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(df, path: str | Path, index: bool = False) -> None:
    """A pandas DataFrame as CSV."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def write_json(obj, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def save_figure(fig, path: str | Path, **kwargs) -> None:
    """A matplotlib figure; the format comes from `path`'s suffix (the temporary file has another)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


# ---- content digests: what lineage records and compares ---------------------------------------------------
def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, streamed in 1 MiB blocks; remembered per (inode, size, mtime), so a
    checkpoint named several times in one command is read once."""
    st = os.stat(path)
    return _digest(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- safetensors: every checkpoint, plugin and Segmenter file, and the headers the aggregation reads --------
def write_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """Torch tensors as safetensors, atomically and byte-reproducibly; a metadata value that is not a string is
    stored as JSON (sorted keys), so a header field holds a whole record (read it back with `header_json`).

    The safetensors library writes the header's keys in a hash order that changes from call to call, so the
    same tensors and metadata gave different bytes (and digests); `_sorted_header` rewrites the header with
    sorted keys, which makes identical content an identical file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        _sorted_header(tmp)


def _sorted_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, compact, space-padded to a multiple of 8 bytes
    (as the format's writer pads it). The tensor bytes stay as they are: their offsets count from the header's
    end. The sorted header is as long as the library's (the same keys and values, reordered), so it is written
    over it in place; should the lengths ever differ, the file is rewritten."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    if len(text) == n:
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(text)
        return
    rewritten = path.with_name(path.name + ".sorted")
    with open(path, "rb") as src, open(rewritten, "wb") as dst:
        src.seek(8 + n)
        dst.write(struct.pack("<Q", len(text)) + text)
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(rewritten, path)


def _unreadable(path, e: Exception, fix: str) -> TocomError:
    return TocomError(" ".join(f"{path} is not a readable safetensors file ({e}); {fix}".split()))


def read_safetensors_header(path: str | Path, fix: str = "re-run the step that wrote it") -> tuple[dict, dict]:
    """(metadata, {tensor name: shape}) of a safetensors file, without loading a tensor (numpy framework:
    no torch needed); a damaged file is one TocomError line ending in `fix`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {}), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for a damaged file)
        raise _unreadable(path, e, fix) from None


def read_safetensors(path: str | Path, fix: str = "re-run the step that wrote it") -> dict:
    """All tensors of a safetensors file (torch), or one TocomError line ending in `fix`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, e, fix) from None


def header_json(path: str | Path, metadata: dict, key: str, what: str, fix: str) -> dict | None:
    """The JSON object a header stores under `key` (None when absent); `what` names it in the one-line
    error ("tocom header", "plugin header's 'extra'") that ends in `fix`."""
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except ValueError as e:
        raise TocomError(f"{path}: its {what} is not valid JSON ({e}); {fix}") from None
    if not isinstance(value, dict):
        raise TocomError(f"{path}: its {what} is a JSON {type(value).__name__}, not an object; {fix}")
    return value
