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

import errno
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
            # O_NONBLOCK: opening a FIFO for reading would wait for a writer
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            # Only a regular file can be a temporary. The lock must be ours,
            # and the name must still be this inode (a finished writer renames
            # its temporary away).
            if stat.S_ISREG(os.fstat(fd).st_mode) and _lock(fd, wait=False) \
                    and _names(full, fd):
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


def _target(path):
    """The file that saving to ``path`` replaces: ``path`` itself, or the file
    its symbolic links lead to (as ``open(path, "wb")`` writes there). Renaming
    over the link would turn it into a plain file and leave its target stale."""
    if path.endswith(tuple(filter(None, (os.sep, os.altsep)))) or os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a checkpoint is a file; this names a "
                                              "directory", path)
    target = os.path.realpath(path)
    if os.path.islink(target):       # realpath leaves a loop of links unresolved
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    return target


def write_atomically(path, write):
    """Replace ``path`` by a file that ``write(binary_file)`` fills.

    A symbolic link is followed: the file it leads to is replaced and the link
    kept. A file that exists must be writable (``PermissionError`` otherwise,
    as ``open`` gives); the new file gets its mode, else the umask's default.
    On any exception the temporary is removed and the file is untouched.
    Errors of the file system name ``path``, not the temporary.
    """
    target = _target(path)
    directory, name = os.path.split(target)
    prefix = _prefix(name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    # The rename needs only the directory's permission; open(path, "wb") would
    # refuse a file its user may not write, and so does a save.
    if mode is not None and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, "the checkpoint file is write-protected", path)
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
        os.replace(tmp, target)
    except BaseException as error:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, f"cannot write the checkpoint: {error.strerror}",
                          path) from error
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
