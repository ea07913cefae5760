"""Secrets never show: URL passwords and signing keys are masked in logs, errors, stats()
and the graph; YAML is read safely; handler paths resolve only beside the file or installed."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.config import (
    ConfigError,
    Secret,
    SecretFilter,
    check_organism,
    mask_in_logs,
    organism_from_dict,
    organism_from_text,
    read_secret_env,
    redact_text,
    redact_url,
    url_password,
)
from sporeflow.config.handlers import HandlerImportError, resolve_handler
from sporeflow.pipeline import Organism
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.observe.logs import configure_logging

PASSWORD = "s3cr3t-pa55"
KEY = "k3y-0f-the-0rganism"
URL = f"amqp://user:{PASSWORD}@127.0.0.1:5672/"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://user:secret@host", "amqp://user:***@host"),
        ("amqps://user:secret@host:5671/vhost?heartbeat=5", "amqps://user:***@host:5671/vhost"
                                                           "?heartbeat=5"),
        ("amqp://user:p%40ss@127.0.0.1:5672/", "amqp://user:***@127.0.0.1:5672/"),
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("amqp://guest@host/", "amqp://guest@host/"),
        ("amqp://host:5672/", "amqp://host:5672/"),
        ("memory", "memory"),
        ("amqp://user:secret@[::1", "amqp://user:***@[::1"),  # malformed: still hidden
    ],
)
def test_redact_url_hides_only_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redact_text_hides_every_url_password_in_prose() -> None:
    text = ("cannot reach amqp://u:one@h1/ nor 'redis://:two@h2:6379' (see "
            "http://h3:8080/a@b and amqps://u:th@ree@h4/)")
    assert redact_text(text) == (
        "cannot reach amqp://u:***@h1/ nor 'redis://:***@h2:6379' (see "
        "http://h3:8080/a@b and amqps://u:***@h4/)")


def test_url_password_is_percent_decoded() -> None:
    assert url_password("amqp://user:p%40ss@host/") == "p@ss"
    assert url_password("amqp://user@host/") is None
    assert url_password("memory") is None


def test_secret_prints_as_stars_and_compares_in_constant_time() -> None:
    secret = Secret(KEY, source="$KEY")
    assert str(secret) == "***"
    assert repr(secret) == "Secret(*** from $KEY)"
    assert KEY not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == KEY.encode()
    assert secret == Secret(KEY.encode())
    assert hash(secret) == hash(Secret(KEY.encode()))
    assert secret != Secret("other")


def test_read_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOREFLOW_TEST_SECRET", KEY)
    assert read_secret_env("SPOREFLOW_TEST_SECRET").reveal() == KEY.encode()
    monkeypatch.delenv("SPOREFLOW_TEST_SECRET")
    with pytest.raises(LookupError, match="'SPOREFLOW_TEST_SECRET' is not set"):
        read_secret_env("SPOREFLOW_TEST_SECRET")


# -- the log filter ---------------------------------------------------------------------------


@pytest.fixture
def log_output() -> Iterator[tuple[logging.Logger, list[str]]]:
    """A logger whose handler formats through a SecretFilter into a list of lines."""
    lines: list[str] = []

    class ToList(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ToList()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter())
    logger = logging.getLogger("sporeflow.test-secrets")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, lines
    finally:
        logger.handlers.clear()


def test_filter_masks_message_args_and_exceptions(
        log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    assert mask_in_logs(logger, Secret(KEY), None, "ab") == 1  # short values are ignored
    logger.debug("connecting to %s with %s", URL, KEY)
    logger.info(f"key inline: {KEY}, and as repr: {KEY!r}, dict {dict(key=KEY)}")
    logger.warning("mapping args: %(url)s", {"url": URL})
    try:
        raise RuntimeError(f"failed with {KEY} at {URL}")
    except RuntimeError:
        logger.exception("it broke")
    logger.error("abc is too short to be masked")
    output = "\n".join(lines)
    assert KEY not in output
    assert PASSWORD not in output
    assert "connecting to amqp://user:***@127.0.0.1:5672/ with ***" in output
    assert "RuntimeError: failed with *** at amqp://user:***@" in output
    assert "abc is too short" in output
    assert len(lines) == 5


def test_filter_masks_a_password_registered_from_the_organism(
        log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    spec = organism_from_dict({"organism": {"name": "quiet", "backend": URL},
                               "agents": {"a": {"handler": lambda spore, ctx: None}}})
    organism = Organism(spec)
    mask_in_logs(logger, url_password(spec.backend))
    logger.warning("the driver said: login as user with %s refused", PASSWORD)
    assert lines == ["WARNING sporeflow.test-secrets: the driver said: login as user with *** "
                     "refused"]
    assert organism.spec.backend == URL  # the runtime still has it, to connect


def test_configure_logging_installs_the_filter(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "DEBUG")
    try:
        logger = logging.getLogger("sporeflow.organism.x")
        logger.debug("url %s", URL)
        line = json.loads(capsys.readouterr().err.strip())
    finally:
        configure_logging("text", "WARNING")
    assert line["message"] == "url amqp://user:***@127.0.0.1:5672/"


# -- errors, stats, graph, and a whole run ------------------------------------------------------


def test_config_errors_never_quote_a_url_password() -> None:
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"backend": f"amqpx://user:{PASSWORD}@host/"},
                            "agents": {"a": {"handler": lambda spore, ctx: None}}})
    assert PASSWORD not in str(caught.value)
    assert "'amqpx://user:***@host/' is not a backend" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"name": f"amqp://user:{PASSWORD}@host/"},
                            "agents": {}})
    assert PASSWORD not in str(caught.value)


def write_secretive(tmp_path: Path) -> Path:
    (tmp_path / "leaky_handlers.py").write_text(textwrap.dedent("""\
        import os

        async def leak(spore, ctx):
            key = os.environ["SPOREFLOW_TEST_SIGNING_KEY"]
            ctx.logger.debug("careless: url=%s key=%s", spore.knowledge["url"], key)
            ctx.logger.warning(f"careless f-string: key={key!r}")
            raise RuntimeError(f"failed with key {key} at {spore.knowledge['url']}")
        """))
    path = tmp_path / "organism.yaml"
    path.write_text(textwrap.dedent(f"""\
        organism:
          name: quiet
          backend: {URL}
          signing_key_env: SPOREFLOW_TEST_SIGNING_KEY
        agents:
          leaky:
            handler: leaky_handlers:leak
            boot: {{url: "{URL}"}}
        """))
    return path


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_debug_run_with_a_url_password_and_a_key_never_prints_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_format: str) -> None:
    monkeypatch.setenv("SPOREFLOW_TEST_SIGNING_KEY", KEY)
    path = write_secretive(tmp_path)
    runner = CliRunner()
    try:
        # The memory backend runs the handler, which logs and raises the secrets; the
        # broker run fails to log in (these are not the broker's credentials).
        memory = runner.invoke(cli, ["run", str(path), "--until-idle", "--log-level", "DEBUG",
                                     "--log-format", log_format, "--backend", "memory"])
        broker = runner.invoke(cli, ["run", str(path), "--until-idle", "--log-level", "DEBUG",
                                     "--log-format", log_format])
        others = [runner.invoke(cli, args) for args in (
            ["check", str(path)], ["graph", str(path)], ["send", str(path), "--start", "--to",
                                                          "leaky", json.dumps({"url": URL})])]
    finally:
        configure_logging("text", "WARNING")
    assert memory.exit_code == 0, memory.output
    assert "careless: url=amqp://user:***@127.0.0.1:5672/ key=***" in memory.output
    assert "1 dead letter" in memory.output
    assert broker.exit_code == 1
    assert "amqp://user:***@127.0.0.1:5672/" in broker.output
    for result in (memory, broker, *others):
        assert PASSWORD not in result.output
        assert KEY not in result.output
        assert "secret" not in result.output.lower()


def test_stats_and_the_spec_repr_hold_no_secret(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("SPOREFLOW_TEST_SIGNING_KEY", KEY)
    organism = Organism(check_organism(write_secretive(tmp_path))[0])
    assert organism.spec.signing_key is not None
    for text in (json.dumps(organism.stats(), default=str), repr(organism.spec.signing_key)):
        assert KEY not in text
        assert PASSWORD not in text


# -- safe YAML, and handler paths ------------------------------------------------------------


@pytest.mark.parametrize("tag", ["!!python/object:os.system {}",
                                 "!!python/object/apply:os.system ['echo pwned']",
                                 "!!python/name:os.system"])
def test_python_tags_in_yaml_are_a_config_error(tag: str) -> None:
    with pytest.raises(ConfigError, match="could not determine a constructor for the tag"):
        organism_from_text(f"agents: {tag}\n")


@pytest.mark.parametrize("ref", ["../outside:fn", "{root}/outside:fn", "..outside:fn",
                                 ".outside:fn", "C:\\outside:fn", "outside:../fn"])
def test_handler_paths_are_module_names_not_file_paths(tmp_path: Path, ref: str) -> None:
    (tmp_path / "outside.py").write_text("raise SystemExit('imported!')\n")
    org = tmp_path / "org"
    org.mkdir()
    ref = ref.format(root=tmp_path)
    with pytest.raises(ConfigError) as caught:
        organism_from_text(f"agents: {{a: {{handler: '{ref}'}}}}\n", base_dir=org)
    [problem] = caught.value.problems
    assert problem.path == "agents.a.handler"
    assert "no file paths, no leading dots" in problem.message
    # The resolver itself refuses them too, whoever calls it.
    with pytest.raises(HandlerImportError, match="no file paths, no leading dots"):
        resolve_handler(ref, org)


def test_handler_modules_resolve_beside_the_file_not_in_a_sibling_folder(
        tmp_path: Path) -> None:
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "elsewhere_mod.py").write_text("def fn(spore, ctx):\n    pass\n")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "beside_mod.py").write_text("def fn(spore, ctx):\n    pass\n")
    spec = organism_from_text("agents: {a: {handler: 'beside_mod:fn'}}",
                              base_dir=tmp_path / "org")
    assert spec.agents["a"].handler_ref == "beside_mod:fn"
    with pytest.raises(ConfigError, match="neither in base_dir"):  # a text has no file
        organism_from_text("agents: {a: {handler: 'elsewhere_mod:fn'}}",
                           base_dir=tmp_path / "org")
