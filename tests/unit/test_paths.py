"""Data directories: safe names, staying inside the data root, group and modes, create-only."""

from __future__ import annotations

import grp
import os
import stat
from datetime import UTC, datetime

import pytest

from bluesky_recorders.errors import BsrecError
from bluesky_recorders.external import PathMap
from bluesky_recorders.paths import (
    DirectoryPolicy,
    PathExistsError,
    PathPolicyError,
    ensure_inside,
    experiment_dir,
    file_name,
    inside,
    run_directory,
    safe_name,
)

# 2026-11-21 12:00 UTC: November in every time zone.
NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp()


def other_group() -> grp.struct_group:
    """A group that exists and is not the process's own (so chown is visible)."""
    return next(g for g in grp.getgrall() if g.gr_gid != os.getgid())


def start(**experiment: object) -> dict:
    doc: dict = {"uid": "0123456789abcdef", "time": NOV, "scan_id": 7, "plan_name": "count"}
    if experiment:
        doc["experiment"] = {
            "proposal_id": "GUP-1",
            "pi": {"name": "", "last_name": "", "email": ""},
            "data_directory": "",
            **experiment,
        }
        doc["metadata_status"] = "ok"
    return doc


# -- safe_name ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Doe", "doe"),
        ("Müller", "muller"),
        ("Ødegård", "odegard"),
        ("José María", "jose_maria"),
        ("Łukasiewicz", "lukasiewicz"),
        ("Straße", "strasse"),
        ("O'Brien-Smith", "o_brien-smith"),
        ("../../etc", "etc"),
        ("/abs", "abs"),
        ("a/b\\c", "a_b_c"),
        ("a..b", "a.b"),
        ("...", "unknown"),
        (".hidden", "hidden"),
        ("-rf", "rf"),
        ("name.", "name"),
        ("tab\tand\nnewline", "tab_and_newline"),
        ("nul\0byte", "nul_byte"),
        ("山田", "unknown"),
        ("山田 Taro", "taro"),
        ("😀", "unknown"),
        ("ｆｕｌｌ", "full"),
        ("", "unknown"),
        ("   ", "unknown"),
        (None, "unknown"),
        (42, "42"),
    ],
)
def test_safe_name_hostile_and_unicode(text, expected):
    assert safe_name(text) == expected


def test_safe_name_results_are_single_safe_components():
    for text in ["../../etc", "/abs", "..", ".", "a/../b", "C:\\x", "~root", "$HOME", "*?"]:
        name = safe_name(text)
        assert name and "/" not in name and "\\" not in name and ".." not in name
        assert not name.startswith(".") and name == name.lower()


def test_names_differing_only_in_case_share_one_folder():
    assert safe_name("Doe") == safe_name("doe") == safe_name("DOE") == "doe"


def test_safe_name_caps_long_names_and_keeps_them_apart():
    a, b = "x" * 299 + "a", "x" * 299 + "b"
    assert len(safe_name(a)) == 64 and len(safe_name(b)) == 64
    assert safe_name(a) != safe_name(b)
    assert safe_name(a) == safe_name(a)  # deterministic
    assert len(safe_name("y" * 300, max_length=20)) == 20
    assert safe_name("z" * 64) == "z" * 64  # at the cap: unchanged


def test_safe_name_fallback():
    assert safe_name("山田", fallback="commissioning") == "commissioning"
    with pytest.raises(PathPolicyError, match="fallback"):
        safe_name("x", fallback="../x")
    with pytest.raises(PathPolicyError, match="fallback"):
        safe_name("x", fallback="")
    with pytest.raises(PathPolicyError, match="max_length"):
        safe_name("x", max_length=3)


def test_errors_are_bsrec_errors():
    assert issubclass(PathPolicyError, BsrecError) and issubclass(PathPolicyError, ValueError)
    assert issubclass(PathExistsError, BsrecError) and issubclass(PathExistsError, FileExistsError)


# -- inside / ensure_inside ------------------------------------------------------


def test_inside_and_ensure_inside(tmp_path):
    root = tmp_path / "data"
    (root / "2026-11").mkdir(parents=True)
    assert inside(root, "2026-11/doe")
    assert inside(root, root / "2026-11")
    assert inside(root, root)
    assert ensure_inside(root, "2026-11/doe") == root.resolve() / "2026-11" / "doe"
    for bad in ["../../etc", "/etc", str(tmp_path), "2026-11/../../x", str(tmp_path / "data2")]:
        assert not inside(root, bad), bad
        with pytest.raises(PathPolicyError, match="outside the data root") as err:
            ensure_inside(root, bad)
        assert bad in str(err.value)
    with pytest.raises(PathPolicyError, match="NUL"):
        ensure_inside(root, "a\0b")


