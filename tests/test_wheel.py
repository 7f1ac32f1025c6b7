"""The package as a user installs it: the wheel built from the project, installed into a fresh
virtual environment without the source tree and made read-only, runs the README's example, and
Numba caches its compiled kernels in the user's cache folder (the install's own __pycache__
folders cannot be made: read-only permissions, and a file of that name in each package folder,
which stops root too) and loads them on the next run. Also: one version everywhere, and the files a
user can trust (LICENSE, CITATION.cff, CHANGELOG.md).

Nothing is downloaded: the wheel is built by this environment's setuptools (no build isolation),
and the fresh environment reaches the dependencies (NumPy, Numba, SciPy) through a path file
pointing at this environment's site-packages, which holds no copy of dcn_numba.
"""

import importlib.metadata
import os
import pathlib
import re
import shutil
import site
import stat
import subprocess
import sys
import tomllib
import venv
import zipfile

import pytest
import yaml

import dcn_numba

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What a build reads: the package's sources and the files pyproject.toml names
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE")


def _setuptools_version():
    try:
        return tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return (0, 0)


def _readme_example():
    """The Python block under '## An example' in README.md, and the text it prints."""
    section = (ROOT / "README.md").read_text().split("## An example", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("```text\n", 1)[1].split("```", 1)[0]
    return code, printed


def _clean_environment():
    """This process's environment variables without those that would lead Python or Numba to
    the source tree or its caches (PYTHONPATH, NUMBA_CACHE_DIR, ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUMBA_"))}


def _run(command, env=None, **kwargs):
    run = subprocess.run(command, capture_output=True, text=True, timeout=900,
                         env=_clean_environment() if env is None else env, **kwargs)
    assert run.returncode == 0, f"{command}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the project (the build writes nothing into the tree)."""
    if _setuptools_version() < (77, 0):
        pytest.skip("building the wheel needs setuptools >= 77 in this environment, which the "
                    "dev extra installs (pip install -e '.[dev]')")
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "dcn_numba", source / "dcn_numba",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "--wheel-dir", str(dist), str(source)])
    wheels = list(dist.glob("dcn_numba-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed and made read-only: (its python,
    the environment variables a run needs: no PYTHONPATH, a cache folder of its own)."""
    environment = tmp_path_factory.mktemp("venv")
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--no-compile", "--quiet", str(wheel)])
    site_packages = pathlib.Path(_run([str(python), "-c", "import sysconfig; "
                                       "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The source tree itself never goes on the path; the site-packages of a virtual environment
    # inside it (`make test` keeps .venv there) does: it holds the dependencies. A folder named in a
    # .pth file has its own .pth files ignored, so the editable install there stays inactive.
    dependencies = [path for path in site.getsitepackages() if pathlib.Path(path).resolve() != ROOT]
    (site_packages / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    package = site_packages / "dcn_numba"
    folders = [package, *(p for p in package.rglob("*") if p.is_dir())]
    for folder in folders:  # root ignores permissions: a file in the way stops it too
        (folder / "__pycache__").write_text("")
    for path in [package, *package.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    cache = tmp_path_factory.mktemp("user_cache")
    variables = dict(_clean_environment(), XDG_CACHE_HOME=str(cache), NUMBA_DEBUG_CACHE="1")
    yield python, variables, package, cache
    for path in [package, *package.rglob("*")]:  # let pytest remove its temporary folders
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_the_wheel_holds_every_module_and_the_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "dcn_numba").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert "dcn_numba/torch/ops.py" in names
    version = dcn_numba.__version__
    assert f"dcn_numba-{version}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "tutorials/"))]


@pytest.mark.slow  # about a minute: Numba compiles the example's kernels once
def test_the_installed_wheel_runs_the_readme_example_and_caches_its_kernels_read_only(
        installed, tmp_path):
    python, variables, package, cache = installed
    code, printed = _readme_example()
    script = tmp_path / "example.py"
    script.write_text("import dcn_numba\nprint('from', dcn_numba.__file__)\n" + code)
    first = _run([str(python), str(script)], cwd=tmp_path, env=variables)
    location, *output = first.stdout.splitlines()
    assert location == f"from {package / '__init__.py'}"  # the wheel's copy, not the tree's
    assert [line for line in output if not line.startswith("[cache]")] == printed.splitlines()
    assert not [p for p in package.rglob("*") if p.is_dir() and p.name == "__pycache__"]
    saved = list(cache.rglob("*.nbi"))
    assert saved, first.stdout
    assert "[cache] data saved" in first.stdout
    second = _run([str(python), str(script)], cwd=tmp_path, env=variables)
    assert "[cache] data loaded" in second.stdout
    assert "[cache] data saved" not in second.stdout  # every kernel came from the cache
    assert sorted(cache.rglob("*.nbi")) == sorted(saved)


def test_the_installed_package_reports_its_version(installed, tmp_path):
    python, variables, _, _ = installed
    run = _run([str(python), "-c", "import importlib.metadata, dcn_numba; "
                "print(dcn_numba.__version__, importlib.metadata.version('dcn_numba'))"],
               env=variables, cwd=tmp_path)
    assert run.stdout.split() == [dcn_numba.__version__] * 2


def test_one_version_everywhere():
    """pyproject.toml reads dcn_numba.__version__; the citation and the changelog repeat it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "dcn_numba.__version__"}
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == dcn_numba.__version__
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest.group(1) == dcn_numba.__version__


def test_license_and_citation():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert re.search(r"Copyright \(c\) \d{4} the dcn_numba authors\n", license_text)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT"
    paper = citation["references"][0]
    assert paper["title"] == "Deformable Convolutional Networks"
    assert [a["family-names"] for a in paper["authors"]] == [
        "Dai", "Qi", "Xiong", "Li", "Zhang", "Hu", "Wei"]
    assert paper["year"] == 2017
    assert "ICCV" in paper["conference"]["name"]
