"""Builds the integrad client, generating its gRPC stubs from the repository's proto/.

The stubs are not committed: they are made at build time from the same .proto files the
server is built from, so the client can never drift from the API it talks to. The .proto
files are found next to this file (an sdist carries a copy in ./proto) or two directories
up (a checkout of the repository: clients/python/../../proto).
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.realpath(__file__))
# The API and every .proto file it imports, relative to the proto root.
PROTOS = ["integrad/v1/explainer.proto"]


def proto_root():
    """The directory holding PROTOS: the sdist's copy first, else the repository's."""
    candidates = [os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto")]
    for root in candidates:
        if all(os.path.isfile(os.path.join(root, p)) for p in PROTOS):
            return os.path.normpath(root)
    raise RuntimeError(
        "cannot generate the gRPC stubs: none of "
        + ", ".join(os.path.normpath(c) for c in candidates)
        + f" holds {', '.join(PROTOS)}. Build from a checkout of the integrad repository "
        "(pip install ./clients/python) or from its sdist."
    )


def generate_stubs(out_dir):
    """Runs grpc_tools.protoc on PROTOS, writing integrad/v1/*_pb2*.py(i) under out_dir."""
    from grpc_tools import protoc  # a build requirement, so import it only when building

    root = proto_root()
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ] + [os.path.join(root, p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {', '.join(PROTOS)} in {root}")
    # protoc writes modules, not packages: integrad.v1 needs its __init__.py.
    open(os.path.join(out_dir, "integrad", "v1", "__init__.py"), "a").close()


class BuildPyWithStubs(build_py):
    """build_py that also generates the stubs: into the build directory for a wheel, into
    src/ for an editable install (where the package is imported from the source tree)."""

    def run(self):
        super().run()
        generate_stubs(os.path.join(HERE, "src") if self.editable_mode else self.build_lib)


class SdistWithProtos(sdist):
    """sdist that carries the .proto files, so the sdist builds without the repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for p in PROTOS:
            os.makedirs(os.path.dirname(os.path.join(base_dir, "proto", p)), exist_ok=True)
            shutil.copyfile(os.path.join(root, p), os.path.join(base_dir, "proto", p))


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})