def test_symlinks_pointing_out_are_refused(tmp_path):
    root = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "escape").symlink_to(elsewhere)
    (root / "dangling").symlink_to(tmp_path / "missing")
    (root / "fine").symlink_to(root / "real")
    assert not inside(root, "escape/doe")
    with pytest.raises(PathPolicyError, match="escape"):
        ensure_inside(root, "escape/doe")
    assert not inside(root, "dangling")
    assert inside(root, "fine/doe")


def test_a_symlinked_data_root_is_fine(tmp_path):
    real = tmp_path / "real-data"
    real.mkdir()
    (tmp_path / "data").symlink_to(real)
    assert ensure_inside(tmp_path / "data", "2026-11") == real.resolve() / "2026-11"
    assert inside(tmp_path / "data", real / "2026-11")


# -- experiment_dir / run_directory ---------------------------------------------


def test_experiment_dir(tmp_path):
    when = datetime(2026, 11, 3, 9, 30)
    assert experiment_dir(tmp_path, when=when, pi_last_name="Müller") == tmp_path / "2026-11/muller"
    commissioning = tmp_path / "2026-11/commissioning"
    assert experiment_dir(tmp_path, when=when, pi_last_name=None) == commissioning
    assert experiment_dir(tmp_path, when=when, pi_last_name="  ") == commissioning
    assert experiment_dir(tmp_path, when=NOV, pi_last_name="Doe") == tmp_path / "2026-11/doe"
    assert (
        experiment_dir(tmp_path, when=when, pi_last_name=None, fallback="staff")
        == tmp_path / "2026-11/staff"
    )
    with pytest.raises(PathPolicyError):
        experiment_dir(tmp_path, when=when, pi_last_name=None, fallback="../up")


def test_experiment_dir_for_a_name_with_no_ascii_form(tmp_path):
    yamada = experiment_dir(tmp_path, when=NOV, pi_last_name="山田")
    tanaka = experiment_dir(tmp_path, when=NOV, pi_last_name="田中")
    assert yamada.parent == tmp_path / "2026-11"
    assert yamada.name.startswith("pi-") and yamada != tanaka
    assert yamada == experiment_dir(tmp_path, when=NOV, pi_last_name="山田")


def test_run_directory_from_the_metadata_service(tmp_path):
    named = str(tmp_path / "2026-11" / "doe")
    expected = tmp_path.resolve() / "2026-11/doe"
    assert run_directory(tmp_path, start(data_directory=named)) == expected
    # relative to the data root
    assert run_directory(tmp_path, start(data_directory="2026-11/lee")) == (
        tmp_path.resolve() / "2026-11/lee"
    )
    # as the IOC sees the disk, translated
    doc = start(data_directory="/data/2026-11/doe")
    assert run_directory(tmp_path, doc, path_map=PathMap({"/data": str(tmp_path)})) == (
        tmp_path.resolve() / "2026-11/doe"
    )
    assert not (tmp_path / "2026-11").exists()  # never touches the disk


def test_run_directory_without_data_directory_uses_the_pi(tmp_path):
    doc = start(pi={"name": "Jane Doe", "last_name": "Doe", "email": ""})
    assert run_directory(tmp_path, doc) == tmp_path / "2026-11" / "doe"


def test_run_directory_of_old_runs_and_unavailable_metadata(tmp_path):
    assert run_directory(tmp_path, start()) == tmp_path / "2026-11" / "commissioning"
    unavailable = {**start(), "experiment": None, "metadata_status": "unavailable"}
    assert run_directory(tmp_path, unavailable) == tmp_path / "2026-11" / "commissioning"
    no_time = {"uid": "u1"}
    with pytest.raises(PathPolicyError, match="u1"):
        run_directory(tmp_path, no_time)


@pytest.mark.parametrize("named", ["/etc", "/data/../../etc", "../outside", "2026-11/../../x"])
def test_run_directory_refuses_directories_outside_the_root(tmp_path, named):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(PathPolicyError, match="outside the data root") as err:
        run_directory(root, start(data_directory=named))
    assert named in str(err.value)


def test_run_directory_refuses_a_symlink_out_of_the_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "2026-11").symlink_to(tmp_path / "elsewhere")
    named = str(root / "2026-11" / "doe")
    with pytest.raises(PathPolicyError, match="outside the data root") as err:
        run_directory(root, start(data_directory=named))
    assert named in str(err.value)


@pytest.mark.parametrize("named", ["", "."])
def test_run_directory_refuses_the_root_itself(tmp_path, named):
    doc = start(data_directory=str(tmp_path) if named == "" else named)
    with pytest.raises(PathPolicyError, match="data root itself"):
        run_directory(tmp_path, doc)


