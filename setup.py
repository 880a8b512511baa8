"""Builds the compiled parts of masked_ops with CMake (see CMakeLists.txt)."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        # Everything CMake builds lands next to the package's Python files.
        package_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # A persistent build tree (not pip's temporary one), so that editing
        # one native file rebuilds only what depends on it.
        build_dir = Path(os.environ.get("MASKED_OPS_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMASKED_OPS_OUTPUT_DIR={package_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MASKED_OPS_BUILD_TYPE', 'Release')}",
            f"-DMASKED_OPS_CUDA={os.environ.get('MASKED_OPS_CUDA', 'AUTO')}",
        ]
        if os.environ.get("MASKED_OPS_CUDA_ARCHITECTURES"):
            config.append(
                f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['MASKED_OPS_CUDA_ARCHITECTURES']}"
            )
        subprocess.run(["cmake", str(ROOT), *config], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)

    def copy_extensions_to_source(self):
        # Editable installs: CMake's outputs are not one file per Extension, so
        # copy all of them from the build tree into the source package.
        package_src = Path(self.get_finalized_command("build_py").get_package_dir("masked_ops"))
        built = Path(self.build_lib) / "masked_ops"
        for path in built.iterdir():
            if path.suffix in (".so", ".json"):
                self.copy_file(str(path), str(package_src / path.name), level=self.verbose)


setup(
    name="masked_ops",
    version="0.1.0",
    description="Fused masked-loss kernels for TensorFlow and Keras",
    packages=find_packages(include=["masked_ops", "masked_ops.*"]),
    ext_modules=[CMakeExtension("masked_ops._native")],
    cmdclass={"build_ext": CMakeBuild},
    package_data={"masked_ops": ["*.so", "_build_info.json"]},
    python_requires=">=3.10",
    install_requires=["tensorflow>=2.16", "numpy"],
    zip_safe=False,
)
