"""Check a file the way its users' readers see it: the checklists of ``formats.md``.

``nexus_problems(path)`` and ``spec_problems(path)`` return human-readable problems, each
prefixed by the reader (or check) that saw it; ``[]`` means every reader is content.

The Python readers run in one child process (this file run as a script) started in
another working directory: relative links must resolve from the file's folder, punx and
nexusformat keep global state and open files, and the C parser that silx and PyMca share
reports a dropped row only on the C-level stdout (``Error on scan N line M``).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["nexus_problems", "nexus_problems_many", "spec_problems", "spec_scans"]

Scans = dict[str, dict[str, tuple[list[str], int, dict[str, float]]]]

# punx calls '.' in @axes "not a valid NeXus name": a known false alarm (formats.md).
PUNX_FALSE_ALARM = "valid name @axes['.']"
MARK = "@@reader "


def _run_child(*args: str, cwd: str, meanwhile: Callable[[], Any] = list) -> tuple[Any, str]:
    """Run this file as a script in ``cwd``, and ``meanwhile()`` here (2 cores).

    Returns the child's JSON result and its (C-level) stdout.
    """
    env = dict(os.environ, XDG_CONFIG_HOME=cwd)  # punx makes its user cache there
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        meanwhile()
    finally:
        stdout, stderr = child.communicate()
    result = Path(cwd, "result.json")
    if child.returncode or not result.exists():
        tail = stderr.strip().splitlines()[-1:] or [""]
        raise ChildError(f"python readers: the process died ({child.returncode}): {tail[0]}")
    return json.loads(result.read_text()), stdout


class ChildError(Exception):
    """The process running the Python readers died (a reader crashed hard)."""


# -- NeXus -----------------------------------------------------------------------------


def nexus_problems(
    path: str | os.PathLike[str],
    *,
    expect_signal: str | None = None,
    expect_axes: list[str] | None = None,
    allow_external_missing: bool = False,
    complete: bool = True,
) -> list[str]:
    """Every problem every reader of formats.md "NeXus HDF5 files" finds in ``path``.

    ``complete``: the run has ended, so ``end_time`` must be there.
    ``allow_external_missing``: external files (links, virtual dataset sources) may be absent.
    """
    options = {
        "expect_signal": expect_signal,
        "expect_axes": expect_axes,
        "allow_external_missing": allow_external_missing,
        "complete": complete,
    }
    return nexus_problems_many([path], **options)[path]


def nexus_problems_many(paths: list[Any], **options: Any) -> dict[Any, list[str]]:
    """``nexus_problems`` of several files with one reader process (punx loads in ~1 s)."""
    defaults = {
        "expect_signal": None,
        "expect_axes": None,
        "allow_external_missing": False,
        "complete": True,
    }
    if unknown := set(options) - set(defaults):
        raise TypeError(f"unknown options {sorted(unknown)}")
    options = {**defaults, **options}
    files = [os.path.abspath(p) for p in paths]
    with tempfile.TemporaryDirectory() as cwd:
        tools: list[list[str]] = []

        def command_line_tools() -> None:
            for file in files:
                tools.append(_command_line_problems(file, cwd, options["allow_external_missing"]))

        try:
            found, _ = _run_child(
                "nexus", json.dumps(options), *files, cwd=cwd, meanwhile=command_line_tools
            )
        except ChildError as err:
            found = [[str(err)] for _ in files]
    return {p: [*a, *b] for p, a, b in zip(paths, found, tools, strict=True)}


def _command_line_problems(file: str, cwd: str, allow_external_missing: bool) -> list[str]:
    problems = []
    # These run while the Python readers read the same file in another process, and
    # nexusformat reopens files read-write (an exclusive lock) at times: without
    # locking here, a reader's shared lock never makes nexusformat fail with errno 11.
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    kw: dict[str, Any] = {
        "cwd": cwd,
        "capture_output": True,
        "text": True,
        "errors": "replace",
        "env": env,
    }
    run = subprocess.run(["h5ls", "-r", "--follow-symlinks", file], **kw)
    if run.returncode:
        problems.append(f"h5ls: exit status {run.returncode}: {run.stderr.strip()[-300:]}")
    for line in run.stdout.splitlines():
        if "**NOT FOUND**" in line and not (allow_external_missing and "External Link" in line):
            problems.append(f"h5ls: {' '.join(line.split())}")
    run = subprocess.run(["nxtraverse", "-f", file], **kw)
    if run.returncode:
        last = run.stdout.splitlines()[-1:] or [""]
        why = run.stderr.strip().splitlines()[-1:] or [""]
        problems.append(
            f"nxtraverse: exit status {run.returncode} after {last[0].split('=')[0]!r}: {why[0]}"
        )
    for line in (run.stdout + run.stderr).splitlines():
        if "ERROR" in line or "cannot open" in line:
            problems.append(f"nxtraverse: {line.strip()}")
    return problems


def _text(value: Any) -> Any:
    """An HDF5 attribute as str, or list of str."""
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _text(value.tolist())
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _h5py_problems(f: Any, complete: bool, allow_external_missing: bool) -> list[str]:
    import h5py

    problems = []
    entries = [g for g in f.values() if _text(g.attrs.get("NX_class")) == "NXentry"]
    for group in [f, *entries]:
        default = _text(group.attrs.get("default"))
        target = group.get(default) if isinstance(default, str) else None
        if default is None:
            problems.append(f"{group.name}: no @default")
        elif not isinstance(target, h5py.Group):
            problems.append(f"{group.name}: @default {default!r} names no group")
        elif _text(target.attrs.get("NX_class")) == "NXdata":
            problems += _nxdata_problems(target)
    for entry in entries:
        if complete and "end_time" not in entry:
            problems.append(f"{entry.name}: no end_time in a complete run")
        positioners = entry.get("instrument/positioners", {})
        wrong = [name for name, child in positioners.items() if not _is_positioner(child)]
        if wrong:
            problems.append(
                f"{positioners.name}: {len(wrong)} of {len(positioners)} children are not "
                f"numeric datasets (what PyMca and silx read): {', '.join(wrong[:5])}"
            )
    folder = Path(f.filename).parent
    checked: set[tuple[str, str]] = set()

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.SoftLink):
            obj = f.get(name)
            if obj is None:
                problems.append(f"/{name}: soft link to {link.path} does not resolve")
            elif _text(obj.attrs.get("target")) != link.path:
                problems.append(
                    f"/{name}: soft link source {link.path} has @target "
                    f"{_text(obj.attrs.get('target'))!r}, not {link.path!r}"
                )
        elif isinstance(link, h5py.ExternalLink):
            try:
                ok = f.get(name) is not None
            except (KeyError, OSError):
                ok = False
            if not ok and not allow_external_missing:
                problems.append(
                    f"/{name}: external link to {link.filename}:{link.path} does not resolve"
                )
        elif isinstance(obj := f.get(name), h5py.Dataset) and obj.is_virtual:
            for source in obj.virtual_sources():
                key = (name, source.file_name)
                if key in checked or allow_external_missing:
                    continue
                checked.add(key)
                file = f.filename if source.file_name == "." else folder / source.file_name
                if not Path(file).exists():
                    problems.append(
                        f"/{name}: virtual dataset source {source.file_name} does not exist"
                    )
                    continue
                with h5py.File(file, "r") as src:
                    if source.dset_name not in src:
                        problems.append(
                            f"/{name}: virtual dataset source "
                            f"{source.file_name}:{source.dset_name} does not exist"
                        )

    f.visititems_links(visit)
    return problems


def _is_positioner(obj: Any) -> bool:
    """PyMca lists the datasets of ``instrument/positioners`` and skips anything else."""
    import h5py

    return isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf"


def _nxdata_problems(group: Any) -> list[str]:
    signal = _text(group.attrs.get("signal"))
    axes = _text(group.attrs.get("axes"))
    if signal is None or signal not in group:
        return [f"{group.name}: @signal {signal!r} names no dataset"]
    if axes is None:
        return [f"{group.name}: no @axes"]
    axes = [axes] if isinstance(axes, str) else axes
    problems = [
        f"{group.name}: @axes names {a!r}, not in the group"
        for a in axes
        if a != "." and a not in group
    ]
    if len(axes) != group[signal].ndim:
        problems.append(
            f"{group.name}: @axes has {len(axes)} names but signal {signal!r} "
            f"has {group[signal].ndim} dimensions"
        )
    return problems


def _silx_problems(f: Any, expect_signal: str | None, expect_axes: list[str] | None) -> list:
    from silx.io.nxdata import NXdata, get_default

    problems = []
    entries = [g for g in f.values() if _text(g.attrs.get("NX_class")) == "NXentry"]
    for group in [f, *entries]:
        plot = get_default(group)
        if plot is None:  # get_default(validate=False) crashes on some invalid groups
            nxdata = _follow_default(group)
            issues = NXdata(nxdata).issues if nxdata is not None else []
            where = f"{nxdata.name}: invalid NXdata" if issues else group.name
            problems.append(f"{where}: {'; '.join(issues) or 'get_default finds no NXdata'}")
        elif group is f:
            axes = [a or "." for a in plot.axes_dataset_names]
            if expect_signal is not None and plot.signal_dataset_name != expect_signal:
                problems.append(
                    f"default signal is {plot.signal_dataset_name!r}, not {expect_signal!r}"
                )
            if expect_axes is not None and axes != list(expect_axes):
                problems.append(f"default axes are {axes}, not {list(expect_axes)}")
    return list(dict.fromkeys(problems))


def _follow_default(group: Any) -> Any:
    """The NXdata group the @default attributes lead to, or None."""
    for _ in range(5):
        if group is None or _text(group.attrs.get("NX_class")) == "NXdata":
            return group
        default = _text(group.attrs.get("default"))
        group = group.get(default) if isinstance(default, str) else None
    return None


def _nexusformat_problems(file: str) -> list[str]:
    import logging

    from nexusformat.nexus import nxload
    from nexusformat.nexus.validate import validate_file

    problems = []
    root = nxload(file, "r")
    try:
        plot = root.plottable_data
        if plot is None or plot.nxsignal is None:
            problems.append("plottable_data finds no signal")
    finally:
        root.close()
    # validate_file logs to stdout: collect instead, each error under its item's path
    logger = logging.getLogger("NXValidate")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.handlers, logger.level = [handler], logging.INFO
    result = validate_file(file)
    if result is None:
        return [*problems, "validate_file could not open the file"]
    where = "/"
    for record in records:
        message = record.getMessage().strip()
        if header := re.match(r"^(NX\w+|Field|Link|Group): (/.*)$", message):
            where = header.group(2)
        elif record.levelno == logging.ERROR:
            problems.append(f"validate_file error at {where}: {message}")
    if result[1] and not any("validate_file error" in p for p in problems):
        problems.append(f"validate_file reports {result[1]} errors")
    return problems


def _punx_problems(validator: Any, file: str) -> list[str]:
    from punx import finding

    try:
        validator.validate(file)
    finally:
        validator.close()
    return [
        f"{v.h5_address}: {v.test_name}: {v.comment}"
        for v in validator.validations
        if v.status is finding.ERROR and v.test_name != PUNX_FALSE_ALARM
    ]


def _nexus_child(options: dict[str, Any], files: list[str]) -> list[list[str]]:
    import h5py
    import punx.validate

    validator = punx.validate.Data_File_Validator()  # the bundled NXDL file set, offline
    found = []
    for file in files:
        problems: list[str] = []

        def check(reader: str, run: Any, *args: Any, problems: list[str] = problems) -> None:
            try:
                problems += [f"{reader}: {p}" for p in run(*args)]
            except Exception as err:  # a reader crashing is a problem to report
                problems.append(f"{reader}: fails: {type(err).__name__}: {err}")

        with h5py.File(file, "r") as f:
            check("h5py", _h5py_problems, f, options["complete"], options["allow_external_missing"])
            check("silx", _silx_problems, f, options["expect_signal"], options["expect_axes"])
        check("nexusformat", _nexusformat_problems, file)
        check("punx", _punx_problems, validator, file)
        found.append(problems)
    return found


# -- SPEC ------------------------------------------------------------------------------

DATE = re.compile(
    r"#D (Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"(0[1-9]|[12]\d|3[01]) ([01]\d|2[0-3]):[0-5]\d:[0-5]\d \d{4}"
)
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def spec_problems(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of formats.md "SPEC text files" in ``path``, from the text and readers."""
    problems = spec_text_problems(Path(path).read_bytes())
    reader_problems, scans = _spec_readers(path)
    return problems + reader_problems + _disagreements(scans)


