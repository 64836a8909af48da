"""The catalog recorder, against a real tiled SQLite catalog in a temporary directory."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bluesky_recorders.catalog import (
    CatalogRecorder,
    asset_path,
    catalog_document,
    close_catalog,
    open_catalog,
    readable_root,
    run_artifact,
    translate_resource,
    translate_stream_resource,
)
from bluesky_recorders.config import load_recorder_set
from bluesky_recorders.errors import RecorderError
from bluesky_recorders.external import PathMap
from bluesky_recorders.recorder_set import RecorderSet
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    scalar_run,
    stream_resource_run,
)

IOC_ROOT = "/detector-disk/2026-11"


# -- pure functions ----------------------------------------------------------


def test_translate_resource_keeps_the_root_split():
    pm = PathMap({"/detector-disk": "/mnt/det"})
    doc = {"uid": "r", "spec": "AD_HDF5", "root": "/detector-disk/a", "resource_path": "x.h5"}
    before = copy.deepcopy(doc)
    out = translate_resource(doc, pm)
    assert out == {**doc, "root": "/mnt/det/a"}
    assert doc == before


def test_translate_resource_with_root_slash():
    pm = PathMap({"/detector-disk": "/mnt/det"})
    doc = {"uid": "r", "root": "/", "resource_path": "detector-disk/a/x.h5"}
    out = translate_resource(doc, pm)
    assert (out["root"], out["resource_path"]) == ("/", "mnt/det/a/x.h5")


def test_translate_resource_untouched_when_not_mapped():
    doc = {"uid": "r", "root": "/elsewhere", "resource_path": "x.h5"}
    assert translate_resource(doc, PathMap({"/detector-disk": "/mnt/det"})) is doc


def test_translate_stream_resource_uri():
    pm = PathMap({"/detector-disk": "/mnt/my det"})
    doc = {"uid": "s", "uri": "file://localhost/detector-disk/a/x.h5", "mimetype": "x"}
    out = translate_stream_resource(doc, pm)
    assert out["uri"] == "file://localhost/mnt/my%20det/a/x.h5"
    assert doc["uri"] == "file://localhost/detector-disk/a/x.h5"
    other = {"uid": "s", "uri": "s3://bucket/detector-disk/x.h5"}
    assert translate_stream_resource(other, pm) is other


def test_catalog_document_passes_other_documents_through():
    pm = PathMap({"/a": "/b"})
    event = {"uid": "e", "data": {"x": 1}}
    assert catalog_document("event", event, pm) is event


def test_asset_path_and_readable_root():
    sres = {"uri": "file://localhost/mnt/det/a/x.h5"}
    assert asset_path("stream_resource", sres) == "/mnt/det/a/x.h5"
    assert asset_path("resource", {"root": "/mnt", "resource_path": "det/x.h5"}) == "/mnt/det/x.h5"
    assert asset_path("stream_resource", {"uri": "s3://b/x.h5"}) is None
    assert readable_root("/mnt/det/a/x.h5", ["/data", "/mnt/det"]) == "/mnt/det"
    assert readable_root("/mnt/detector/x.h5", ["/mnt/det"]) is None


def test_run_artifact(tmp_path):
    assert run_artifact(tmp_path, "abc") == f"{tmp_path}/catalog.db#abc"


# -- one catalog shared by the module (opening costs seconds) ---------------


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("detector-disk")


@pytest.fixture(scope="module")
def recorder(tmp_path_factory, detector_dir):
    root = tmp_path_factory.mktemp("data")
    rec = CatalogRecorder(
        data_root=root, path_map={IOC_ROOT: str(detector_dir)}, batch_size=10
    )
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def cat(recorder):
    return recorder.catalog


def test_catalog_layout(recorder, cat):
    assert recorder.directory.name == "catalog"
    assert type(cat).__name__ == "CatalogOfBlueskyRuns"
    assert (recorder.directory / "catalog.db").is_file()
    assert (recorder.directory / "data").is_dir()


def test_scalar_run(recorder, cat):
    docs = scalar_run(5)
    feed(recorder, docs)
    uid = docs[0][1]["uid"]
    run = cat[uid]
    primary = run.primary.read()
    assert sorted(primary.data_vars) == ["det", "motor"]
    np.testing.assert_allclose(primary["motor"].values, np.linspace(-1, 1, 5))
    np.testing.assert_allclose(primary["det"].values, np.exp(-np.linspace(-1, 1, 5) ** 2) * 1000)
    baseline = run.baseline.read()
    assert baseline["energy"].values.tolist() == [8.0, 8.0]
    assert run.metadata["start"]["scan_id"] == 1
    assert run.metadata["stop"]["exit_status"] == "success"
    assert recorder.artifacts[uid] == [run_artifact(recorder.directory, uid)]
    assert cat[-1].metadata["start"]["uid"] == uid
    assert type(cat.v2[uid]).__name__.startswith("BlueskyRunV2")
    # cat.v2 is a view: it does not turn every later cat[uid] into a V2 run.
    assert type(cat[uid]).__name__ == "BlueskyRunV3"


def test_event_page_run(recorder, cat):
    docs = scalar_run(7, pages=True, baseline=False, detectors=("d1", "d2"))
    feed(recorder, docs)
    primary = cat[docs[0][1]["uid"]].primary.read()
    assert sorted(primary.data_vars) == ["d1", "d2", "motor"]
    assert primary["d2"].shape == (7,)
    np.testing.assert_allclose(primary["d2"].values - primary["d1"].values, 1.0)


def test_search_by_metadata(recorder, cat):
    from databroker.queries import Key

    docs = scalar_run(2, plan_name="rel_scan", scan_id=77)
    feed(recorder, docs)
    found = cat.search(Key("scan_id") == 77)
    assert list(found) == [docs[0][1]["uid"]]


def test_ad_hdf5_run_reads_images_through_the_path_map(recorder, cat, detector_dir):
    docs = ad_hdf5_run(detector_dir, 3, frames_per_point=2, ioc_root=IOC_ROOT)
    before = copy.deepcopy(docs)
    feed(recorder, docs)
    assert docs == before  # the caller's documents are not modified
    primary = cat[docs[0][1]["uid"]].primary.read()
    images = primary["cam_image"].values
    assert images.shape == (3, 2, 8, 10)
    expected = np.arange(3 * 2 * 8 * 10, dtype="uint16").reshape(3, 2, 8, 10)
    np.testing.assert_array_equal(images, expected)


def test_ad_hdf5_run_with_datum_pages(recorder, cat, detector_dir):
    docs = ad_hdf5_run(detector_dir, 2, frames_per_point=1, ioc_root=IOC_ROOT, datum_pages=True)
    feed(recorder, docs)
    images = cat[docs[0][1]["uid"]].primary.read()["cam_image"].values
    assert images.shape == (2, 1, 8, 10)


def test_stream_resource_run_reads_images(recorder, cat, detector_dir):
    docs = stream_resource_run(detector_dir, 4, ioc_root=IOC_ROOT)
    feed(recorder, docs)
    images = cat[docs[0][1]["uid"]].primary.read()["cam_image"].values
    assert images.shape == (4, 8, 10)
    np.testing.assert_array_equal(images, np.arange(4 * 80, dtype="uint16").reshape(4, 8, 10))


def test_a_second_run_with_the_same_uid_fails_loudly(recorder):
    docs = scalar_run(2)
    feed(recorder, docs)
    with pytest.raises(RecorderError, match="already in the catalog") as info:
        feed(recorder, docs[:1])
    assert info.value.recorder == "catalog"
    assert "catalog.db" in str(info.value)


def test_unreadable_detector_file_fails_loudly(recorder, tmp_path):
    # No path map entry and not under a readable directory: tiled refuses the file.
    docs = ad_hdf5_run(tmp_path / "elsewhere", 2)
    with pytest.raises(RecorderError, match="outside the catalog's readable directories") as info:
        feed(recorder, docs)
    assert info.value.doc_name == "resource"
    assert info.value.run_uid == docs[0][1]["uid"]
    assert str(tmp_path / "elsewhere") in str(info.value)


def test_reopen_from_another_process(recorder, cat):
    docs = scalar_run(3, scan_id=5)
    feed(recorder, docs)
    uid = docs[0][1]["uid"]
    # The session still holds the catalog open: SQLite tables let another process read it.
    code = textwrap.dedent(
        f"""
        import json, sys
        from bluesky_recorders.catalog import open_catalog, close_catalog
        cat = open_catalog({str(recorder.directory)!r})
        run = cat[{uid!r}]
        print(json.dumps({{"n": len(cat), "motor": run.primary.read()["motor"].values.tolist()}}))
        close_catalog(cat)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["motor"] == [-1.0, 0.0, 1.0]
    assert out["n"] == len(cat)


