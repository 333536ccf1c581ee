from setuptools import find_packages, setup

setup(
    name="pushsvc",
    version="0.1.0",
    description="Real-time WebSocket push server on Twisted and Autobahn",
    python_requires=">=3.11",
    packages=find_packages(include=["pushsvc", "pushsvc.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["pushsvc_plugin.py"],
                  "pushsvc.static": ["*.html", "*.js"]},  # docs/clients.md
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
    ],
    extras_require={
        "test": [],
        "bench": ["py-spy>=0.3"],  # pushsvc-bench --profile
    },
    entry_points={
        "console_scripts": ["pushsvc-bench = pushsvc.bench.cli:main",
                            "pushsvc-admin = pushsvc.admin.cli:main"],
    },
)
