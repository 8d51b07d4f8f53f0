"""minard: the online monitoring system of the SNO+ detector."""
from setuptools import setup, find_packages

setup(
    name="minard",
    version="0.1.0",
    description="SNO+ online monitoring: event pipeline, data stream, dashboard, logging server",
    packages=find_packages(include=["minard", "minard.*"]) + ["twisted.plugins"],
    package_data={
        "minard": ["web/templates/*.html", "static/*", "static/*/*", "static/*/*/*", "store/*.lua",
                   "deploy/templates/*", "deploy/templates/*/*"],
        "twisted": ["plugins/minard_plugin.py"],
    },
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=[
        "twisted[tls]>=23.8",
        "txzmq>=1.0",
        "pyzmq>=25",
        "txredisapi>=1.4.10",
        "klein>=23.5",
        "service-identity>=21.1",
        "numpy>=1.24",
        "jinja2>=3.1",
        "treq>=23.11",
    ],
    extras_require={
        "test": ["hypothesis>=6.80", "playwright>=1.40"],
    },
    entry_points={
        "console_scripts": [
            "minard-log = minard.monitor:main",
            "minard-passwd = minard.auth:main",
            "minard-migrate-store = minard.store.migrate:main",
            "minard-keys = minard.curve:main",
            "minard-redis-acl = minard.store.acl:main",
            "minard-deploy = minard.deploy.cli:entry_point",
        ],
    },
)
