"""beit3core.data.names.validate_name: a name from a source becomes exactly one path component, never a route
out of its folder (issue 16 §2)."""

import pytest

from beit3core.data.names import validate_name
from beit3core.errors import UserError


@pytest.mark.parametrize("name", ["train", "val2014", "test-dev", "n01440764", "über", "a b", "x.y", "..a"])
def test_plain_names_pass_unchanged(name):
    assert validate_name(name, what="splits") == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"),
    (".", "not a name"),
    ("..", "not a name"),
    ("../../../victim", "separator"),
    ("a/b", "separator"),
    ("a\\b", "separator"),
    ("/etc", "separator"),
    ("C:evil", "absolute"),
    ("tr\x00ain", "control"),
    ("tr\nain", "control"),
    ("tr\x7fain", "control"),
    ("caf\udce9", "not valid UTF-8"),
    ("train.tmp-1a2b", "reserved for temporary files"),
])
def test_unsafe_names_are_refused_naming_the_field(name, why):
    with pytest.raises(UserError, match=rf"^dataset.json: field 'splits': .*{why}"):
        validate_name(name, what="dataset.json: field 'splits'")


@pytest.mark.parametrize("name", [None, 3, ["train"], {"a": 1}, b"train"])
def test_non_strings_are_refused(name):
    with pytest.raises(UserError, match="^split: expected a name"):
        validate_name(name, what="split")
