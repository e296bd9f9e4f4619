"""Configuration (resolver.config): defaults, validation naming the variable, redaction."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from registry.errors import ConfigError
from resolver.config import SETTINGS, Config

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_defaults() -> None:
    config = Config.from_env({})
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.data_dir == Path(".data")
    assert config.max_body_bytes == 1048576
    assert config.db_pool_size == 10
    assert config.log_level == "INFO"
    assert config.database_url is None
    assert config.bootstrap_prefix is None
    assert config.bootstrap_secret is None
    assert config.workers == (os.cpu_count() or 1)


def test_defaults_agree_with_the_dataclass() -> None:
    """The documented defaults (SETTINGS) and Config() give the same configuration."""
    from_env, plain = Config.from_env({}), Config()
    for f in fields(Config):
        if f.name != "workers":  # Config() says 1; the environment default is the core count
            assert getattr(from_env, f.name) == getattr(plain, f.name), f.name


def test_empty_variable_means_default() -> None:
    assert Config.from_env({"IDNODE_PORT": ""}).port == 8000


def test_does_not_read_the_process_environment_when_given_a_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDNODE_PORT", "9999")
    assert Config.from_env({}).port == 8000
    assert Config.from_env().port == 9999


def test_valid_values() -> None:
    config = Config.from_env(
        {
            "IDNODE_HOST": "0.0.0.0",
            "IDNODE_PORT": " 65535 ",
            "IDNODE_DATA_DIR": "/var/lib/idnode",
            "DATABASE_URL": "postgres://u:p@db/idnode",
            "IDNODE_BOOTSTRAP_PREFIX": "88.118.8",
            "IDNODE_BOOTSTRAP_SECRET": "s3cret",
            "IDNODE_WORKERS": "3",
            "IDNODE_MAX_BODY_BYTES": "1024",
            "IDNODE_DB_POOL_SIZE": "1",
            "IDNODE_LOG_LEVEL": "debug",
            "IDNODE_CACHE_MAX_ENTRIES": "0",
        }
    )
    assert (config.host, config.port) == ("0.0.0.0", 65535)
    assert config.data_dir == Path("/var/lib/idnode")
    assert config.database_url == "postgres://u:p@db/idnode"
    assert (config.bootstrap_prefix, config.bootstrap_secret) == ("88.118.8", "s3cret")
    assert (config.workers, config.max_body_bytes, config.db_pool_size) == (3, 1024, 1)
    assert config.log_level == "DEBUG"
    assert config.cache_max_entries == 0
    assert Config.from_env({"IDNODE_PORT": "1"}).port == 1
    assert Config.from_env({"DATABASE_URL": "postgresql:///x"}).database_url == "postgresql:///x"


INVALID = [
    ("IDNODE_PORT", "abc"),
    ("IDNODE_PORT", "0"),
    ("IDNODE_PORT", "70000"),
    ("IDNODE_PORT", "-1"),
    ("IDNODE_PORT", "80.5"),
    ("DATABASE_URL", "mysql://x"),
    ("DATABASE_URL", "localhost:5432"),
    ("IDNODE_BOOTSTRAP_PREFIX", "a/b"),
    ("IDNODE_BOOTSTRAP_PREFIX", "88..1"),
    ("IDNODE_LOG_LEVEL", "LOUD"),
    ("IDNODE_MAX_BODY_BYTES", "10"),
    ("IDNODE_MAX_BODY_BYTES", "big"),
    ("IDNODE_DB_POOL_SIZE", "0"),
    ("IDNODE_WORKERS", "0"),
    ("IDNODE_HOST", "   "),
    ("IDNODE_CACHE_MAX_AGE", "0"),
    ("IDNODE_CACHE_NEGATIVE_TTL", "-1"),
]


@pytest.mark.parametrize(("var", "text"), INVALID)
def test_invalid_value_names_the_variable(var: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({var: text})
    message = str(err.value)
    assert message.startswith(f"{var}: "), message
    assert "\n" not in message
    assert err.value.message == message


def test_every_setting_has_a_variable_and_help() -> None:
    assert set(SETTINGS) == {f.name for f in fields(Config)} - {"sources"}
    envs = [s.env for s in SETTINGS.values()]
    assert len(envs) == len(set(envs))
    assert all(s.help for s in SETTINGS.values())


# --- describe: secrets redacted -----------------------------------------------------------------


def test_describe_redacts_secrets() -> None:
    config = Config(
        bootstrap_prefix="88.118.8",
        bootstrap_secret="hunter2-bootstrap",
        database_url="postgresql://idnode:pa55word@db.example/idnode",
    )
    rows = config.describe()
    shown = {env: value for env, value, _, _ in rows}
    assert shown["IDNODE_BOOTSTRAP_SECRET"] == "(set, redacted)"
    assert shown["DATABASE_URL"] == "(set, redacted)"
    assert shown["IDNODE_BOOTSTRAP_PREFIX"] == "88.118.8"
    assert shown["IDNODE_PORT"] == "8000"
    everything = repr(rows)
    assert "hunter2" not in everything
    assert "pa55word" not in everything
    assert len(rows) == len(SETTINGS)


def test_describe_unset() -> None:
    shown = {env: value for env, value, _, _ in Config().describe()}
    assert shown["IDNODE_BOOTSTRAP_SECRET"] == "(unset)"
    assert shown["DATABASE_URL"] == "(unset)"


# --- the TOML file (IDNODE_CONFIG) under the environment ----------------------------------------


def test_file_under_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "idnode.toml"
    path.write_text(
        'port = 9100\nhost = "0.0.0.0"\ndev_mode = true\nread_rate = 12.5\n'
        'bootstrap_secret = "from-the-file"\n'
    )
    config = Config.from_env({"IDNODE_CONFIG": str(path), "IDNODE_PORT": "9200"})
    assert config.port == 9200  # the environment wins
    assert config.host == "0.0.0.0" and config.dev_mode is True and config.read_rate == 12.5
    rows = {env: (value, source) for env, value, source, _ in config.describe()}
    assert rows["IDNODE_PORT"] == ("9200", "IDNODE_PORT")
    assert rows["IDNODE_HOST"] == ("0.0.0.0", f"host in {path}")
    assert rows["IDNODE_BOOTSTRAP_SECRET"] == ("(set, redacted)", f"bootstrap_secret in {path}")
    assert rows["IDNODE_CACHE_MAX_AGE"] == ("3600", "default")
    assert "from-the-file" not in repr(config.describe())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port = 0\n", "port in {path}: must be an integer from 1 to 65535"),
        ('port = "x"\n', "port in {path}: cannot read 'x'"),
        ("no_such_setting = 1\n", "IDNODE_CONFIG: unknown setting 'no_such_setting' in {path}"),
        ("port = [1, 2]\n", "port in {path}: must be a string, number or boolean"),
        ("port = \n", "IDNODE_CONFIG: {path} is not valid TOML"),
        ("sources = 1\n", "IDNODE_CONFIG: unknown setting 'sources'"),
    ],
)
def test_bad_file_names_the_key_and_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "idnode.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"IDNODE_CONFIG": str(path)})
    assert expected.format(path=path) in caught.value.message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"IDNODE_CONFIG": str(tmp_path / "absent.toml")})
    assert caught.value.message.startswith("IDNODE_CONFIG: cannot read")


# --- through the command line -------------------------------------------------------------------


def test_cli_reports_an_invalid_setting_in_one_line(cli: Cli) -> None:
    result = cli("prefix", "list", env={"IDNODE_PORT": "abc"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "IDNODE_PORT" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_config_show_redacts(cli: Cli) -> None:
    result = cli(
        "config",
        "show",
        env={"IDNODE_BOOTSTRAP_SECRET": "hunter2-cli", "IDNODE_BOOTSTRAP_PREFIX": "88.300.0"},
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2-cli" not in result.stdout + result.stderr
    assert "IDNODE_BOOTSTRAP_SECRET=(set, redacted)" in result.stdout
    assert "DATABASE_URL=(set, redacted)" in result.stdout
    assert "IDNODE_BOOTSTRAP_PREFIX=88.300.0    # from IDNODE_BOOTSTRAP_PREFIX:" in result.stdout
    assert "IDNODE_CACHE_MAX_AGE=3600    # from default:" in result.stdout


def test_readme_documents_every_setting_with_its_default() -> None:
    """The README's configuration table lists exactly the settings, each with its default."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    rows = dict(re.findall(r"^\| `((?:IDNODE_|DATABASE_URL)\w*)` \| ([^|]+) \|", readme, re.M))
    assert set(rows) == {s.env for s in SETTINGS.values()}
    for setting in SETTINGS.values():
        shown = rows[setting.env].strip()
        if setting.default is None:
            assert shown.startswith(("unset", "the core count")), (setting.env, shown)
        else:
            assert shown == f"`{setting.default}`", (setting.env, shown)
