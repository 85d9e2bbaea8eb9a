"""Names and links from untrusted sources: what keeps a crafted input inside its own folder.

A name read from `dataset.json` or an importer's source is joined onto a folder (`<root>/<split>.jsonl`,
`<out>/<dataset>/`). Unchecked, `"../../victim"` or `"/etc"` would make a stage read or write outside its
folder, so every such name passes `validate_name` before any path is built from it.

Symbolic links: a link inside a local source tree is followed only when its target stays inside that tree
(`inside_tree`); a link that leads out of it is never read through (importers do not copy it, readers and
packers do not read it). S3 has no links.
"""

from __future__ import annotations

import os
import unicodedata

from beit3core import io
from beit3core.errors import UserError

_SEPARATORS = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())


def validate_name(name: str, *, what: str) -> str:
    """Return `name` unchanged when it is safe as a single path component, else raise UserError(f"{what}: ...").

    Refused: non-strings, the empty string, `.` and `..`, any path separator (`/`, `\\`, os.sep), absolute
    paths (including Windows drive forms like `C:x`), NUL or other control characters (they truncate paths
    in C libraries and hide in logs), lone surrogates (file names that were not UTF-8; object stores refuse
    them) and the temporary-file mark `.tmp-` (listings skip such names)."""
    if not isinstance(name, str):
        raise UserError(f"{what}: expected a name (string), got {type(name).__name__}")
    if not name:
        raise UserError(f"{what}: empty name")
    if name in (".", ".."):
        raise UserError(f"{what}: {name!r} is not a name")
    if any(ch in name for ch in _SEPARATORS):
        raise UserError(f"{what}: {name!r} contains a path separator")
    if os.path.isabs(name) or (len(name) >= 2 and name[1] == ":" and name[0].isalpha()):
        raise UserError(f"{what}: {name!r} is an absolute path")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise UserError(f"{what}: {name!r} contains a control character")
    if any(unicodedata.category(ch) == "Cs" for ch in name):  # bytes that were not UTF-8 (surrogateescape)
        raise UserError(f"{what}: {name!a} is not valid UTF-8")
    if io.TMP_MARK in name:  # listings skip such names as unfinished temporary files: the data would vanish
        raise UserError(f"{what}: {name!r} contains {io.TMP_MARK!r}, reserved for temporary files")
    return name


class LinkOutside(UserError):
    """A symbolic link that leads out of the tree it was found in."""


def inside_tree(root: str, uri: str) -> bool:
    """True when the local file or folder `uri`, all links resolved, lies inside `root` (links resolved too).

    Always True for remote URIs (object stores have no links)."""
    if io.is_remote(uri) or io.is_remote(root):
        return True
    real_root = os.path.realpath(root)
    real = os.path.realpath(uri)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_inside(root: str, uri: str) -> str:
    """`uri`, or a UserError when a link takes it out of `root` (it is then not read)."""
    if not inside_tree(root, uri):
        raise LinkOutside(f"{uri}: a symbolic link to outside {root} (not followed)")
    return uri
