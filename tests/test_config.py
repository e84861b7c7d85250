from __future__ import annotations

from pathlib import Path

import pytest

from harchos_cli.config import MASK, Config
from harchos_cli.errors import UsageError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_flag_env_project_user_default(tmp_path: Path) -> None:
    user = write(
        tmp_path / "user.toml", "[http]\ntimeout = 3\nretries = 5\n[cache]\nenabled = false\n"
    )
    project = write(
        tmp_path / "proj" / "harchos.toml", "[settings.http]\ntimeout = 4\nretries = 6\n"
    )
    env = {"HARCHOS_HTTP_TIMEOUT": "5"}
    config = Config.load({"http.timeout": 6.5}, environ=env, project_file=project, user_file=user)
    assert (config.get("http.timeout"), config.origin("http.timeout")) == (6.5, "flag")
    config = Config.load(environ=env, project_file=project, user_file=user)
    assert (config.get("http.timeout"), config.origin("http.timeout")) == (5.0, "env")
    assert (config.get("http.retries"), config.origin("http.retries")) == (6, "project")
    assert (config.get("cache.enabled"), config.origin("cache.enabled")) == (False, "user")
    assert config.origin("provider") == "default"
    assert config.get("provider") == "auto"


def test_secrets_are_masked_in_describe(tmp_path: Path) -> None:
    config = Config.load(
        environ={"ELECTRICITYMAPS_API_TOKEN": "s3cret-token"},
        project_file=tmp_path / "none.toml",
        user_file=tmp_path / "none-user.toml",
    )
    assert config.get("electricitymaps.token") == "s3cret-token"
    rows = {row["key"]: row for row in config.describe()}
    assert rows["electricitymaps.token"]["value"] == MASK
    assert "s3cret-token" not in repr(config.describe())


def test_secret_in_project_file_is_refused(tmp_path: Path) -> None:
    project = write(tmp_path / "harchos.toml", '[settings.electricitymaps]\ntoken = "abc"\n')
    with pytest.raises(UsageError, match="secret") as caught:
        Config.load(environ={}, project_file=project, user_file=tmp_path / "u.toml")
    assert "abc" not in str(caught.value)


def test_bad_values_name_their_origin(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="HARCHOS_HTTP_TIMEOUT"):
        Config.load(
            environ={"HARCHOS_HTTP_TIMEOUT": "soon"},
            project_file=tmp_path / "p.toml",
            user_file=tmp_path / "u.toml",
        )


def test_malformed_user_file_is_a_usage_error(tmp_path: Path) -> None:
    user = write(tmp_path / "u.toml", "[http\n")
    with pytest.raises(UsageError, match="not valid TOML") as caught:
        Config.load(environ={}, project_file=tmp_path / "p.toml", user_file=user)
    assert caught.value.exit_code == 2


def test_project_file_is_found_in_a_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "harchos.toml", '[settings]\nprovider = "embedded"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    config = Config.load(environ={}, user_file=tmp_path / "u.toml")
    assert config.project_file == tmp_path / "harchos.toml"
    assert (config.get("provider"), config.origin("provider")) == ("embedded", "project")


def test_world_readable_user_file_with_secrets_warns(tmp_path: Path) -> None:
    user = write(tmp_path / "u.toml", '[watttime]\npassword = "pw"\n')
    user.chmod(0o644)
    config = Config.load(environ={}, project_file=tmp_path / "p.toml", user_file=user)
    assert config.warnings
    assert "chmod 600" in config.warnings[0]
    user.chmod(0o600)
    config = Config.load(environ={}, project_file=tmp_path / "p.toml", user_file=user)
    assert config.warnings == []
    assert config.get("watttime.password") == "pw"


def test_settings_must_be_a_table_and_values_scalars(tmp_path: Path) -> None:
    project = write(tmp_path / "harchos.toml", 'settings = "x"\n')
    with pytest.raises(UsageError, match="settings must be a table"):
        Config.load(environ={}, project_file=project, user_file=tmp_path / "u.toml")
    user = write(tmp_path / "u2.toml", "provider = [1, 2]\n")
    with pytest.raises(UsageError, match="bad value"):
        Config.load(environ={}, project_file=tmp_path / "none.toml", user_file=user)
