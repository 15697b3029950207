"""Typed ops: every kind round-trips through the plan file's JSON, and a plan saved by the
code that stored ``attrs`` as plain dicts loads with the same fingerprint and bytes."""

import io
import json
import zipfile

import numpy as np
import pytest

from helpers import FIXTURES
from safenet.plan.ir import KINDS, Plan
from safenet.plan.ops import OP_TYPES, Activation, Conv, MaxPool, Op, Truncate, attrs_from_json

OLD_PLAN = FIXTURES / "plans" / "every_kind.plan"
#: its fingerprint when it was written (tests/fixtures/README.md)
OLD_FINGERPRINT = "2370e3ee74bd724307ec9dbc3ad8dfa65e73387f64cc655b5197b3e4835d7506"


@pytest.fixture(scope="module")
def old() -> Plan:
    return Plan.load(OLD_PLAN)


def test_a_plan_saved_with_dict_attrs_loads_unchanged(old):
    assert old.fingerprint() == OLD_FINGERPRINT
    assert {op.kind for op in old.ops} == set(KINDS) == set(OP_TYPES)
    stored = zipfile.ZipFile(OLD_PLAN).read("plan.json")
    assert zipfile.ZipFile(io.BytesIO(old.to_bytes())).read("plan.json") == stored
    assert old.public().fingerprint() == Plan.from_bytes(old.public().to_bytes()).fingerprint()
    for op in old.ops:
        assert isinstance(op.attrs, OP_TYPES[op.kind])
    acts = [op.attrs for _, op in old.activations()]
    assert all(isinstance(a, Activation) and a.poly_in_shift is not None for a in acts)
    assert any(a.clip is not None for a in acts) and any(a.clip is None for a in acts)


def test_every_kind_round_trips_through_json(old):
    for op in old.ops:
        meta = json.loads(json.dumps(op.meta()))
        again = Op.from_meta(meta, op.arrays)
        assert again == op and again.meta() == op.meta()
        assert list(meta["attrs"]) == list(op.attrs.to_json())  # key order kept


def test_optional_attributes_are_absent_when_unset():
    assert Activation(shift=9, degree=0, poly_shift=0).to_json() == {
        "shift": 9,
        "degree": 0,
        "poly_shift": 0,
    }
    conv = Conv(stride=[1, 1], padding=[0, 0], groups=1, kernel=[3, 3])
    assert "weight_bits" not in conv.to_json()
    assert Truncate(3).to_json() == {"shift": 3}


def test_bad_attributes_are_refused():
    with pytest.raises(ValueError, match="unknown op kind"):
        attrs_from_json("softmax", {})
    with pytest.raises(ValueError, match="unknown attributes"):
        attrs_from_json("truncate", {"shift": 1, "extra": 2})
    with pytest.raises(ValueError, match="maxpool"):
        attrs_from_json("maxpool", {"rows": [[0]]})
    op = Op(MaxPool([[0]], [[0]]), [0], (1, 1, 1), 8, {}, "mp")
    with pytest.raises(ValueError, match="not activation"):
        op.attrs_as(Activation)
    assert op.kind == "maxpool" and np.array_equal(op.arrays.get("x", np.zeros(0)), [])


def test_a_plan_with_an_edited_attribute_is_not_readable(tmp_path, old):
    with zipfile.ZipFile(OLD_PLAN) as z:
        files = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(files["plan.json"])
    meta["ops"][8]["attrs"]["bogus"] = 1
    files["plan.json"] = json.dumps(meta).encode()
    path = tmp_path / "edited.plan"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="not a readable safenet plan"):
        Plan.load(path)


def test_every_kind_has_one_entry_in_each_dispatch_table():
    from safenet.approx.cost import COUNTERS
    from safenet.plan import analysis, reference
    from safenet.plan.ops import LOCAL_OPS, Input
    from safenet.protocol.layers import HANDLERS, LOCAL_RULES

    kinds = set(OP_TYPES.values())
    assert set(HANDLERS) == set(reference.RULES) == kinds
    assert set(analysis.RULES) == kinds - {Input}  # the input's interval is the bound itself
    assert set(LOCAL_RULES) == set(LOCAL_OPS)
    # every kind that costs protocol work is counted; local ops and the input are free
    assert set(COUNTERS) == kinds - set(LOCAL_OPS) - {Input}
