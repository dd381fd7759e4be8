"""The compare leaderboard in a narrow and a common terminal, through the console script: four
backbones, nothing cut to an ellipsis, no line wider than the terminal, and each row on at most
two lines at 80 columns and on one at 120."""

from __future__ import annotations

import pytest

from conftest import console_script, make_tree

BACKBONES = ["test_efficientnet@none", "test_resnet@none", "test_convnext@none", "test_vit@none"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The same compare printed at 80 and at 120 columns (the second is a cache hit)."""
    root = tmp_path_factory.mktemp("layout")
    data = make_tree(root / "shapes", classes=("a", "b"), per_class=10)
    outputs = []
    for columns in (80, 120):
        done = console_script(
            "compare",
            "--data",
            str(data),
            "--backbone",
            *BACKBONES,
            "--image-size",
            "32",
            "--precision",
            "fp32",
            "--engine",
            "torch",
            "--cache-dir",
            str(root / "cache"),
            "--runs-dir",
            str(root / "runs"),
            columns=columns,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    return outputs


def rows(out: str) -> tuple[list[str], list[list[str]]]:
    """The table's lines (title to last row), and its rows, each as its lines: a row starts
    where a backbone's name starts. The verdict sentences after it are the terminal's to wrap."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("─")) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    found: list[list[str]] = []
    for line in lines[start:end]:
        if line.lstrip().startswith("test_"):
            found.append([line])
        else:
            found[-1].append(line)
    return lines[:end], found


@pytest.mark.parametrize(("index", "columns", "most"), [(0, 80, 2), (1, 120, 1)])
def test_compare_leaderboard_fits_the_terminal(compared, index, columns, most) -> None:
    out = compared[index]
    lines, table = rows(out)
    assert len(table) == 4
    assert "…" not in out
    assert max(len(line) for line in lines) <= columns
    assert all(len(row) <= most for row in table), table
    header = next(line for line in lines if "backbone" in line and "best head" in line)
    span = slice(header.index("backbone"), header.index("best"))
    names = ["".join(line[span].strip() for line in row) for row in table]
    assert sorted(names) == sorted(BACKBONES)  # every name whole, folded or not
