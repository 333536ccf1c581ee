"""The ``pushsvc`` command: the server as ``twistd -n --pidfile= pushsvc`` runs
it, under any kind of install, and two helpers for the sample files.

    pushsvc [options]            the server, in the foreground (pushsvc --help)
    pushsvc sample-config        print the sample config file (etc/pushsvc.toml)
    pushsvc copy-samples DIR     copy the sample files and examples/ into DIR

Why not just ``twistd``: twistd finds its plugins by scanning the
``twisted/plugins`` folders on ``sys.path`` (and caches what it found in
``dropin.cache`` there); an install that keeps
``twisted/plugins/pushsvc_plugin.py`` out of that scan (setuptools' import
finder for editable installs does) leaves twistd with "Unknown command:
pushsvc". This command hands twistd the ServiceMaker itself, so the run is the
same as ``twistd -n --pidfile= pushsvc`` (options, foreground, no pid file,
signals, one-line errors, exit codes, the log on stdout) whatever the install.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from twisted.application.service import ServiceMaker

from . import tap

COMMANDS = """
Commands (instead of options):
  pushsvc sample-config        print the sample config file (etc/pushsvc.toml)
  pushsvc copy-samples DIR     copy the sample config, the systemd unit, the nginx
                               example (etc/) and the examples/ into DIR
"""

# The sample files, as paths relative to the checkout, and examples/*.py. A
# wheel carries them in pushsvc/share/ with the same layout (setup.py's
# SAMPLES, copied there).
CONFIGS = ("etc/pushsvc.toml", "etc/pushsvc.service", "etc/nginx-pushsvc.conf")


def samples() -> list[str]:
    examples = sorted((share_root() / "examples").glob("*.py"))
    return [*CONFIGS, *(f"examples/{path.name}" for path in examples)]


class Options(tap.Options):
    """pushsvc.tap.Options, with the two commands in --help."""

    def getUsage(self, width=None):
        return super().getUsage(width) + COMMANDS


makeService = tap.makeService

# The same maker as the twistd plugin's (twisted/plugins/pushsvc_plugin.py),
# with the Options above.
service_maker = ServiceMaker(
    "pushsvc", "pushsvc.cli", "Real-time WebSocket push server", "pushsvc")


def _runner_options():
    """twistd's ServerOptions, knowing pushsvc as its only sub-command.

    ``subCommands`` is usage.Options' public hook for sub-commands, and
    twistd's runner takes the maker from ``loadedPlugins``, which this
    property fills as twistd's own does. The alternatives use private names:
    ServerOptions._getPlugins, or twist's runner
    (twisted.application.twist._twist, twisted.application.runner._runner),
    and ``twist`` runs without twistd's foreground options.
    """
    from twisted.scripts.twistd import ServerOptions

    class RunnerOptions(ServerOptions):

        @property
        def subCommands(self):
            self.loadedPlugins = {service_maker.tapname: service_maker}
            yield (service_maker.tapname, None, service_maker.options,
                   service_maker.description)

        def getSynopsis(self):  # --help says "Usage: pushsvc [options]"
            return "Usage:"

    return RunnerOptions()


def share_root() -> Path:
    """Where the samples are: pushsvc/share/ in an installed wheel, else the
    checkout this package is in (an editable install, or no install)."""
    package = Path(__file__).resolve().parent
    share = package / "share"
    return share if share.is_dir() else package.parent


def _sample(relative: str) -> Path:
    path = share_root() / relative
    if not path.is_file():
        _fail(f"the sample file {relative} is missing from this install ({path})")
    return path


def _fail(message: str, status: int = 1):
    sys.stderr.write(f"pushsvc: {message}\n")
    raise SystemExit(status)


def sample_config() -> None:
    sys.stdout.write(_sample("etc/pushsvc.toml").read_text(encoding="utf-8"))


def copy_samples(target: str) -> None:
    """Copy the samples into ``target`` (created if need be); an existing file is
    not overwritten: the command stops before copying anything."""
    sources = [(relative, _sample(relative)) for relative in samples()]
    taken = [relative for relative, _ in sources
             if os.path.lexists(os.path.join(target, relative))]
    if taken:
        _fail(f"{os.path.join(target, taken[0])} exists; not overwriting anything")
    for relative, source in sources:
        destination = os.path.join(target, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(source, destination)
        print(destination)


def main(argv: list[str] | None = None) -> None:
    """The ``pushsvc`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = _commands_and_options(argv)
    except BrokenPipeError:  # `pushsvc --help | head -n 1`: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1)
    if config is not None:
        from twisted.scripts.twistd import runApp
        runApp(config)


def _commands_and_options(argv: list[str]):
    """Run a command (None), or parse the options: twistd's config to run."""
    if argv[:1] == ["sample-config"]:
        if len(argv) != 1:
            _fail("sample-config takes no arguments", 2)
        sample_config()
        return None
    if argv[:1] == ["copy-samples"]:
        if len(argv) != 2:
            _fail("usage: pushsvc copy-samples DIR", 2)
        copy_samples(argv[1])
        return None

    from twisted.python import usage

    config = _runner_options()
    try:
        config.parseOptions(["--nodaemon", "--pidfile=", service_maker.tapname, *argv])
    except usage.UsageError as e:  # Options already says its own mistakes in one line
        _fail(str(e), 2)
    return config


if __name__ == "__main__":
    main()
