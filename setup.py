from setuptools import setup

setup(
    name="pushsvc",
    version="0.1.0",
    description="Real-time WebSocket push server on Twisted and Autobahn",
    python_requires=">=3.11",
    packages=["pushsvc", "pushsvc.broker", "twisted.plugins"],
    package_data={"twisted.plugins": ["pushsvc_plugin.py"]},
    install_requires=[
        "twisted>=25.5",  # Site(parsePOSTFormSubmission=False)
        "autobahn>=23.6",
        "txredisapi>=1.4.10",
        "pyopenssl>=23.0",
        "service-identity>=21.1",
    ],
    extras_require={
        "test": [],
        "bench": [],
    },
    entry_points={},
)
