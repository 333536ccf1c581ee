"""pushsvc installed as a user installs it, then run from there.

- A wheel built from (a copy of) this checkout, installed into a fresh venv:
  the ``pushsvc`` command serves /healthz, a WebSocket client gets its
  welcome and a push, SIGTERM stops it with status 0; ``twistd -n pushsvc``
  finds the plugin; ``pushsvc sample-config`` prints the shipped sample.
- An editable install (``pip install -e .``, setuptools' default mode, and
  ``editable_mode=compat``) in a fresh venv: ``pushsvc`` and
  ``twistd -n pushsvc`` both serve.

No download: the wheel is built without build isolation (the running venv's
setuptools and wheel), installed with ``--no-index --no-deps``, and each
fresh venv reaches the dependencies through a ``.pth`` file naming a folder
of links to the running venv's site-packages, less pushsvc itself.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from tests.helpers import Child, ChildTestCase, eventually, free_port, run

ROOT = Path(__file__).resolve().parent.parent

# Not part of a fresh clone: left out of the copy that is built.
JUNK = shutil.ignore_patterns(".git", ".venv", "venv", "_trial_temp*", "build", "dist",
                              "*.egg-info", "node_modules", "__pycache__", "dropin.cache",
                              "pushsvc-admin.sock*", "twistd.pid", "twistd.log*")

# The environment of every child: nothing that would lead it to the checkout.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
ENV.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

TWISTD = """#!{python}
import sys
from twisted.scripts.twistd import run
sys.exit(run())
"""


class InstallTests(ChildTestCase):

    timeout = 180

    def setUp(self):
        super().setUp()
        # setuptools' bdist_wheel came with the wheel package before 70.1.
        import setuptools
        version = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
        if version < (64, 0) or (version < (70, 1) and not importlib.util.find_spec("wheel")):
            message = (f"setuptools {setuptools.__version__} without the wheel package: "
                       "install the test extras (pip install -e '.[test]')")
            if os.environ.get("CI") == "true":
                self.fail(message)
            raise SkipTest(message)

    async def sh(self, *argv: str, cwd: str | None = None) -> str:
        """Run ``argv`` to its end; its output (it must exit 0)."""
        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env=ENV, path=cwd or self.cwd)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"{' '.join(argv)}\n{output}")
        return out.decode("utf-8", "replace")

    def checkout_copy(self) -> str:
        """This checkout as a fresh clone has it, in the test's folder."""
        source = os.path.join(self.cwd, "src")
        shutil.copytree(ROOT, source, ignore=JUNK, symlinks=True)
        return source

    def deps_folder(self) -> str:
        """Links to what the running venv has installed, except pushsvc."""
        folder = os.path.join(self.cwd, "deps")
        os.makedirs(folder)
        for site in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")):
            for name in os.listdir(site):
                if name.startswith(("pushsvc", "__editable__", "__pycache__")) or \
                        name.endswith((".pth", ".egg-link")):
                    continue
                if not os.path.lexists(os.path.join(folder, name)):
                    os.symlink(os.path.join(site, name), os.path.join(folder, name))
        return folder

    async def venv(self, name: str) -> str:
        """A fresh venv (no pip of its own) that sees the dependencies; its
        bin folder, with a ``twistd`` as pip would write it."""
        home = os.path.join(self.cwd, name)
        await self.sh(sys.executable, "-m", "venv", "--without-pip", home)
        python = os.path.join(home, "bin", "python")
        site = (await self.sh(python, "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])")).strip()
        deps = os.path.join(self.cwd, "deps")
        if not os.path.isdir(deps):
            self.deps_folder()
        with open(os.path.join(site, "_pushsvc_test_deps.pth"), "w") as f:
            f.write(deps + "\n")
        twistd = os.path.join(home, "bin", "twistd")
        with open(twistd, "w") as f:
            f.write(TWISTD.format(python=python))
        os.chmod(twistd, 0o755)
        return os.path.join(home, "bin")

    def spawn_in(self, argv: list[str], cwd: str) -> Child:
        child = Child()
        reactor.spawnProcess(child, argv[0], argv, env=ENV, path=cwd)
        self.addCleanup(child.kill)
        return child

    def run_folder(self, name: str) -> str:
        folder = os.path.join(self.cwd, name)
        os.makedirs(folder)
        return folder

    async def serves(self, argv: list[str], with_client: bool = False) -> None:
        """``argv`` (with --port added) serves /healthz, and a client if
        asked; SIGTERM stops it with status 0."""
        port = free_port()
        child = self.spawn_in([*argv, "--port", str(port)], self.run_folder(f"run-{port}"))
        await self.wait_serving(child, port)
        if with_client:
            c = await self.client(user="alice")
            self.assertEqual(c.frames[0]["op"], "welcome")
            self.assertTrue(c.session)
            msg_id = await self.push({"user": "alice"}, "from an installed pushsvc")
            await eventually(lambda: c.messages, what="the push")
            self.assertEqual([m["id"] for m in c.messages], [msg_id])
        child.transport.signalProcess("TERM")
        self.assertEqual(await self.wait_exit(child), 0, child.output())
        self.assertNotIn("Traceback", child.output())

    async def where_imported(self, bin_folder: str) -> tuple[str, str]:
        """Where the venv's Python finds pushsvc and the twistd plugin."""
        out = await self.sh(os.path.join(bin_folder, "python"), "-c",
                            "import pushsvc, twisted.plugins.pushsvc_plugin as p; "
                            "print(pushsvc.__file__); print(p.__file__)",
                            cwd=self.run_folder("where"))
        package, plugin = out.split()
        return package, plugin

    @run
    async def test_wheel_in_a_fresh_venv(self):
        source = self.checkout_copy()
        wheels = os.path.join(self.cwd, "wheels")
        await self.sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                      "-q", "-w", wheels, source)
        [wheel] = glob.glob(os.path.join(wheels, "pushsvc-*.whl"))
        bin_folder = await self.venv("venv")
        await self.sh(os.path.join(bin_folder, "python"), "-m", "pip", "install", "-q",
                      "--no-index", "--no-deps", wheel)

        home = os.path.dirname(bin_folder)
        package, plugin = await self.where_imported(bin_folder)
        self.assertTrue(package.startswith(home + os.sep), package)
        self.assertTrue(plugin.startswith(home + os.sep), plugin)

        pushsvc = os.path.join(bin_folder, "pushsvc")
        await self.serves([pushsvc], with_client=True)  # the default pool
        await self.serves([os.path.join(bin_folder, "twistd"), "-n", "--pidfile=", "pushsvc",
                           "--workers", "0"])

        # The samples travel in the wheel.
        sample = await self.sh(pushsvc, "sample-config")
        self.assertEqual(sample, Path(source, "etc", "pushsvc.toml").read_text(encoding="utf-8"))
        await self.sh(pushsvc, "copy-samples", "samples")
        for relative in ("etc/pushsvc.service", "etc/nginx-pushsvc.conf", "examples/chat.py"):
            self.assertEqual(Path(self.cwd, "samples", relative).read_bytes(),
                             Path(source, relative).read_bytes(), relative)

    async def check_editable(self, *mode: str) -> None:
        source = self.checkout_copy()
        bin_folder = await self.venv("venv")
        # --use-pep517: the editable install of pip >= 25 (an older pip would
        # run the legacy `setup.py develop` here, the wheel package being there).
        await self.sh(os.path.join(bin_folder, "python"), "-m", "pip", "install", "-q",
                      "--no-deps", "--no-build-isolation", "--use-pep517", *mode,
                      "-e", source)
        site = (await self.sh(os.path.join(bin_folder, "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        self.assertTrue(glob.glob(os.path.join(site.strip(), "__editable__.pushsvc-*")),
                        "not a PEP 660 editable install")
        package, plugin = await self.where_imported(bin_folder)
        self.assertEqual(package, os.path.join(source, "pushsvc", "__init__.py"))
        self.assertEqual(plugin, os.path.join(source, "twisted", "plugins", "pushsvc_plugin.py"))
        await self.serves([os.path.join(bin_folder, "pushsvc"), "--workers", "0"])
        await self.serves([os.path.join(bin_folder, "twistd"), "-n", "--pidfile=", "pushsvc",
                           "--workers", "0"])
        sample = await self.sh(os.path.join(bin_folder, "pushsvc"), "sample-config")
        self.assertEqual(sample, Path(source, "etc", "pushsvc.toml").read_text(encoding="utf-8"))

    @run
    async def test_editable(self):
        """`pip install -e .`: setuptools' default editable mode."""
        await self.check_editable()

    @run
    async def test_editable_compat(self):
        await self.check_editable("--config-settings", "editable_mode=compat")
