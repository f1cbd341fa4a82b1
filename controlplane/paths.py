"""Paths built from request fields stay inside their directory, symlinks included.

Why a helper of its own: a name check (`controlplane.rpc.check_name`) keeps '..' and 'a/b'
out, but not a symlink someone left in the image directory (``images/evil -> /``): the only
proof that a path is inside its directory is the path after ``os.path.realpath``. Every path
the node builds from a request (an image's directory, a volume's file, a live snapshot's
output and mirror target) is made with `confined`, which refuses with `errors.Invalid`
naming the request field, before anything is created.

What is left: a symlink planted *between* the check and the use (a race with someone who
can write the image directory) is not caught; qemu-img takes paths, not file descriptors.
"""

from __future__ import annotations

import os
from pathlib import Path

from controlplane import errors

__all__ = ["MAX_PATH", "check_absolute", "confined", "inside"]

MAX_PATH = 4096  # Linux's PATH_MAX


def inside(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, after realpath, is strictly below ``base`` after realpath."""
    root = os.path.realpath(base)
    resolved = os.path.realpath(path)
    return resolved != root and os.path.commonpath([root, resolved]) == root


def confined(base: str | os.PathLike[str], *parts: str, field: str) -> Path:
    """``base/part/...``: each part one path component, and the result and every directory
    on the way, symlinks resolved, strictly below ``base`` (itself resolved). Else
    `errors.Invalid` naming ``field``.

    Returned: the resolved directory joined with the last part as given, so a last part that
    is a symlink (pointing inside) is still that link: a caller that replaces a leftover
    file unlinks the link, not what it points to."""
    if not parts:
        raise ValueError("confined: no path components")
    for part in parts:
        if (not part or part in (".", "..") or "\0" in part or os.sep in part
                or (os.altsep and os.altsep in part)):
            raise errors.Invalid(f"{field} {errors.shown(part)} is not a file name (no '.', "
                                 "'..', separators or NUL)")
    root = os.path.realpath(base)
    parent = root
    for part in parts:  # every prefix strictly below base: a directory link to base is out
        path = os.path.join(parent, part)
        if not inside(root, path):
            raise errors.Invalid(f"{field} {errors.shown(os.path.join(*parts))} resolves "
                                 "outside its directory (a symlink leads out): refused")
        parent = os.path.realpath(path)
    return Path(path)


def check_absolute(path: str, field: str) -> str:
    """A path given whole by a caller that has no directory to confine it to (the agent's
    disks: the node built them inside its image directory): absolute, already normal (no
    '.' or '..' component, no '//'), no NUL, at most MAX_PATH characters. Else Invalid
    naming ``field``."""
    if len(path) > MAX_PATH:
        raise errors.Invalid(f"{field} is {len(path)} characters; the limit is {MAX_PATH}")
    if "\0" in path or not os.path.isabs(path) or os.path.normpath(path) != path \
            or path.startswith("//"):
        raise errors.Invalid(f"{field} {errors.shown(path)} must be an absolute, normal path "
                             "(no '.' or '..' components) without NUL")
    return path
