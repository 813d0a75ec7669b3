"""Atomic file replacement with short temporary names that a later save can clean.

A save writes ``.<first 32 characters of the name>-<10 hex digits of its
SHA-256>.<8 random hex digits>.tmp`` beside the target, fsyncs it, renames it
over the target and fsyncs the directory. The name stays under 60 characters
whatever the target's (any name the file system accepts can be saved), and
the digest ties a temporary to its target only.

A killed save leaves its temporary behind. The next save of the same target
removes such leftovers, and must not remove the temporary of a save still
running in another process (or thread). The writer therefore holds an
exclusive ``flock`` on its temporary from just after creating it until after
the rename; the cleaner removes a temporary only if it can take that lock
without waiting, which it can only once the writer has died (the kernel drops
a dead process's locks) or finished. A PID in the name would not do: PIDs are
reused, and on a shared file system they belong to other hosts. Where a file
system refuses the lock, nothing is cleaned and nothing live is at risk.
Without ``fcntl`` (Windows), leftovers are not cleaned.
"""

import hashlib
import os
import re
import secrets
import stat

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _prefix(name):
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:10]
    return f".{name[:32]}-{digest}."


def _lock(fd, wait):
    """Take the exclusive lock on ``fd``; False if another holder has it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def remove_stale(directory, prefix):
    """Remove the temporaries of ``prefix`` in ``directory`` that no writer holds."""
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{8}\.tmp")
    try:
        names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
    except OSError:
        return          # the save itself reports an unusable directory
    for name in names:
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            # The lock must be ours, and the name must still be this inode
            # (a finished writer renames its temporary away).
            if _lock(fd, wait=False) and _names(full, fd):
                os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def _names(path, fd):
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _create(directory, prefix, mode):
    """Create and lock a new temporary; returns its descriptor and path."""
    while True:
        tmp = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o666 if mode is None else mode)
        except FileExistsError:
            continue
        # A cleaner may have locked and removed the file between its creation
        # and our lock; then the name is gone (or another file's): start again.
        if _lock(fd, wait=True) and not _names(tmp, fd):
            os.close(fd)
            continue
        return fd, tmp


def write_atomically(path, write):
    """Replace ``path`` by a file that ``write(binary_file)`` fills.

    The new file gets ``path``'s mode if it exists, else the umask's default.
    On any exception the temporary is removed and ``path`` is untouched.
    Errors about the directory name ``path``, not the temporary.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _prefix(os.path.basename(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    remove_stale(directory, prefix)
    try:
        fd, tmp = _create(directory, prefix, mode)
    except OSError as error:
        raise OSError(error.errno, f"cannot create a checkpoint file: {error.strerror}",
                      path) from None
    try:
        if mode is not None:
            os.chmod(tmp, mode)          # exactly, whatever the umask stripped
        # closefd=False: closing any descriptor of the file would drop an
        # emulated (fcntl) lock, e.g. on NFS, before the rename.
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fcntl is None:
            os.close(fd)                 # Windows renames only closed files
            fd = None
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fd is not None:
        os.close(fd)                     # the lock is held until the rename is done
    _sync_directory(directory)


def _sync_directory(directory):
    """Make the rename itself durable; not possible on every platform."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
