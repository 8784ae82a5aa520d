"""
Files that hold event bodies are private: the dead-letter store and the
durable spool are made 0600, in directories made 0700.

Directories that exist already are left as they are (``/tmp``, a home
directory: their modes are the user's choice). A file that exists with
wider permissions is tightened to 0600 when evbus opens it: it holds event
bodies, and it is evbus's (only a file the process owns is changed).

Modes are given when a file or directory is made (``os.open``,
``os.mkdir``), never through the umask: the umask is process-wide, and
changing it even briefly would race with every other thread that makes a file.
"""
import os
import pathlib

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


def open_fd(path: str | os.PathLike, flags: int) -> int:
    """
    Open a private file: made 0600 (with ``os.O_CREAT`` in ``flags``), or
    tightened to 0600 when it exists with wider permissions.

    :param path: The file
    :param flags: ``os.open`` flags
    :return: The file descriptor
    """
    fd = os.open(path, flags, FILE_MODE)
    try:
        if _too_wide(os.fstat(fd)):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: str | os.PathLike):
    """
    Tighten an existing file to 0600 when it has wider permissions; a
    missing file is fine. By path, without opening it: closing a descriptor
    of a file drops every POSIX lock the process holds on it (SQLite's).

    :param path: The file
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return
    if _too_wide(status):
        os.chmod(path, FILE_MODE)


def _too_wide(status: os.stat_result) -> bool:
    """Group or others may access the file, and the process owns it (may change its mode)."""
    return bool(status.st_mode & 0o077) and status.st_uid == os.geteuid()
