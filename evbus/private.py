"""
Files that hold event bodies are private: the dead-letter store and the
durable spool are made 0600, in directories made 0700.

Directories that exist already are left as they are (``/tmp``, a home
directory: their modes are the user's choice). A file that exists with
wider permissions is tightened to 0600 when evbus opens it: it holds event
bodies, and it is evbus's (only a file the process owns is changed).

Only regular files are used: a device, a FIFO, a socket or a directory at
the path is refused (an ``OSError``) and its mode left as it is (made 0600,
``/dev/null`` would be so for every user of the system).

Modes are given when a file or directory is made (``os.open``,
``os.mkdir``), never through the umask: the umask is process-wide, and
changing it even briefly would race with every other thread that makes a file.
"""
import errno
import os
import pathlib
import stat

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: str | os.PathLike):
    """
    Make a directory and its missing parents, each 0700 (less what the umask
    takes); those that exist are left alone.

    :param path: The directory
    """
    missing = []
    directory = pathlib.Path(path)
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:  # made meanwhile by another thread or process
            pass


def open_fd(path: str | os.PathLike, flags: int, tighten_now: bool = True) -> int:
    """
    Open a private file: made 0600 (with ``os.O_CREAT`` in ``flags``), or
    tightened to 0600 when it exists with wider permissions.

    :param path: The file
    :param flags: ``os.open`` flags
    :param tighten_now: False: the caller tightens it (:func:`tighten`) once it
        knows the file is its own (a spool checks the file's header first)
    :return: The file descriptor
    :raises OSError: It cannot be opened, or it is no regular file
    """
    regular_or_missing(path)  # (a FIFO would make the open fail with ENXIO, a directory with EISDIR)
    # O_NONBLOCK: a FIFO made meanwhile is refused below instead of blocking the open (it
    # changes nothing for a regular file); O_NOCTTY: a terminal never becomes ours
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY, FILE_MODE)
    try:
        regular(os.fstat(fd))
        if tighten_now:
            tighten(fd)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(fd: int):
    """Make an open file 0600 when group or others may access it and the process owns it."""
    if _too_wide(os.fstat(fd)):
        os.fchmod(fd, FILE_MODE)


KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def regular(status: os.stat_result):
    """:raises OSError: The file is no regular file (saying what it is)"""
    if not stat.S_ISREG(status.st_mode):
        kind = KINDS.get(stat.S_IFMT(status.st_mode), "no regular file")
        raise OSError(errno.EINVAL, f"it is {kind}, not a regular file")


def regular_or_missing(path: str | os.PathLike):
    """:raises OSError: Something that is no regular file is at ``path`` (saying what it is)"""
    try:
        regular(os.stat(path))
    except FileNotFoundError:
        pass


def _too_wide(status: os.stat_result) -> bool:
    """Group or others may access the file, and the process owns it (may change its mode)."""
    return bool(status.st_mode & 0o077) and status.st_uid == os.geteuid()
