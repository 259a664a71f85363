"""SafeInstr's mixing (training/safeinstr.py): how many safety rows, which ones, their ids and roles."""

from __future__ import annotations

import pytest

from safetune.config import MethodConfig
from safetune.data.records import RoleExample
from safetune.data.safety import SafetyDemo, load_safety_demos
from safetune.errors import ConfigError
from safetune.training.safeinstr import mix_safety, safety_row_count


def _examples(n: int, roles=("A", "B")) -> list[RoleExample]:
    return [
        RoleExample(role=roles[i % len(roles)], input=f"q{i}", output=f"a{i}", id=str(i)) for i in range(n)
    ]


@pytest.mark.parametrize(
    ("count", "fraction", "rows", "expected"),
    [
        (None, 0.03, 100, 3),
        (None, 0.03, 50, 2),  # 1.5 rounds half up
        (None, 0.025, 20, 1),  # 0.5 rounds half up
        (None, 0.03, 16, 0),  # 0.48
        (None, 0.0, 1000, 0),
        (None, 1.0, 7, 7),
        (5, 0.03, 1000, 5),  # an explicit count wins
        (0, 0.5, 10, 0),
    ],
)
def test_count_from_count_or_fraction(count, fraction, rows, expected):
    method = MethodConfig(name="safeinstr", safety_count=count, safety_fraction=fraction)
    assert safety_row_count(method, rows) == expected


def test_same_seed_same_rows_other_seed_other_rows():
    demos = load_safety_demos(None)
    examples = _examples(10)
    a = mix_safety(examples, demos, 8, seed=1)
    assert a == mix_safety(examples, demos, 8, seed=1)
    assert [r.id for r in a] != [r.id for r in mix_safety(examples, demos, 8, seed=2)]
    ids = [r.id for r in a]
    assert len(set(ids)) == 8 and all(i.startswith("safety:") for i in ids)
    assert not set(ids) & {ex.id for ex in examples}
    by_id = {f"safety:{d.id}": d for d in demos}
    assert all(by_id[r.id].prompt == r.input and by_id[r.id].response == r.output for r in a)
    assert all(r.role == "" for r in a)  # no system prompt by default
    assert len(mix_safety(examples, demos, len(demos), seed=0)) == len(demos)


def test_role_system_draws_roles_from_the_data():
    demos = load_safety_demos(None)
    rows = mix_safety(_examples(10, roles=("A", "B")), demos, 20, seed=0, system="role")
    assert {r.role for r in rows} == {"A", "B"}


def test_too_many_rows_or_a_clashing_id_is_a_config_error():
    demos = [SafetyDemo(id=str(i), prompt=f"p{i}", response="no") for i in range(3)]
    with pytest.raises(ConfigError, match="asks for 4 safety rows but the safety data has 3"):
        mix_safety(_examples(2), demos, 4, seed=0)
    clash = [RoleExample(role="A", input="q", output="a", id="safety:1")]
    with pytest.raises(ConfigError, match="also a role row's id"):
        mix_safety(clash, demos, 3, seed=0)