# -- failures and configuration ------------------------------------------------


def test_catalog_directory_blocked_by_a_file(tmp_path):
    (tmp_path / "blocker").write_text("not a directory")
    directory = tmp_path / "blocker" / "catalog"
    rec = CatalogRecorder(directory=directory, name="lab-catalog")
    with pytest.raises(RecorderError) as info:
        feed(rec, scalar_run(2))
    message = str(info.value)
    assert "'lab-catalog'" in message
    assert str(directory) in message
    rec.close()


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="directory or a data_root"):
        CatalogRecorder()
    with pytest.raises(ValueError, match="batch_size"):
        CatalogRecorder(directory=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="tables"):
        CatalogRecorder(directory=tmp_path, tables="mongo")


def test_loaded_from_toml(tmp_path):
    text = textwrap.dedent(
        """
        [path_map]
        "/detector-disk" = "{data_root}/detector-disk"
        [recorders.catalog]
        batch_size = 50
        """
    )
    rs = load_recorder_set(text=text, data_root=tmp_path)
    try:
        rec = rs["catalog"]
        assert isinstance(rec, CatalogRecorder)
        assert rec.directory == tmp_path / "catalog"
        assert rec.batch_size == 50
        assert str(tmp_path / "detector-disk") in rec.readable
    finally:
        rs.close()


# -- the recorded APS streams ----------------------------------------------------


def test_realruns_through_a_recorder_set(tmp_path):
    rec = CatalogRecorder(directory=tmp_path / "catalog", batch_size=1000)
    stopped = []
    with RecorderSet([rec]) as rs:
        for source in ("usaxs.json.gz", "apstools.json.gz"):
            for name, doc in realruns(source):
                rs(name, doc)
                if name == "stop":
                    stopped.append(doc["run_start"])
        cat = rec.catalog
        assert len(stopped) == 62
        for uid in stopped:
            assert cat[uid].metadata["stop"] is not None
        assert len(cat) == 63  # the run without a stop is there too, unfinished
    assert rec.artifacts[stopped[0]] == [run_artifact(rec.directory, stopped[0])]


def test_open_catalog_twice_in_one_process(tmp_path):
    first = open_catalog(tmp_path / "c", readable=[os.fspath(tmp_path)])
    second = open_catalog(Path(tmp_path) / "c")
    try:
        assert list(first) == list(second) == []
    finally:
        close_catalog(first)
        close_catalog(second)
        close_catalog(second)  # idempotent
