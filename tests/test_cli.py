"""The console scripts (dfd/cli.py): fast --help, no abbreviations, every default shown, user errors in one
line with exit status 2 before Prefect starts, and the packaging that keeps generic names out of site-packages."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import make_dataset

from dfd import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("retrain", "score", "registry", "demo_data")

# Runs one entry point of dfd.cli in a fresh interpreter; prints its exit status and the heavy modules loaded.
WRAPPER = """
import json, sys
from dfd import cli
try:
    code = getattr(cli, sys.argv[1])(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
heavy = ("tensorflow", "keras", "prefect", "flows", "tasks", "app")
print(json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}))
"""


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DFD_", "DATA_URL", "ARTIFACTS_URL"))}
    out.update(TF_CPP_MIN_LOG_LEVEL="2", DO_NOT_TRACK="1", **extra)
    return out


def run_entry(name: str, *args: str, cwd: Path = ROOT, **extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, name, *args], cwd=cwd, env=env(**extra),
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


@pytest.mark.parametrize("name", COMMANDS)
def test_help_imports_neither_prefect_nor_tensorflow(name: str):
    result, proc = run_entry(name, "--help")
    assert result == {"code": 0, "heavy": []}, proc.stderr
    assert proc.stdout.startswith("usage: dfd-")


@pytest.mark.parametrize("module", ["flows.retrain", "flows.score_batch"])
def test_python_m_help_imports_neither_prefect_nor_tensorflow(module: str):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: dfd-"), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "prefect")}


def parsers() -> dict[str, argparse.ArgumentParser]:
    from app.serve import parser as viewer_parser

    out = {"retrain": cli.retrain_parser(), "score": cli.score_parser(), "registry": cli.registry_parser(),
           "demo_data": cli.demo_parser(), "viewer": viewer_parser("dfd-viewer")}
    for action in cli.registry_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({f"registry {name}": sub for name, sub in action.choices.items()})
    return out


def test_every_option_has_a_help_line_that_names_its_default():
    for name, parser in parsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, (name, action.dest)
            if action.option_strings or action.default is not None:  # PATH has none: required unless --inbox
                assert "default" in action.help, (name, action.dest)
            parser.format_help()  # no stray % in a help text


@pytest.mark.parametrize(("name", "argv"), [
    ("retrain", ["--epoch", "2"]),
    ("score", ["folder", "--model", "v1"]),
    ("registry", ["--art", "x", "list"]),
    ("registry", ["rollback", "--t", "v1"]),
    ("demo_data", ["--per", "3"]),
    ("viewer", ["--thread", "2"]),
])
def test_abbreviated_options_are_refused(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]):
    parser = parsers()[name]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err or "invalid choice: 'x'" in err, err


def test_wrapper_parsers_match_the_commands_they_run(capsys: pytest.CaptureFixture[str]):
    """dfd-registry and dfd-demo-data check their options here, then run dfd.registry.main / dfd.demo.main."""
    from dfd import demo, registry

    def options_in_help(main, argv: list[str]) -> set[str]:
        with pytest.raises(SystemExit):
            main(argv)
        return {w.strip("[],") for w in capsys.readouterr().out.split() if w.startswith(("--", "[--"))}

    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}

    p = parsers()
    assert options_in_help(registry.main, ["--help"]) == options(p["registry"])
    assert options_in_help(registry.main, ["rollback", "--help"]) == options(p["registry rollback"])
    assert options_in_help(demo.main, ["--help"]) == options(p["demo_data"])


def test_retrain_user_errors_are_one_line_exit_2_before_prefect(tmp_path: Path):
    only_real = make_dataset(tmp_path / "only-real", per_class=2, size=24)
    shutil.rmtree(only_real / "df")
    empty_df = make_dataset(tmp_path / "empty-df", per_class=2, size=24)
    for p in (empty_df / "df").iterdir():
        p.unlink()
    cases = [
        (["--data", str(tmp_path / "nope")], {}, "data folder not found or empty"),
        (["--data", str(only_real)], {}, "has no df/ folder"),
        (["--data", str(empty_df)], {}, "class 'df' in"),
        (["--data", str(empty_df), "--group-by", "regex:("], {}, "group_by regex '(' is not valid"),
        (["--data", str(empty_df), "--artifacts", "http://example.org/a"], {}, "unsupported storage URL"),
        (["--data", str(empty_df)], {"DFD_EPOCHS": "many"}, "not a valid int"),
        (["--data", str(only_real), "--synthetic-fakes", "1"], {}, "class 'real' in"),  # 2 files, 10 needed
    ]
    for args, extra, text in cases:
        result, proc = run_entry("retrain", *args, "--no-demo", **extra)
        assert result == {"code": 2, "heavy": []}, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], (args, proc.stderr)
        if "df/" in text or "'df'" in text:  # a missing df/ gets the same hint as an empty one
            assert "or set synthetic_fakes > 0 (--synthetic-fakes 1.0 on the command line)" in lines[0]


def test_python_m_flows_retrain_missing_folder_is_one_line(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", "--data", str(tmp_path / "nope"), "--no-demo"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data folder not found or empty: {tmp_path / 'nope'} (expected real/ and df/ inside it)"]


def test_reals_only_data_passes_the_check_with_synthetic_fakes(tmp_path: Path):
    from dfd.settings import Settings

    data = make_dataset(tmp_path / "d", per_class=3, size=24)
    shutil.rmtree(data / "df")
    cli.check_retrain_inputs(Settings.from_env({}, data_url=str(data), synthetic_fakes=1.0, min_images_per_class=3))
    cli.check_retrain_inputs(Settings.from_env({}, data_url="s3://bucket/data"))  # left to the flow


def test_console_scripts_and_packages(tmp_path: Path):
    """Every console script is a thin entry point of dfd.cli, and only dfd is installed as a package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == {"dfd-retrain", "dfd-score", "dfd-registry", "dfd-demo-data", "dfd-viewer"}
    assert all(target.startswith("dfd.cli:") and hasattr(cli, target.split(":")[1]) for target in scripts.values())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["dfd", "dfd.*"]
    assert cli.checkout_root() == ROOT


