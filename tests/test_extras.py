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


# What the extras bring (and what those bring along), none of which the base install has.
EXTRAS_ONLY = ("aio_pika", "aiormq", "pamqp", "rich", "prometheus_client", "watchfiles",
               "cryptography", "opentelemetry", "pydantic")
NO_EXTRAS = f"""
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NotInstalled())
from sporeflow.pipeline.cli.main import main
sys.argv = ["sporeflow", "run", sys.argv[1], "--until-idle", "-q"]
main()
"""


def test_the_base_install_runs_an_organism_without_any_extra() -> None:
    """Found running README's first command in a fresh venv: the broker codec imported
    pamqp (aio-pika's) at load, so 'pip install -e .' could not run the demo."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", NO_EXTRAS, str(SMALL)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