def test_run_directory_refuses_hidden_parts_and_non_strings(tmp_path):
    with pytest.raises(PathPolicyError, match="hidden"):
        run_directory(tmp_path, start(data_directory="2026-11/.doe"))
    with pytest.raises(PathPolicyError, match="control character"):
        run_directory(tmp_path, start(data_directory="2026-11/do\ne"))
    with pytest.raises(PathPolicyError, match="not a path string"):
        run_directory(tmp_path, start(data_directory=["2026-11"]))


# -- file_name --------------------------------------------------------------------


def test_file_name_templates():
    doc = start(pi={"name": "Jane Müller", "last_name": "Müller", "email": ""})
    assert file_name("{scan_id:05d}_{plan_name}_{uid:.8}.nxs", doc) == "00007_count_01234567.nxs"
    assert file_name("{experiment[pi][last_name]}.spec", doc) == "muller.spec"
    assert file_name("{sample}_{scan_id}.h5", doc, sample="Si/../../etc") == "si_._._etc_7.h5"
    assert file_name("{plan_name}.json", doc, plan_name="") == "unknown.json"
    assert file_name("run.nxs", doc) == "run.nxs"


def test_file_name_substituted_values_never_make_paths():
    doc = start()
    for hostile in ["../../etc/passwd", "/abs", "..", ".hidden", "a\\b", "x" * 300]:
        name = file_name("{v}.dat", doc, v=hostile)
        assert "/" not in name and "\\" not in name and ".." not in name
        assert not name.startswith(".") and len(name) <= 64 + len(".dat")


def test_file_name_missing_key_is_named():
    with pytest.raises(PathPolicyError, match="'sample'"):
        file_name("{sample}.nxs", start())
    with pytest.raises(PathPolicyError, match=r"experiment\[pi\]"):
        file_name("{experiment[pi][last_name]}.nxs", start())
    with pytest.raises(PathPolicyError, match="positional"):
        file_name("{}.nxs", start())
    with pytest.raises(PathPolicyError, match="attribute"):
        file_name("{uid.__class__}.nxs", start())
    with pytest.raises(PathPolicyError, match="cannot format"):
        file_name("{plan_name:05d}.nxs", start())


@pytest.mark.parametrize("template", ["../{uid}.nxs", "sub/{uid}.nxs", "a\\{uid}", "/{uid}"])
def test_file_name_refuses_separators_in_the_template(template):
    with pytest.raises(PathPolicyError, match="path"):
        file_name(template, start())


@pytest.mark.parametrize("template", ["", ".{uid}", "..", "{uid}" + "x" * 260])
def test_file_name_refuses_names_that_are_not_file_names(template):
    with pytest.raises(PathPolicyError, match="template"):
        file_name(template, start())


# -- DirectoryPolicy --------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"dir_mode": 0o2777},
        {"dir_mode": 0o777},
        {"file_mode": 0o666},
        {"file_mode": 0o662},
        {"file_mode": 0o4660},
        {"dir_mode": 0o670},
        {"file_mode": 0o460},
        {"dir_mode": "2770"},
        {"dir_mode": 0o12770},
    ],
)
def test_policy_refuses_bad_modes(options):
    with pytest.raises(PathPolicyError):
        DirectoryPolicy(**options)


def test_policy_refuses_an_unknown_group():
    with pytest.raises(PathPolicyError, match="no-such-group-bsrec"):
        DirectoryPolicy(group="no-such-group-bsrec")
    with pytest.raises(PathPolicyError):
        DirectoryPolicy(group=-1)


def test_policy_resolves_group_names():
    g = other_group()
    assert DirectoryPolicy(group=g.gr_name).gid == g.gr_gid
    assert DirectoryPolicy(group=g.gr_gid).gid == g.gr_gid
    assert DirectoryPolicy().gid is None
    assert "0o2770" in repr(DirectoryPolicy())


def test_make_dirs_modes_and_group(tmp_path):
    g = other_group()
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    policy = DirectoryPolicy(group=g.gr_name)
    old = os.umask(0o077)  # a strict umask must not lock the group out
    try:
        made = policy.make_dirs(root, root / "2026-11" / "doe")
    finally:
        os.umask(old)
    assert made == root.resolve() / "2026-11" / "doe"
    for level in (root / "2026-11", made):
        st = os.stat(level)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o2770, oct(st.st_mode)
        assert st.st_mode & stat.S_ISGID  # setgid kept: new files inherit the group
        assert not st.st_mode & stat.S_IWOTH
        assert st.st_gid == g.gr_gid
    # the existing root is left as it was
    st = os.stat(root)
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_gid == os.getgid()


