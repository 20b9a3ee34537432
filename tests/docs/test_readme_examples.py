"""The README's Python examples run as written, and its commands name real subcommands and files."""

import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples():
    assert python_blocks(), "README has no python example"


def test_readme_python_examples_run():
    for block in python_blocks():
        ns: dict = {}
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
        if "res" in ns:
            res = ns["res"]
            assert res.positive.shape == (2, 8400)
            assert not bool(res.positive[1].any())  # the image without faces has no positive
            assert torch.isfinite(res.quality).all()
            atss = ns["ATSSAssigner"](topk=9)(ns["priors"], ns["gt"])
            assert bool(atss.positive[0].any()) and not bool(atss.positive[1].any())


def test_readme_cli_commands_exist():
    from assignlab.__main__ import COMMANDS

    for cmd in re.findall(r"(?:^|[\s`/])assignlab ([a-z][\w-]*)", README, flags=re.M):
        if cmd in ("is", "makes", "import"):
            continue
        assert cmd in COMMANDS, f"README mentions unknown subcommand {cmd!r}"
    for path in re.findall(r"\b((?:configs|docs)/[\w/.-]+\.(?:yaml|md|png|jpg))", README):
        assert (REPO / path).exists(), f"README names a missing file {path}"


def test_cli_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "assignlab", "--help"], capture_output=True, text=True, check=True)
    for name in ("train", "eval", "widerface-eval", "inspect", "show", "heatmap", "anchors", "compare", "predict",
                 "export", "bench"):
        assert name in out.stdout
