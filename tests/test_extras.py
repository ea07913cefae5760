"""A missing extra gives one clean line naming the extra to install, never a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.config import SporeflowError
from sporeflow.config.extras import MissingExtra, extra_hint, has_modules, require_extra
from sporeflow.pipeline.cli.main import cli

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The CLI configures the ``sporeflow`` logger; put it back after the test."""
    logger = logging.getLogger("sporeflow")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def uninstall(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` and its submodules unimportable, as if not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def test_a_dotted_module_of_a_missing_package_is_missing_not_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "opentelemetry")
    assert not has_modules("opentelemetry.trace")
    with pytest.raises(MissingExtra, match=r"^tracing needs OpenTelemetry, which is not "
                                           r"installed; install it with: pip install "
                                           r"'sporeflow\[tracing\]'$"):
        require_extra("tracing", modules=("opentelemetry.trace",), package="OpenTelemetry",
                      extra="tracing")
    assert issubclass(MissingExtra, SporeflowError)
    assert has_modules("json", "xml.etree")


@pytest.mark.usefixtures("keep_logging")
def test_run_trace_without_opentelemetry_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "opentelemetry")
    result = CliRunner().invoke(cli, ["run", str(SMALL), "--trace", "--until-idle", "-q"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "MissingExtra: tracing needs OpenTelemetry, which is not installed; install it "
        "with: pip install 'sporeflow[tracing]'")
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("extra", "module"), [("metrics", "prometheus_client"),
                                               ("live", "rich"), ("watch", "watchfiles")])
def test_every_extra_names_its_install_command_the_same_way(
        monkeypatch: pytest.MonkeyPatch, extra: str, module: str) -> None:
    from sporeflow.pipeline.observe.live import _require_rich
    from sporeflow.pipeline.observe.prometheus import _require_client
    from sporeflow.pipeline.reload.watch import require_watchfiles

    require = {"metrics": _require_client, "live": _require_rich,
               "watch": require_watchfiles}[extra]
    uninstall(monkeypatch, module)
    with pytest.raises(MissingExtra, match=rf"install it with: {extra_hint(extra)}$".replace(
            "[", r"\[").replace("]", r"\]")):
        require()
