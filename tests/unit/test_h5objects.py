"""h5objects writes the same HDF5 objects as h5py's high-level API, only faster."""

import math

import h5py
import numpy as np
import pytest

from bluesky_recorders.h5objects import (
    growing_dataset,
    new_group,
    set_attr,
    soft_link,
    text_dataset,
)


def _attr_type(obj, name):
    tid = h5py.h5a.open(obj.id, name.encode()).get_type()
    if tid.get_class() == h5py.h5t.STRING:
        return (tid.get_class(), tid.is_variable_str(), tid.get_cset())
    return (tid.get_class(), tid.get_size(), tid.get_order())


def _describe(ds):
    plist = ds.id.get_create_plist()
    return (
        ds.dtype,
        ds.shape,
        ds.maxshape,
        ds.chunks,
        ds.compression,
        ds.compression_opts,
        None if ds.fillvalue is None else repr(ds.fillvalue),
        plist.get_obj_track_times(),
        ds.id.get_type().get_class(),
    )


@pytest.mark.parametrize(
    "value", ["NXentry", "ünïcode ✓", 7, -(2**40), 2.5, math.nan, ["a", "bc"], ("x",)]
)
def test_attributes_as_h5py_writes_them(tmp_path, value):
    with h5py.File(tmp_path / "f.h5", "w", libver=("v110", "v110")) as f:
        ours, theirs = f.create_group("ours"), f.create_group("theirs")
        set_attr(ours, "a", value)
        theirs.attrs["a"] = value
        assert _attr_type(ours, "a") == _attr_type(theirs, "a")
        got, want = ours.attrs["a"], theirs.attrs["a"]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_text_attribute_holding_a_nul_is_a_fixed_length_string(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises(ValueError, match="NUL"):  # what h5py does with it
            f.attrs["theirs"] = "a\0b"
        set_attr(f, "ours", "a\0bé")
        assert f.attrs["ours"] == "a\0bé".encode()
        tid = h5py.h5a.open(f.id, b"ours").get_type()
        assert not tid.is_variable_str() and tid.get_cset() == h5py.h5t.CSET_UTF8


def test_an_existing_attribute_or_another_type_goes_through_h5py(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        set_attr(f, "a", "one")
        set_attr(f, "a", "two")  # overwritten, as attrs[...] = does
        set_attr(f, "flag", True)
        set_attr(f, "arr", np.arange(3))
        set_attr(f, "naïve", "name not ASCII")
        assert f.attrs["a"] == "two"
        assert f.attrs["flag"] == np.True_
        assert list(f.attrs["arr"]) == [0, 1, 2]
        assert f.attrs["naïve"] == "name not ASCII"


def test_groups_and_text_as_h5py_writes_them(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ours = new_group(f, "ours")
        theirs = f.create_group("theirs")
        assert isinstance(ours, h5py.Group)
        link = f.id.links.get_info(b"ours")
        assert link.cset == f.id.links.get_info(b"theirs").cset
        for name, text in (("t", "hello"), ("u", "ünïcode ✓"), ("nul", "a\0b")):  # fixed
            mine = h5py.Dataset(text_dataset(ours, name, text))
            data = text.encode()
            ref = theirs.create_dataset(name, data=np.array(data, dtype=f"S{len(data)}"))
            assert mine[()] == ref[()] == data and mine.asstr()[()] == text
            assert _describe(mine) == _describe(ref)
            tid = mine.id.get_type()
            assert not tid.is_variable_str() and tid.get_size() == len(data)
            assert tid.get_cset() == h5py.h5t.CSET_UTF8
            assert tid.get_strpad() == ref.id.get_type().get_strpad() == h5py.h5t.STR_NULLPAD
        for name, text in (("empty", ""),):  # what a fixed-length string cannot hold
            mine = h5py.Dataset(text_dataset(ours, name, text))
            ref = theirs.create_dataset(name, data=text, dtype=h5py.string_dtype())
            assert mine[()] == ref[()] == text.encode()
            assert _describe(mine) == _describe(ref) and mine.id.get_type().is_variable_str()
        sub = new_group(f, "é")  # not ASCII: through h5py
        assert sub.name == "/é"


def test_soft_links_as_h5py_writes_them(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("a/x", data=1.0)
        f.create_dataset("a/y", data=2.0)
        ours, theirs = f.create_group("ours"), f.create_group("theirs")
        soft_link(ours, "x", "/a/x")
        theirs["x"] = h5py.SoftLink("/a/x")
        assert ours.get("x", getlink=True).path == "/a/x" and ours["x"][()] == 1.0
        info, ref = ours.id.links.get_info(b"x"), theirs.id.links.get_info(b"x")
        assert (info.type, info.cset) == (ref.type, ref.cset)
        soft_link(ours, "x", "/a/y")  # a name already there is kept
        assert ours["x"][()] == 1.0
        soft_link(ours, "é", "/a/y")  # not ASCII: through h5py
        soft_link(ours, "sub/z", "/a/y")
        assert ours["é"][()] == ours["sub/z"][()] == 2.0


@pytest.mark.parametrize(
    "dtype, shape, maxshape, chunks, fill, gzip",
    [
        ("float64", (0,), (None,), (1024,), math.nan, None),
        ("int64", (0,), (None,), (1024,), None, None),
        ("uint16", (0, 4, 5), (None, 4, 5), (51, 4, 5), None, None),
        ("float32", (0, 3), (None, 3), (341, 3), math.nan, None),
        ("S1", (0, 0), (None, None), (256, 64), None, 1),
    ],
)
def test_growing_datasets_as_h5py_writes_them(tmp_path, dtype, shape, maxshape, chunks, fill, gzip):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        mine = growing_dataset(
            f, "ours", np.dtype(dtype), shape, maxshape, chunks, fill=fill, gzip=gzip
        )
        extra = {"compression": "gzip", "compression_opts": gzip} if gzip else {}
        ref = f.create_dataset(
            "theirs",
            shape=shape,
            maxshape=maxshape,
            chunks=chunks,
            dtype=dtype,
            fillvalue=fill,
            **extra,
        )
        assert _describe(mine) == _describe(ref)
        for ds in (mine, ref):
            ds.resize(3, axis=0)
        np.testing.assert_array_equal(mine[()], ref[()])  # same fill
