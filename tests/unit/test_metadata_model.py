"""The metadata model (PV table, snapshot, ``bsrec metadata set`` assignments) and the
IOC's state file, without any IOC."""

from __future__ import annotations

import json
import logging
import math
import os
import stat

import pytest

from bluesky_recorders.errors import BsrecError
from bluesky_recorders.metadata import ioc, model
from bluesky_recorders.metadata.model import (
    MAX_TEXT_BYTES,
    PVS,
    MetadataValueError,
    check_value,
    default_values,
    empty_snapshot,
    set_dotted,
    snapshot_from_values,
    values_from_snapshot,
)

CONTRACT_PVS = [
    "proposal:id", "proposal:title", "safety_form:id", "pi:name", "pi:last_name", "pi:email",
    "users", "sample:name", "sample:description", "sample:formula", "sample:extra",
    "beamline:id", "instrument:source", "instrument:mono_energy", "instrument:description",
    "instrument:extra", "data_directory", "updated",
]  # fmt: skip

FULL = {
    "proposal:id": "GUP-12345",
    "proposal:title": "In situ XRD of Łódź ceramics 日本",
    "safety_form:id": "ESAF-2027-1",
    "pi:name": "Jane Doe",
    "pi:last_name": "Doe",
    "pi:email": "jane.doe@example.org",
    "users": '[{"name":"Ann Lee","email":"ann@example.org"}]',
    "sample:name": "Si",
    "sample:description": "wafer",
    "sample:formula": "Si",
    "sample:extra": '{"temperature":"300 K"}',
    "beamline:id": "BL-9",
    "instrument:source": "bending magnet",
    "instrument:mono_energy": 8.0,
    "instrument:description": "",
    "instrument:extra": "{}",
    "data_directory": "/data/2026-11/doe",
    "updated": "2026-11-21T10:00:00+00:00",
}


def test_pv_table_is_the_contracts():
    assert [spec.suffix for spec in PVS] == CONTRACT_PVS
    keys = {spec.key for spec in PVS if spec.key}
    assert "updated" not in keys
    assert keys == {s.replace(":", ".") for s in CONTRACT_PVS if s != "updated"}


def test_snapshot_has_the_contracts_shape():
    snap = snapshot_from_values(FULL)
    assert snap == {
        "proposal_id": "GUP-12345",
        "title": "In situ XRD of Łódź ceramics 日本",
        "safety_form_id": "ESAF-2027-1",
        "pi": {"name": "Jane Doe", "last_name": "Doe", "email": "jane.doe@example.org"},
        "users": [{"name": "Ann Lee", "email": "ann@example.org"}],
        "sample": {
            "name": "Si",
            "description": "wafer",
            "chemical_formula": "Si",
            "extra": {"temperature": "300 K"},
        },
        "beamline_id": "BL-9",
        "instrument": {
            "source": "bending magnet",
            "monochromator_energy": 8.0,
            "energy_units": "keV",
            "description": "",
            "extra": {},
        },
        "data_directory": "/data/2026-11/doe",
        "updated": "2026-11-21T10:00:00+00:00",
    }
    assert json.loads(json.dumps(snap)) == snap


def test_values_round_trip_through_the_snapshot():
    assert values_from_snapshot(snapshot_from_values(FULL)) == FULL
    snap = snapshot_from_values(FULL)
    assert snapshot_from_values(values_from_snapshot(snap)) == snap


def test_empty_snapshot_has_every_key_and_unknown_energy_is_none():
    snap = empty_snapshot()
    assert snap["users"] == [] and snap["sample"]["extra"] == {}
    assert snap["instrument"]["monochromator_energy"] is None
    assert snap["instrument"]["energy_units"] == "keV"
    assert snap["title"] == "" and snap["updated"] == ""
    assert set(snap) == set(snapshot_from_values(FULL))
    back = values_from_snapshot(snap)
    assert math.isnan(back["instrument:mono_energy"])
    assert back == {**default_values(), "instrument:mono_energy": back["instrument:mono_energy"]}