def spec_scans(path: str | os.PathLike[str]) -> Scans:
    """Per reader: {scan: (labels, number of rows, motor positions)}."""
    return _spec_readers(path)[1]


def spec_text_problems(raw: bytes) -> list[str]:
    """Rules 1-8 and 10 of formats.md, checked on the text alone (rule 9 needs the run)."""
    problems = []
    if b"\r" in raw:
        problems.append("text: carriage returns (CRLF line endings)")
    if raw and not raw.endswith(b"\n"):
        problems.append("text: the last line does not end with \\n")
    lines = raw.decode("utf-8", "replace").replace("\r", "").split("\n")
    lines = lines[:-1] if lines[-1] == "" else lines
    start = [line[:2] for line in lines[:4]]
    if start != ["#F", "#E", "#D", "#C"] or not re.fullmatch(r"#E \d+", lines[1]):
        problems.append("text: the file does not start with #F, #E <integer epoch>, #D, #C")
    names: dict[str, list[str]] = {}  # #O lines in force
    numbers: set[str] = set()
    scan: dict[str, Any] = {}

    def bad(number: int, message: str) -> None:
        problems.append(f"text: line {number}: {message}")

    def end_scan() -> None:
        for key in ("#D", "#N", "#L"):
            if scan and key not in scan:
                bad(scan["line"], f"scan {scan['#S']} has no {key}")
        if scan.get("#N") is not None and "#L" in scan and scan["#N"] != len(scan["#L"]):
            bad(
                scan["line"],
                f"#N {scan['#N']} but #L has {len(scan['#L'])} names "
                "(names are separated by two spaces)",
            )

    continued = False  # inside an MCA "@A" spectrum, continued with "\\"
    for number, line in enumerate(lines, 1):
        if "\t" in line:
            bad(number, "tab")
        mca, continued = continued or line.startswith("@A"), line.endswith("\\")
        if mca:
            continue
        if line != line.rstrip():
            bad(number, "trailing spaces")
        key, _, rest = line.partition(" ")
        if key == "#S":
            end_scan()
            scan = {"#S": rest.split(" ")[0], "line": number}
            if not re.fullmatch(r"[1-9]\d*", scan["#S"]):
                bad(number, f"scan number {scan['#S']!r} is not a positive integer")
            elif scan["#S"] in numbers:
                bad(number, f"scan number {scan['#S']} is not unique")
            numbers.add(scan["#S"])
        elif key == "#F":
            names = {}
        elif key == "#D":
            if scan:
                scan["#D"] = rest
            if not DATE.fullmatch(line):
                bad(number, "#D is not like 'Sat Nov 21 12:00:30 2026'")
        elif key in ("#L", "#N") and not scan:
            bad(number, f"{key} outside a scan")
        elif key == "#N":
            scan["#N"] = int(rest) if rest.isdigit() else None
        elif key == "#L":
            scan["#L"] = _names(rest, number, bad)
        elif re.fullmatch(r"#O\d+", key):
            names[key[2:]] = _names(rest, number, bad)
        elif re.fullmatch(r"#P\d+", key):
            have = names.get(key[2:])
            if have is None:
                bad(number, f"{key} has no #O{key[2:]}")
            elif len(rest.split()) != len(have):
                bad(number, f"{key} has {len(rest.split())} values, #O{key[2:]} {len(have)} names")
        elif line and not line.startswith(("#", "@")):
            values = line.split()
            expected = scan.get("#N") or len(scan.get("#L", []))
            if not scan:
                bad(number, "data outside a scan")
            elif len(values) != expected:
                bad(number, f"{len(values)} values, #N is {scan.get('#N')}")
            wrong = [v for v in values if not NUMBER.fullmatch(v)]
            if wrong:
                bad(number, f"not a finite number: {', '.join(wrong)}")
    end_scan()
    return problems


