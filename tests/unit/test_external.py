"""External data is normalised into one model, whatever documents announced it."""

import pytest

from bluesky_recorders.errors import DocumentError
from bluesky_recorders.external import AssetIndex, PathMap, spec_mimetype
from bluesky_recorders.testing import ad_hdf5_run, stream_resource_run


def test_path_map_longest_prefix_wins():
    pm = PathMap({"/det": "/mnt/a", "/det/fast": "/mnt/b"})
    assert pm.translate("/det/x.h5") == "/mnt/a/x.h5"
    assert pm.translate("/det/fast/x.h5") == "/mnt/b/x.h5"
    assert pm.translate("/detector/x.h5") == "/detector/x.h5"  # not a path prefix
    assert pm.translate("/det") == "/mnt/a"
    assert pm.translate("/other/x.h5") == "/other/x.h5"


def test_path_map_trailing_slashes():
    assert PathMap({"/det/": "/mnt/a/"}).translate("/det/x.h5") == "/mnt/a/x.h5"


def test_spec_mimetype():
    assert spec_mimetype("AD_HDF5") == "application/x-hdf5"
    assert spec_mimetype("WEIRD") == "application/x-weird"


def _index(docs, path_map=None):
    idx = AssetIndex(path_map)
    for name, doc in docs:
        if name in ("resource", "datum", "datum_page", "stream_resource"):
            getattr(idx, name)(doc)
    return idx


@pytest.mark.parametrize("datum_pages", [False, True])
def test_ad_hdf5_datum_gives_frames_of_the_point(tmp_path, datum_pages):
    docs = ad_hdf5_run(tmp_path, 3, frames_per_point=2, ioc_root="/ioc/x", datum_pages=datum_pages)
    idx = _index(docs, PathMap({"/ioc/x": str(tmp_path)}))
    events = [d for n, d in docs if n == "event"]
    frames = [
        idx.for_datum(e["descriptor"], "cam_image", e["seq_num"], e["data"]["cam_image"])
        for e in events
    ]
    assert [(f.frame_start, f.frame_stop) for f in frames] == [(0, 2), (2, 4), (4, 6)]
    assert [(f.seq_start, f.seq_stop) for f in frames] == [(1, 2), (2, 3), (3, 4)]
    assert all(f.path.startswith(str(tmp_path)) for f in frames)
    assert all(f.source_path.startswith("/ioc/x/") for f in frames)
    assert frames[0].dataset == "/entry/data/data"
    assert frames[0].is_hdf5 and frames[0].frames_per_point == 2


def test_stream_datum_gives_frames(tmp_path):
    docs = stream_resource_run(tmp_path, 3, ioc_root="/ioc")
    idx = _index(docs, PathMap({"/ioc": str(tmp_path)}))
    sds = [d for n, d in docs if n == "stream_datum"]
    frames = [idx.for_stream_datum(sd) for sd in sds]
    assert [(f.frame_start, f.frame_stop) for f in frames] == [(0, 1), (1, 2), (2, 3)]
    assert [(f.seq_start, f.seq_stop) for f in frames] == [(1, 2), (2, 3), (3, 4)]
    assert frames[0].data_key == "cam_image"
    assert frames[0].path.startswith(str(tmp_path)) and frames[0].dataset == "/entry/data/data"


def test_unknown_datum_is_a_clear_error():
    with pytest.raises(DocumentError, match="no datum with that id"):
        AssetIndex().for_datum("desc", "cam", 1, "nope/0")


def test_unknown_stream_resource_is_a_clear_error():
    sd = {
        "uid": "u",
        "stream_resource": "nope",
        "descriptor": "d",
        "indices": {"start": 0, "stop": 1},
        "seq_nums": {"start": 1, "stop": 2},
    }
    with pytest.raises(DocumentError, match="stream_resource 'nope'"):
        AssetIndex().for_stream_datum(sd)