def test_snapshot_of_bad_json_on_the_pvs_is_empty_with_a_warning(caplog):
    values = {**FULL, "users": "[not json", "sample:extra": "[1, 2]"}
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders.metadata"):
        snap = snapshot_from_values(values)
    assert snap["users"] == [] and snap["sample"]["extra"] == {}
    text = caplog.text
    assert "PV users" in text and "PV sample:extra" in text


def test_snapshot_accepts_raw_char_arrays_and_numpy_floats():
    import numpy as np

    raw = np.frombuffer("Zoë\0junk".encode(), dtype=np.uint8)
    snap = snapshot_from_values({"sample:name": raw, "instrument:mono_energy": np.float64(12.4)})
    assert snap["sample"]["name"] == "Zoë"
    assert snap["instrument"]["monochromator_energy"] == 12.4
    assert type(snap["instrument"]["monochromator_energy"]) is float


# -- set_dotted ---------------------------------------------------------------------------


def test_set_dotted_plain_keys_and_returns_a_new_dict():
    before = dict(FULL)
    after = set_dotted(before, "pi.name", "José Ñúñez 👩‍🔬")
    assert after["pi:name"] == "José Ñúñez 👩‍🔬"
    assert before == FULL
    assert set(after) == set(CONTRACT_PVS)
    assert set_dotted({}, "data_directory", "/data/x")["data_directory"] == "/data/x"


def test_set_dotted_energy():
    assert set_dotted({}, "instrument.mono_energy", "8.05")["instrument:mono_energy"] == 8.05
    assert set_dotted({}, "instrument.mono_energy", " 12 keV ")["instrument:mono_energy"] == 12.0
    assert math.isnan(set_dotted(FULL, "instrument.mono_energy", "")["instrument:mono_energy"])
    for bad in ("eight", "nan", "inf", "-1", "0", "8 eV"):
        with pytest.raises(MetadataValueError, match="'instrument.mono_energy'"):
            set_dotted({}, "instrument.mono_energy", bad)


def test_set_dotted_users_json():
    values = set_dotted({}, "users", '[{"name": "Ann", "email": "a@x.org"}, "Bob"]')
    assert json.loads(values["users"]) == [
        {"name": "Ann", "email": "a@x.org"},
        {"name": "Bob", "email": ""},
    ]
    for bad, why in [
        ("[{'name': 'Ann'}]", "not valid JSON"),
        ('{"name": "Ann"}', "JSON list"),
        ("[42]", "user 0"),
        ('[{"name": "A", "phone": "1"}]', "phone"),
        ('[{"name": 5}]', "name must be a string"),
    ]:
        with pytest.raises(MetadataValueError, match=why) as info:
            set_dotted({}, "users", bad)
        assert "'users'" in str(info.value)


def test_set_dotted_extra_fields_go_into_the_json_objects():
    values = set_dotted(FULL, "sample.temperature", "77 K")
    values = set_dotted(values, "sample.pressure", "1 bar")
    values = set_dotted(values, "instrument.slits", "0.1 mm")
    assert json.loads(values["sample:extra"]) == {"temperature": "77 K", "pressure": "1 bar"}
    assert json.loads(values["instrument:extra"]) == {"slits": "0.1 mm"}
    values = set_dotted(values, "sample.pressure", "")
    assert json.loads(values["sample:extra"]) == {"temperature": "77 K"}
    values = set_dotted(values, "sample.extra", '{"a": {"b": [1, 2]}}')
    assert json.loads(values["sample:extra"]) == {"a": {"b": [1, 2]}}
    with pytest.raises(MetadataValueError, match="'sample.extra'.*JSON object"):
        set_dotted(values, "sample.extra", "[1]")
    # the snapshot's own names are accepted too
    assert set_dotted({}, "sample.chemical_formula", "SiO2")["sample:formula"] == "SiO2"


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("proposal.foo", "unknown metadata key 'proposal.foo'"),
        ("pi", "unknown metadata key 'pi'"),
        ("", "unknown metadata key ''"),
        ("updated", "set by the metadata IOC"),
        ("sample.", "unknown metadata key 'sample.'"),
        ("sample.9lives", "not a valid field name"),
        ("sample.a b", "not a valid field name"),
        ("instrument.energy_units", "always in keV"),
    ],
)
def test_set_dotted_refuses_unknown_keys(key, why):
    with pytest.raises(MetadataValueError, match=why):
        set_dotted(FULL, key, "x")