def _names(text: str, number: int, bad: Any) -> list[str]:
    names = text.split("  ")
    if any(not n or n != n.strip() for n in names):
        bad(number, "names are not separated by exactly two spaces")
    return [n.strip() for n in names if n.strip()]


def _spec_readers(path: str | os.PathLike[str]) -> tuple[list[str], Scans]:
    with tempfile.TemporaryDirectory() as cwd:
        try:
            result, stdout = _run_child("spec", os.path.abspath(path), cwd=cwd)
        except ChildError as err:
            return [str(err)], {}
    problems = result["problems"]
    reader = "?"
    for line in stdout.splitlines():
        if line.startswith(MARK):
            reader = line[len(MARK) :]
        elif "Error on scan" in line:
            problems.append(f"{reader}: prints {line.strip()!r} (a row dropped)")
    scans = {
        name: {n: (list(labels), rows, motors) for n, (labels, rows, motors) in found.items()}
        for name, found in result["scans"].items()
    }
    return list(dict.fromkeys(problems)), scans


def _disagreements(scans: Scans) -> list[str]:
    if len(scans) < 2:
        return []
    (first, reference), *others = scans.items()
    problems = []
    for name, found in others:
        if set(found) != set(reference):
            problems.append(
                f"compare: {name} reads scans {sorted(found)}, {first} {sorted(reference)}"
            )
        for n in sorted(set(found) & set(reference)):
            (labels, rows, motors), (labels0, rows0, motors0) = found[n], reference[n]
            if labels != labels0:
                problems.append(f"compare: scan {n}: {name} labels {labels}, {first} {labels0}")
            if rows != rows0:
                problems.append(f"compare: scan {n}: {name} {rows} rows, {first} {rows0}")
            # a motor that is also a column is that column in silx.io.open
            motors = {k: v for k, v in motors.items() if k not in labels0}
            motors0 = {k: v for k, v in motors0.items() if k not in labels0}
            same = motors.keys() == motors0.keys() and all(
                math.isclose(motors[k], motors0[k], rel_tol=1e-6, abs_tol=1e-9)
                or (math.isnan(motors[k]) and math.isnan(motors0[k]))
                for k in motors
            )
            if not same:
                problems.append(f"compare: scan {n}: {name} motors {motors}, {first} {motors0}")
    return problems


