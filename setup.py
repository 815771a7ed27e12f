"""Build hook: generate the gRPC stubs from protos/ before packaging.

All metadata lives in pyproject.toml; this file only adds the code-generation step.
"""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
from gen_protos import generate


class BuildWithProtos(build_py):
    def run(self):
        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