def test_too_long_strings_are_refused_with_a_clear_message():
    with pytest.raises(MetadataValueError) as info:
        set_dotted({}, "proposal.title", "x" * 5000)
    message = str(info.value)
    assert "'proposal.title'" in message and "5000 characters" in message
    assert f"{MAX_TEXT_BYTES} bytes" in message
    assert isinstance(info.value, BsrecError) and isinstance(info.value, ValueError)
    # the limit is in bytes of UTF-8: 2000 three-byte characters do not fit
    with pytest.raises(MetadataValueError, match="6000 bytes"):
        set_dotted({}, "proposal.title", "日" * 2000)
    assert set_dotted({}, "proposal.title", "x" * MAX_TEXT_BYTES)["proposal:title"]
    # an extra field that makes the JSON object too long names the PV
    with pytest.raises(MetadataValueError, match="sample:extra"):
        set_dotted({}, "sample.notes", "n" * (MAX_TEXT_BYTES - 5))


def test_nul_and_lone_surrogates_are_refused():
    with pytest.raises(MetadataValueError, match="NUL"):
        set_dotted({}, "sample.name", "Si\0O2")
    with pytest.raises(MetadataValueError, match="UTF-8"):
        set_dotted({}, "sample.name", "bad \udc80")


def test_check_value():
    assert check_value("proposal:id", "GUP-1") == "GUP-1"
    assert check_value("instrument:mono_energy", "8") == 8.0
    assert math.isnan(check_value("instrument:mono_energy", None))
    with pytest.raises(MetadataValueError, match="PV nope: not a metadata PV"):
        check_value("nope", "x")
    with pytest.raises(MetadataValueError, match="PV proposal:id: expected a string"):
        check_value("proposal:id", 5)
    with pytest.raises(MetadataValueError, match="PV instrument:extra: not valid JSON"):
        check_value("instrument:extra", "{")


# -- the IOC's state file (real files, no IOC) ----------------------------------------------


def test_state_file_round_trip_atomic_and_private(tmp_path):
    path = tmp_path / "md.json"
    values = {**FULL, "instrument:mono_energy": math.nan}
    ioc.save_state(path, values, prefix="BL:MD:")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o007 == 0  # nothing for others
    assert [p.name for p in tmp_path.iterdir()] == ["md.json"]  # no temp file left
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["values"]["instrument:mono_energy"] is None
    loaded = ioc.load_state(path)
    assert math.isnan(loaded.pop("instrument:mono_energy"))
    assert loaded == {k: v for k, v in FULL.items() if k != "instrument:mono_energy"}


def test_missing_state_file_starts_empty(tmp_path):
    assert ioc.load_state(tmp_path / "none.json").keys() == default_values().keys()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"values": []}',
        b'{"values": {"users": "[broken"}}',
        b'{"values": {"proposal:id": 42}}',
    ],
)
def test_corrupt_state_file_is_set_aside_and_logged(tmp_path, caplog, content):
    path = tmp_path / "md.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="bluesky_recorders.metadata"):
        values = ioc.load_state(path)
    assert values.keys() == default_values().keys()
    assert values["proposal:id"] == "" and values["users"] == "[]"
    assert not path.exists()
    (aside,) = tmp_path.glob("md.json.corrupt-*")
    assert aside.read_bytes() == content
    assert str(path) in caplog.text and str(aside) in caplog.text


def test_state_file_from_another_version_keeps_what_it_knows(tmp_path, caplog):
    path = tmp_path / "md.json"
    path.write_text(json.dumps({"values": {"pi:name": "Ann", "future:pv": "x"}}))
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders.metadata"):
        values = ioc.load_state(path)
    assert values["pi:name"] == "Ann"
    assert "future:pv" in caplog.text
    assert path.exists()


def test_ioc_serves_exactly_the_table():
    group = ioc.MetadataIOC(prefix="T:")
    assert sorted(group.pvdb) == sorted(f"T:{s}" for s in CONTRACT_PVS)
    assert model.MAX_LENGTH == 4096