def _key(number: Any, order: int) -> str:
    return str(number) if order == 1 else f"{number}.{order}"


def _silx_specfile(path: str) -> dict[str, Any]:
    from silx.io.specfile import SpecFile

    sf = SpecFile(path)
    try:
        return {
            _key(s.number, s.order): (
                list(s.labels),
                s.data.shape[-1] if s.data.size else 0,
                dict(zip(s.motor_names, s.motor_positions, strict=False)),
            )
            for s in (sf[k] for k in sf.keys())
        }
    finally:
        sf.close()


def _silx_open(path: str) -> dict[str, Any]:
    import silx.io

    found = {}
    with silx.io.open(path) as f:
        for key, scan in f.items():
            number, order = key.split(".")
            measurement = scan["measurement"]
            # the #L columns are datasets; MCA spectra are groups measurement/mca_<i>
            labels = [k for k in measurement if silx.io.is_dataset(measurement[k])]
            rows = len(measurement[labels[0]]) if labels else 0
            positioners = scan["instrument/positioners"]
            motors = {
                k: float(positioners[k][()]) for k in positioners if positioners[k].shape == ()
            }
            found[_key(number, int(order))] = (labels, rows, motors)
    return found


def _spec2nexus(path: str) -> dict[str, Any]:
    from spec2nexus import spec

    found = {}
    for number, scan in spec.SpecDataFile(path).scans.items():
        scan.interpret()
        rows = len(scan.data[scan.L[0]]) if scan.L and scan.data else 0
        found[str(number)] = (list(scan.L), rows, dict(scan.positioner))
    return found


