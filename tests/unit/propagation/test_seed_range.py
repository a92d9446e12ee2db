"""Where a seed download resumes: at N of ``Range: bytes=N-`` when ``If-Range`` names this very
file and N is inside it; any other range form, or none, is answered whole (#18: the range
parsing of ``propagation/routes.py`` survived the seed route's tests, which ask the forms a
gateway sends)."""

from __future__ import annotations

import pytest

from keyplane.propagation.routes import _resume_at

ETAG = '"0123abcd"'
SIZE = 1000


@pytest.mark.parametrize(
    ("range_header", "if_range", "start"),
    [
        ("bytes=100-", ETAG, 100),
        (" bytes = 100- ", ETAG, 100),
        ("bytes=999-", ETAG, 999),
        ("bytes=0-", ETAG, 0),
        ("bytes=1000-", ETAG, 0),  # nothing left to send: whole again
        ("bytes=100-", None, 0),  # no If-Range: the file may have changed
        ("bytes=100-", '"another file"', 0),
        (None, ETAG, 0),
        ("bytes=100-199", ETAG, 0),  # a closed range: not a form gateways ask for
        ("bytes=100", ETAG, 0),  # no dash
        ("items=100-", ETAG, 0),  # another unit
        ("bytes=-100", ETAG, 0),  # the last 100 bytes: a suffix range
        ("bytes=abc-", ETAG, 0),
        ("bytes=1-2-", ETAG, 0),
        ("bytes=100-,200-", ETAG, 0),  # several ranges
    ],
)
def test_only_an_open_byte_range_of_this_file_resumes(
    range_header: str | None, if_range: str | None, start: int
) -> None:
    assert _resume_at(range_header, if_range, ETAG, SIZE) == start
