"""No behaviour change: data-free plans and pruned models on the whole zoo match golden hashes.

The golden file ``tests/data/zoo_golden.json`` is written by ``python -m tests.update_golden``
(see there for what each hash covers). Where the exported input model has the recorded bytes,
the plan's JSON and the pruned model's bytes must be identical; where the export itself
differs (another CPU or library build), only the float-independent structure is compared.
"""

from __future__ import annotations

import json

import pytest

from tests.update_golden import CONFIGS, GOLDEN, hashes
from tests.zoo_cache import ZOO_NAMES, zoo_path

_GOLDEN = json.loads(GOLDEN.read_text())


def test_golden_covers_the_whole_zoo():
    assert sorted(_GOLDEN) == ZOO_NAMES, "zoo changed: run python -m tests.update_golden"
    assert all(sorted(v) == sorted(CONFIGS) for v in _GOLDEN.values())


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_plan_and_pruned_model_unchanged(name, config):
    want = _GOLDEN[name][config]
    got = hashes(zoo_path(name), CONFIGS[config])
    assert got["structure"] == want["structure"], f"{name} {config}: kept counts or pruned graph changed"
    if got["input"] != want["input"]:
        pytest.skip(f"{name}: this platform exports different float bytes; structure checked only")
    assert got["plan"] == want["plan"], f"{name} {config}: the plan changed"
    assert got["model"] == want["model"], f"{name} {config}: the pruned model's bytes changed"