def _pymca(path: str) -> dict[str, Any]:
    from PyMca5.PyMcaIO import specfilewrapper

    sf = specfilewrapper.Specfile(path)
    sf.allmotors()  # the first scan's motor names: must not raise
    found = {}
    for i in range(sf.scanno()):
        s = sf[i]
        # as PyMca's SpecFileDataSource: a scan's motor names are those of its own file
        # header block (Specfile.allmotors() gives the first scan's only), and a scan
        # without data lines has 0 lines (lines() raises, alllabels() is empty: the
        # labels are in its #L line, as silx's SpecFile reads them then)
        motors = dict(zip(s.allmotors(), s.allmotorpos(), strict=False))
        try:
            rows = s.lines()
        except specfilewrapper.specfile.error:
            rows = 0
        if rows:
            labels = s.alllabels()
        else:
            labels = [n for n in s.header("L")[0][3:].split("  ") if n]
        found[_key(s.number(), s.order())] = (labels, rows, motors)
    return found


def _spec2nexus_converter(path: str) -> list[str]:
    """Convert with spec2nexus; silx must find a valid default plot in the output."""
    import h5py
    from spec2nexus import spec, writer

    data = spec.SpecDataFile(path)
    writer.Writer(data).save("converted.h5", data.getScanNumbers())
    with h5py.File("converted.h5", "r") as f:
        return [f"output {p}" for p in _silx_problems(f, None, None)]


