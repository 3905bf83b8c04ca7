import pytest

from dyn.grid import layers
from dyn.errors import UserError


@pytest.mark.parametrize("spec, expected", [
    ("First1", [(0, 0)]),
    ("Last1", [(11, 23)]),
    ("First1+Last1", [(0, 0), (11, 23)]),
    ("Last8", [(4 + i, 16 + i) for i in range(8)]),
    ("First2", [(0, 0), (1, 1)]),
    ("s0:t0,s11:t23", [(0, 0), (11, 23)]),
    ("s3:t7", [(3, 7)]),
    ("First1+s5:t10", [(0, 0), (5, 10)]),
    ("First1+First1", [(0, 0)]),
    ("none", []),
    ("", []),
])
def test_parse_deit_tiny_from_cait_s24(spec, expected):
    assert layers.parse(spec, 12, 24) == expected


def test_last_k_uses_each_models_own_end():
    assert layers.parse("Last2", 8, 12) == [(6, 10), (7, 11)]
    assert layers.parse("Last8", 8, 12) == [(i, 4 + i) for i in range(8)]


@pytest.mark.parametrize("spec", ["first1", "Last0", "Last", "Mid3", "s1-t2", "s1:t", "First1++Last1", "1", "s0:t0,",
                                  "First1,Last1"])
def test_bad_syntax_names_the_spec(spec):
    with pytest.raises(UserError) as error:
        layers.parse(spec, 12, 24)
    message = str(error.value)
    assert spec in message and "\n" not in message


@pytest.mark.parametrize("spec", ["Last13", "First25", "s12:t0", "s0:t24"])
def test_spec_that_does_not_fit_names_both_depths(spec):
    with pytest.raises(UserError) as error:
        layers.parse(spec, 12, 24)
    message = str(error.value)
    assert spec in message and "12" in message and "24" in message and "\n" not in message


def test_slug_is_file_name_safe():
    assert layers.slug("s0:t0,s11:t23") == "s0t0.s11t23"
    assert layers.slug("First1+Last1") == "First1+Last1"
    assert layers.slug("none") == "none"
