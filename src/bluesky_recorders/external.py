"""One model for external (detector-file) data, whatever documents announced it.

ophyd v1 devices announce files with ``resource`` + ``datum``/``datum_page``
documents (specs such as ``AD_HDF5`` or ``NPY_SEQ``); newer devices use
``stream_resource`` + ``stream_datum``. Recorders should not care: both are
turned into :class:`ExternalFrames`, "frames ``[a, b)`` of dataset D in file F,
for events ``[s, t)`` of a descriptor". IOC-side paths are translated to local
paths by a :class:`PathMap`.

Everything here is pure: documents in, records out.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import DocumentError

__all__ = ["AssetIndex", "ExternalFrames", "PathMap", "spec_mimetype"]

#: Resource specs we know, and the mimetype we give them (as in tiled's registry).
_SPEC_MIMETYPES = {
    "AD_HDF5": "application/x-hdf5",
    "AD_HDF5_SWMR": "application/x-hdf5",
    "AD_HDF5_SWMR_STREAM": "application/x-hdf5",
    "HDF5": "application/x-hdf5",
    "AD_TIFF": "multipart/related;type=image/tiff",
    "NPY_SEQ": "multipart/related;type=application/x-npy",
}
_HDF5_DATASET_BY_SPEC = {
    "AD_HDF5": "/entry/data/data",
    "AD_HDF5_SWMR": "/entry/data/data",
    "AD_HDF5_SWMR_STREAM": "/entry/data/data",
}


def spec_mimetype(spec: str) -> str:
    """The mimetype for a legacy resource spec (``application/x-<spec>`` when unknown)."""
    return _SPEC_MIMETYPES.get(spec, f"application/x-{spec.lower()}")


@dataclass(frozen=True, slots=True)
class PathMap:
    """Translate IOC-side path prefixes into local ones (longest prefix wins).

    >>> PathMap({"/detector-disk": "/mnt/det"}).translate("/detector-disk/a/b.h5")
    '/mnt/det/a/b.h5'
    """

    prefixes: Mapping[str, str] = field(default_factory=dict)

    def translate(self, path: str) -> str:
        best = ""
        for remote in self.prefixes:
            r = remote.rstrip("/") or "/"
            if (path == r or path.startswith(r.rstrip("/") + "/")) and len(r) > len(best):
                best = r
        if not best:
            return path
        local = self.prefixes.get(best, self.prefixes.get(best + "/", ""))
        rest = path[len(best) :].lstrip("/")
        return posixpath.join(local, rest) if rest else local

    @property
    def local_roots(self) -> list[str]:
        return list(self.prefixes.values())


@dataclass(frozen=True, slots=True)
class ExternalFrames:
    """Frames ``[frame_start, frame_stop)`` of ``dataset`` in ``path`` hold the
    values of ``data_key`` for events ``[seq_start, seq_stop)`` of ``descriptor``.

    ``path`` is local (translated); ``source_path`` is what the document said.
    For non-HDF5 data (``NPY_SEQ``, TIFF) ``dataset`` is ``None`` and
    ``kwargs`` keeps the datum's own parameters, so the reference can be
    documented as it was given.
    """

    descriptor: str
    data_key: str
    seq_start: int
    seq_stop: int
    path: str
    source_path: str
    mimetype: str
    dataset: str | None
    frame_start: int
    frame_stop: int
    frames_per_point: int
    spec: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_hdf5(self) -> bool:
        return self.mimetype == "application/x-hdf5"


def _uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"only file:// URIs are supported, got {uri!r}")
    return unquote(parsed.path)


class AssetIndex:
    """Per-run index of resources and datums, answering "which frames?".

    Feed it the run's asset documents; ask :meth:`for_datum` when an event
    holds a datum id, and :meth:`for_stream_datum` for a ``stream_datum``.
    """

    def __init__(self, path_map: PathMap | None = None) -> None:
        self.path_map = path_map or PathMap()
        self._resources: dict[str, Mapping[str, Any]] = {}
        self._datums: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self._stream_resources: dict[str, Mapping[str, Any]] = {}
        #: resource uid -> (local path, source path): the same for all its datums
        self._paths: dict[str, tuple[str, str]] = {}

    # feeding -------------------------------------------------------------
    def resource(self, doc: Mapping[str, Any]) -> None:
        self._resources[doc["uid"]] = doc
        self._paths.pop(doc["uid"], None)

    def datum_page(self, page: Mapping[str, Any]) -> None:
        resource = page["resource"]
        ids = page["datum_id"]
        kwargs = page.get("datum_kwargs", {})
        keys = list(kwargs)
        for i, datum_id in enumerate(ids):
            self._datums[datum_id] = (resource, {k: kwargs[k][i] for k in keys})

    def datum(self, doc: Mapping[str, Any]) -> None:
        self._datums[doc["datum_id"]] = (doc["resource"], doc.get("datum_kwargs", {}))

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        self._stream_resources[doc["uid"]] = doc

    # asking --------------------------------------------------------------
    def resource_path(self, resource: Mapping[str, Any]) -> tuple[str, str]:
        """(local path, source path) of a legacy resource."""
        root = resource.get("root", "") or ""
        rel = resource.get("resource_path", "") or ""
        source = str(PurePosixPath(root) / rel) if root else rel
        return self.path_map.translate(source), source

    def for_datum(
        self, descriptor: str, data_key: str, seq_num: int, datum_id: str
    ) -> ExternalFrames:
        try:
            resource_uid, kwargs = self._datums[datum_id]
        except KeyError:
            raise DocumentError(
                f"event {seq_num} of descriptor {descriptor} refers to datum {datum_id!r} "
                f"for {data_key!r}, but no datum with that id was received",
                name="event",
                uid=descriptor,
            ) from None
        try:
            res = self._resources[resource_uid]
        except KeyError:
            raise DocumentError(
                f"datum {datum_id!r} refers to resource {resource_uid!r}, which was not received",
                name="datum",
                uid=datum_id,
            ) from None
        spec = res.get("spec", "")
        rkw = res.get("resource_kwargs", {}) or {}
        paths = self._paths.get(resource_uid)
        if paths is None:
            paths = self._paths[resource_uid] = self.resource_path(res)
        path, source = paths
        per_point = int(rkw.get("frame_per_point", 1) or 1)
        index = kwargs.get("point_number", kwargs.get("index", kwargs.get("frame", 0)))
        try:
            index = int(index)
        except (TypeError, ValueError):
            index = 0
        return ExternalFrames(
            descriptor=descriptor,
            data_key=data_key,
            seq_start=seq_num,
            seq_stop=seq_num + 1,
            path=path,
            source_path=source,
            mimetype=spec_mimetype(spec),
            dataset=rkw.get("dataset") or _HDF5_DATASET_BY_SPEC.get(spec),
            frame_start=index * per_point,
            frame_stop=(index + 1) * per_point,
            frames_per_point=per_point,
            spec=spec,
            kwargs=dict(kwargs),
        )

    def for_stream_datum(
        self, doc: Mapping[str, Any], data_key: str | None = None
    ) -> ExternalFrames:
        sr_uid = doc["stream_resource"]
        try:
            sres = self._stream_resources[sr_uid]
        except KeyError:
            raise DocumentError(
                f"stream_datum {doc.get('uid')} refers to stream_resource {sr_uid!r}, "
                "which was not received",
                name="stream_datum",
                uid=doc.get("uid", ""),
            ) from None
        source = _uri_to_path(sres["uri"])
        params = sres.get("parameters", {}) or {}
        per_point = int(params.get("multiplier", 1) or 1)
        ind = doc["indices"]
        seq = doc["seq_nums"]
        return ExternalFrames(
            descriptor=doc["descriptor"],
            data_key=data_key or sres.get("data_key", ""),
            seq_start=int(seq["start"]),
            seq_stop=int(seq["stop"]),
            path=self.path_map.translate(source),
            source_path=source,
            mimetype=sres.get("mimetype", ""),
            dataset=params.get("dataset"),
            frame_start=int(ind["start"]) * per_point,
            frame_stop=int(ind["stop"]) * per_point,
            frames_per_point=per_point,
            spec="stream",
            kwargs=dict(params),
        )

    def files(self) -> Iterable[str]:
        """Every local file path the run's resources name."""
        for res in self._resources.values():
            yield self.resource_path(res)[0]
        for sres in self._stream_resources.values():
            yield self.path_map.translate(_uri_to_path(sres["uri"]))