SPEC_READERS = {
    "silx SpecFile": _silx_specfile,
    "silx.io.open": _silx_open,
    "spec2nexus": _spec2nexus,
    "PyMca5": _pymca,
    "spec2nexus converter": _spec2nexus_converter,
}


def _spec_child(path: str) -> dict[str, Any]:
    libc = ctypes.CDLL(None)
    result: dict[str, Any] = {"problems": [], "scans": {}}
    for reader, read in SPEC_READERS.items():
        libc.fflush(None)  # so the C parser's messages land after this reader's mark
        os.write(1, f"\n{MARK}{reader}\n".encode())
        try:
            found = read(path)
        except Exception as err:  # a reader crashing is a problem to report
            result["problems"].append(f"{reader}: fails: {type(err).__name__}: {err}")
            continue
        finally:
            libc.fflush(None)
        if isinstance(found, list):
            result["problems"] += [f"{reader}: {p}" for p in found]
        else:
            result["scans"][reader] = {
                n: (labels, rows, {k: float(v) for k, v in motors.items()})
                for n, (labels, rows, motors) in found.items()
            }
    return result


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # the readers' own deprecation noise is not ours
    kind, *args = sys.argv[1:]
    if kind == "nexus":
        out: Any = _nexus_child(json.loads(args[0]), args[1:])
    else:
        out = _spec_child(args[0])
    Path("result.json").write_text(json.dumps(out))