def test_make_dirs_leaves_existing_directories_alone(tmp_path):
    existing = tmp_path / "2026-11"
    existing.mkdir(mode=0o750)
    os.chmod(existing, 0o750)
    policy = DirectoryPolicy(group=other_group().gr_gid)
    policy.make_dirs(tmp_path, existing / "doe")
    st = os.stat(existing)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == os.getgid()
    assert stat.S_IMODE(os.stat(existing / "doe").st_mode) == 0o2770
    assert policy.make_dirs(tmp_path, existing / "doe") == (existing / "doe").resolve()  # again


def test_make_dirs_creates_a_missing_root_and_honours_other_modes(tmp_path):
    root = tmp_path / "new-root"
    made = DirectoryPolicy(dir_mode=0o750).make_dirs(root, "a/b")
    for level in (root, root / "a", made):
        assert stat.S_IMODE(os.stat(level).st_mode) == 0o750
    # umask does not widen either: the configured mode is exact
    old = os.umask(0)
    try:
        made = DirectoryPolicy(dir_mode=0o700).make_dirs(root, "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700


def test_make_dirs_refuses_outside_and_non_directories(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "out").symlink_to(tmp_path / "elsewhere")
    (root / "file").write_text("x")
    policy = DirectoryPolicy()
    for bad in ["../x", "/etc/bsrec", "out/doe"]:
        with pytest.raises(PathPolicyError, match="outside the data root"):
            policy.make_dirs(root, bad)
    with pytest.raises(PathPolicyError, match="not one"):
        policy.make_dirs(root, "file/doe")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_prepare_run(tmp_path):
    doc = start(pi={"name": "", "last_name": "Doe", "email": ""})
    made = DirectoryPolicy().prepare_run(tmp_path, doc)
    assert made == tmp_path.resolve() / "2026-11" / "doe" and made.is_dir()


def test_open_new_modes_group_and_create_only(tmp_path):
    g = other_group()
    policy = DirectoryPolicy(group=g.gr_gid)
    target = tmp_path / "00007_count_01234567.nxs"
    old = os.umask(0o077)
    try:
        with policy.create_file(target) as f:
            f.write(b"first")
    finally:
        os.umask(old)
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == g.gr_gid
    with pytest.raises(PathExistsError, match="refusing to overwrite") as err:
        policy.create_file(target)
    assert str(target) in str(err.value)
    with pytest.raises(FileExistsError):
        policy.open_new(target, "x")
    assert target.read_bytes() == b"first"  # untouched
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o660


def test_open_new_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(PathExistsError):
            DirectoryPolicy().create_file(tmp_path / name)
    assert victim.read_bytes() == b"keep" and not (tmp_path / "nowhere").exists()


def test_open_new_text_and_read_write_modes(tmp_path):
    policy = DirectoryPolicy(file_mode=0o640)
    with policy.open_new(tmp_path / "scan.spec", "x") as f:
        f.write("#F scan.spec\n")
    assert (tmp_path / "scan.spec").read_text() == "#F scan.spec\n"
    assert stat.S_IMODE(os.stat(tmp_path / "scan.spec").st_mode) == 0o640
    with policy.open_new(tmp_path / "rw.bin", "x+b") as f:
        f.write(b"abc")
        f.seek(0)
        assert f.read() == b"abc"


@pytest.mark.parametrize("mode", ["wb", "w", "ab", "r+b", "xbt", "xq"])
def test_open_new_refuses_modes_that_could_overwrite(tmp_path, mode):
    with pytest.raises(PathPolicyError, match="created only"):
        DirectoryPolicy().open_new(tmp_path / "f", mode)
    assert not (tmp_path / "f").exists()


def test_open_new_refuses_outside_its_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(PathPolicyError, match="outside"):
        DirectoryPolicy().open_new(tmp_path / "x.nxs", root=root)
    assert not (tmp_path / "x.nxs").exists()


def test_open_new_in_a_missing_directory_names_the_file(tmp_path):
    target = tmp_path / "missing" / "x.nxs"
    with pytest.raises(FileNotFoundError, match="x.nxs"):
        DirectoryPolicy().create_file(target)


def test_apply_file_for_files_libraries_create(tmp_path):
    g = other_group()
    target = tmp_path / "made-by-h5py.h5"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    DirectoryPolicy(group=g.gr_name).apply_file(target)
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == g.gr_gid


def test_file_name_is_on_the_policy_too():
    assert DirectoryPolicy.file_name("{plan_name}.nxs", start()) == "count.nxs"


def test_many_threads_creating_the_same_directories_all_succeed(tmp_path):
    """Recorders run on their own threads and prepare the same run directory at once."""
    import threading

    policy = DirectoryPolicy()
    errors = []
    barrier = threading.Barrier(8)

    def make(i):
        barrier.wait()
        try:
            for depth in range(20):
                policy.make_dirs(tmp_path, tmp_path / "a" / str(depth) / "b" / "c")
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all((tmp_path / "a" / str(d) / "b" / "c").is_dir() for d in range(20))
