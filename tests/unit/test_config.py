"""Recorder sets from TOML: what works, and every mistake named by file, line and key."""

from pathlib import Path

import pytest

from bluesky_recorders.config import (
    RECORDER_KINDS,
    default_config_path,
    load_config,
    load_recorder_set,
)
from bluesky_recorders.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "set.toml"
    path.write_text(text)
    return path


def test_the_default_file_is_the_repository_one_and_is_valid(tmp_path, monkeypatch):
    monkeypatch.delenv("BSREC_CONFIG", raising=False)
    monkeypatch.delenv("BSREC_DATA_ROOT", raising=False)
    assert default_config_path() == REPO / "recorders" / "default.toml"
    config = load_config(data_root=tmp_path)
    assert [r.name for r in config.recorders] == [
        "console", "nexus", "catalog", "spec", "jsonl", "feed", "plots", "shm"
    ]
    assert config.settings.data_root == tmp_path
    assert (
        config.settings.path_map.translate("/detector-disk/a.h5")
        == f"{tmp_path}/detector-disk/a.h5"
    )
    catalog = config.recorders[2]
    assert catalog.options["directory"] == f"{tmp_path}/catalog"


def test_every_file_in_recorders_is_valid(tmp_path):
    files = sorted((REPO / "recorders").glob("*.toml"))
    assert files
    for path in files:
        load_config(path, data_root=tmp_path)


def test_env_data_root_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BSREC_DATA_ROOT", str(tmp_path / "x"))
    config = load_config(text='[settings]\ndata_root = "/elsewhere"\n')
    assert config.settings.data_root == tmp_path / "x"


def test_malformed_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, '[settings]\ndata_root = "/x"\n[recorders.console\nenabled = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_unknown_option_names_file_line_key_and_known_options(tmp_path):
    path = write(
        tmp_path,
        '[settings]\ndata_root = "/x"\n\n[recorders.console]\nenabled = true\nprogres = false\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}:6" in msg and "progres" in msg and "progress" in msg and "on_error" in msg


def test_unknown_recorder_kind_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "[recorders.nexsu]\nenabled = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}:1" in msg and "'nexsu'" in msg
    for kind in RECORDER_KINDS:
        assert kind in msg


def test_unknown_setting_and_table(tmp_path):
    with pytest.raises(ConfigError, match=r"set.toml:2: \[settings\] dataroot"):
        load_config(write(tmp_path, "[settings]\ndataroot = '/x'\n"))
    with pytest.raises(ConfigError, match="unknown table 'recorder'"):
        load_config(write(tmp_path, "[recorder.console]\n"))


def test_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match="enabled: must be true or false"):
        load_config(write(tmp_path, "[recorders.console]\nenabled = 'yes'\n"))
    with pytest.raises(ConfigError, match="drain_timeout: must be a number"):
        load_config(write(tmp_path, "[settings]\ndrain_timeout = 'long'\n"))


def test_bad_option_value_names_the_recorder(tmp_path):
    path = write(tmp_path, "[recorders.console]\non_error = 'explode'\n")
    with pytest.raises(ConfigError) as info:
        load_recorder_set(path, data_root=tmp_path)
    assert f"{path}:1" in str(info.value) and "on_error" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_build_a_set_with_a_renamed_recorder_and_a_disabled_one(tmp_path):
    text = "[recorders.screen]\nkind = 'console'\n\n[recorders.catalog]\nenabled = false\n"
    rs = load_recorder_set(text=text, data_root=tmp_path)
    assert list(rs.recorders) == ["screen"]
    assert rs.recorders["screen"].kind == "console" and rs.recorders["screen"].on_error == "warn"
    assert rs.run_log.path == tmp_path / "bsrec-runs.sqlite"
    rs.close()
    only = load_recorder_set(text=text, data_root=tmp_path, only=["catalog"])
    assert list(only.recorders) == ["catalog"]
    only.close()


def test_group_and_modes(tmp_path):
    config = load_config(text="[settings]\ndir_mode = 0o2750\nfile_mode = '640'\n")
    assert (config.settings.dir_mode, config.settings.file_mode) == (0o2750, 0o640)
    with pytest.raises(ConfigError, match=r"set.toml:2: \[settings\] dir_mode"):
        load_config(write(tmp_path, "[settings]\ndir_mode = 0o2777\n"))  # world-writable
    with pytest.raises(ConfigError, match=r"\[settings\] file_mode: must be an octal mode"):
        load_config(write(tmp_path, "[settings]\nfile_mode = 'rw-rw----'\n"))
    with pytest.raises(ConfigError, match=r"\[settings\] group"):
        load_config(write(tmp_path, "[settings]\ngroup = 'no-such-group-here'\n"))


def test_the_run_log_and_catalog_folders_get_the_configured_modes(tmp_path):
    import stat

    from bluesky_recorders.testing import feed, scalar_run

    rs = load_recorder_set(
        text="[settings]\ndir_mode = 0o2750\nfile_mode = 0o640\n[recorders.console]\nfile = '-'\n",
        data_root=tmp_path / "root",
    )
    feed(rs, scalar_run(2))
    rs.close()
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o2750
    assert stat.S_IMODE((tmp_path / "root" / "bsrec-runs.sqlite").stat().st_mode) == 0o640
