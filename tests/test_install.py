"""The install matrix in pyproject.toml: CUDA 13 by default, CUDA 12 as an alternative, and the
dev extra installable beside the CUDA 13 builds of torch in one pip command.

pip's own resolution needs the network: `make install-check` runs it. These tests read the
declared requirements, which is where a mismatch (a CUDA 12 package in the dev extra, a torch pin
that differs from the documented command) starts.
"""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = {name: [Requirement(r) for r in requirements]
          for name, requirements in PROJECT["optional-dependencies"].items()}
DEPENDENCIES = [Requirement(r) for r in PROJECT["dependencies"]]


def by_name(requirements):
    return {r.name: r for r in requirements}


def cuda_major(requirement):
    """12 or 13 when a requirement belongs to one CUDA stack (by its name, its extras or its
    version), else None."""
    text = f"{requirement.name}[{','.join(sorted(requirement.extras))}]{requirement.specifier}"
    found = {int(n) for n in re.findall(r"(?:cu|cuda|==)(1[23])(?:x|\b|\.)", text)}
    assert len(found) <= 1, f"{requirement} names two CUDA versions"
    return found.pop() if found else None


def test_the_package_itself_pins_no_cuda_stack():
    assert [r for r in DEPENDENCIES if cuda_major(r) is not None] == []
    assert by_name(DEPENDENCIES)["numba-cuda"].extras == set()


def test_cuda_is_the_cuda_13_stack_and_cuda12_the_cuda_12_one():
    cuda, cuda12 = by_name(EXTRAS["cuda"]), by_name(EXTRAS["cuda12"])
    assert cuda["numba-cuda"].extras == {"cu13"}
    assert "cupy-cuda13x" in cuda
    assert cuda12["numba-cuda"].extras == {"cu12"}
    assert "cupy-cuda12x" in cuda12


def test_only_the_cuda12_extra_names_cuda_12_packages():
    for name, requirements in EXTRAS.items():
        majors = {cuda_major(r) for r in requirements} - {None}
        assert majors == ({12} if name == "cuda12" else majors - {12}), (name, majors)


def test_dev_brings_the_cuda_13_compiler_for_the_compile_test():
    dev = by_name(EXTRAS["dev"])
    assert "nvcc" in dev["cuda-toolkit"].extras
    assert cuda_major(dev["cuda-toolkit"]) == 13
    assert dev["numba-cuda"].extras == {"cu13"}


def test_bench_pins_the_versions_the_docs_install():
    pins = {r.name: str(r.specifier) for r in EXTRAS["bench"]}
    assert pins["openvino"] == "==2026.4.1"
    assert pins["onnxruntime"] == "==1.31.1"
    command = f'pip install -e ".[dev]" torch{pins["torch"]} torchvision{pins["torchvision"]}'
    assert command in (ROOT / "docs" / "torch.md").read_text()
    assert command in (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH_PINS := torch{pins['torch']} torchvision{pins['torchvision']}" in makefile
