"""The SQL blocks' named parameters (``secretmirror.queries``): unit tests, no I/O."""

from __future__ import annotations

import pytest

from secretmirror.queries import Q, _numbered


def test_named_parameters_are_numbered_in_order_of_first_use() -> None:
    """Each name becomes one $n, the same $n wherever it appears again."""
    assert _numbered("t", "SELECT $b, $a WHERE x = $b") == (
        "SELECT $1, $2 WHERE x = $1",
        ("b", "a"),
    )


def test_args_put_the_values_in_dollar_order() -> None:
    """``Q.args`` takes keywords in any order and gives them back in the block's $n order."""
    names = Q.params(Q.delivery_fail)
    values = {name: f"value of {name}" for name in reversed(names)}
    assert Q.args(Q.delivery_fail, **values) == tuple(f"value of {n}" for n in names)
    assert len(names) == 9
    assert "$9" in Q.delivery_fail


def test_args_refuse_a_missing_or_unknown_name() -> None:
    """A typo in a parameter name fails before the statement is sent."""
    with pytest.raises(TypeError, match=r"missing \['token'\], unknown \['tokn'\]"):
        Q.args(
            Q.delivery_fail,
            target="t",
            secret_id=None,
            error="e",
            retry_in_s=1.0,
            dead=False,
            version=1,
            tokn="x",
            hold_s=0.0,
            counted=True,
        )


def test_a_block_cannot_mix_named_and_positional_parameters() -> None:
    """One style per block, so the $n mapping is never ambiguous."""
    with pytest.raises(RuntimeError, match="mixes"):
        _numbered("t", "SELECT $1, $a")


def test_positional_blocks_are_unchanged() -> None:
    """A block with $1... keeps its parameters and has no names."""
    assert Q.params(Q.secret_get) == ()
    assert Q.secret_get.endswith("WHERE id = $1")
