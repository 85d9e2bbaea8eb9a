"""Build a whole data output folder locally, then publish it in one step (`beit3core.publish`).

Datasets hold thousands of small files; writing each one in place is slow and leaves a half-written folder
if the stage dies. A data stage (`import`, `synth`, `validate`) fills a local staging folder instead, and
`beit3core.publish` puts it in place whole, with its output record: one atomic swap locally, a new
generation plus a pointer switch on S3. OUT is replaced only when it is empty or this stage's own earlier
output; anything else there is refused and left untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from beit3core import publish


@contextlib.contextmanager
def staged_dir(uri: str, stage: str, *, extra: dict | None = None, flag: str = "OUT") -> Iterator[str]:
    """Yield a local folder; when the block succeeds its content replaces `uri` (the output of `beit3 <stage>`;
    `flag` names it in error lines)."""
    with publish.publish(uri, stage, extra=extra, flag=flag) as folder:
        yield folder
