import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The sample files a user of an installed pushsvc needs (`pushsvc sample-config`,
# `pushsvc copy-samples DIR`, pushsvc/cli.py): the wheel carries them in
# pushsvc/share/, laid out as in the checkout (which keeps the only copy).
SAMPLES = ["etc/pushsvc.toml", "etc/pushsvc.service", "etc/nginx-pushsvc.conf",
           *sorted(glob.glob("examples/*.py"))]


class build_py_with_samples(build_py):
    """build_py that also copies SAMPLES into pushsvc/share/ of the build, and
    names them as sources so that an sdist carries them too."""

    def get_source_files(self):
        return super().get_source_files() + SAMPLES

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds them in the checkout
        for relative in SAMPLES:
            target = os.path.join(self.build_lib, "pushsvc", "share", relative)
            self.mkpath(os.path.dirname(target))
            self.copy_file(relative, target)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, "pushsvc", "share", relative)
            for relative in SAMPLES]


setup(
    name="pushsvc",
    version="0.1.0",
    description="Real-time WebSocket push server on Twisted and Autobahn",
    python_requires=">=3.11",
    # Every package sits in the checkout's root ({"": "."}): then an editable
    # install (`pip install -e .`, setuptools >= 64) puts the checkout itself
    # on sys.path, as editable_mode=compat does, instead of an import finder
    # that hides twisted/plugins/ from twistd's plugin scan; `twistd pushsvc`
    # then works under every install, and so does `pushsvc` (pushsvc/cli.py).
    package_dir={"": "."},
    packages=find_packages(include=["pushsvc", "pushsvc.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["pushsvc_plugin.py"],
                  "pushsvc.static": ["*.html", "*.js"]},  # docs/clients.md
    cmdclass={"build_py": build_py_with_samples},
    install_requires=[
        "twisted>=26.10",  # makeBinding(reusePort=), Site(parsePOSTFormSubmission=)
        "autobahn>=23.6",
        "txredisapi>=1.4.10",
        "pyopenssl>=23.0",
        "service-identity>=21.1",
        # Client tokens (pushsvc/tokens.py): JWT with HS256, RS256 and ES256; the
        # crypto extra brings cryptography for the RSA and EC signatures.
        "pyjwt[crypto]>=2.8",
        # GET /metrics (pushsvc/metrics.py): the Prometheus text format, rendered
        # by the reference implementation rather than by hand.
        "prometheus-client>=0.17",
        # The lean path of the HTTP API (pushsvc/http/lean_reader.py): llhttp,
        # Node's HTTP/1.1 parser, through MagicStack's binding (uvloop's).
        "httptools>=0.6",
    ],
    extras_require={
        # tests/test_install.py builds a wheel without build isolation (no
        # download): setuptools' bdist_wheel, which before setuptools 70.1
        # lives in the wheel package; pyflakes for the lint run.
        # pusher: the official Pusher server SDK, whose signatures the Pusher
        # protocol layer is checked against (tests/test_pusher_*.py).
        # kosoku: runs the Autobahn|Testsuite cases against the WebSocket
        # edge (tests/test_conformance.py).
        "test": ["wheel", "pyflakes", "pusher", "kosoku>=0.1"],
        "bench": ["py-spy>=0.3"],  # pushsvc-bench --profile
    },
    entry_points={
        "console_scripts": ["pushsvc = pushsvc.cli:main",
                            "pushsvc-bench = pushsvc.bench.cli:main",
                            "pushsvc-admin = pushsvc.admin.cli:main"],
    },
)