def test_commands_find_the_checkout_from_anywhere_and_refuse_without_one(tmp_path: Path):
    """The checkout's flows/ wins over any other package named ``flows``; a copy of dfd without a checkout (a
    plain ``pip install .``) says what to do."""
    (tmp_path / "shadow" / "flows").mkdir(parents=True)
    (tmp_path / "shadow" / "flows" / "__init__.py").write_text("raise ImportError('the wrong flows')\n")
    code = (f"import sys; sys.path[:0] = [{str(tmp_path / 'shadow')!r}]; sys.path.append({str(ROOT)!r}); "
            "from dfd import cli; cli.use_checkout('dfd-x'); import flows.ephemeral, tasks; "
            "print(sys.path[0], flows.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(ROOT), str(ROOT / "flows" / "__init__.py")]

    shutil.copytree(ROOT / "dfd", tmp_path / "site" / "dfd")  # what a plain `pip install .` puts in site-packages
    data = make_dataset(tmp_path / "data", per_class=3, size=24)
    result, proc = run_entry("retrain", "--data", str(data), "--no-demo", cwd=tmp_path,
                             PYTHONPATH=str(tmp_path / "site"), DFD_MIN_IMAGES_PER_CLASS="3")
    assert result == {"code": 2, "heavy": []}, proc.stderr
    assert "runs from a checkout of the repository" in proc.stderr and "pip install -e ." in proc.stderr


def test_viewer_help_names_dfd_viewer_and_imports_neither_prefect_nor_tensorflow():
    result, proc = run_entry("viewer", "--help")
    assert result["code"] == 0 and set(result["heavy"]) <= {"app"}, proc.stderr
    assert proc.stdout.startswith("usage: dfd-viewer") and "$VIEWER_PORT or 8000" in proc.stdout
