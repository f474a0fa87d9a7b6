import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from visctr.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

VERBS = {
    "simulate", "pretrain", "finetune", "classify", "embed", "train-ctr", "evaluate",
    "export", "search", "run", "abtest", "import", "config",
}  # fmt: skip


def _listed_commands(help_text: str) -> set[str]:
    """The verbs in the help's ``Commands:`` section (not words of the group docstring)."""
    section = help_text.split("\nCommands:\n", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ")}


def test_help_lists_every_verb():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    assert _listed_commands(res.output) == VERBS
    assert "seven methods" in res.output and "S1+S2+IPS" in res.output and "S1+S2+H" in res.output
    for verb in VERBS:  # each one is registered and has its own help
        sub = CliRunner().invoke(main, [verb, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output, verb


@pytest.mark.parametrize(
    "make_catalog,match",
    [
        (lambda p: str(p / "does-not-exist"), "catalog not found"),
        (lambda p: _manifest_missing_column(p), "missing column 'category'"),
        (lambda p: _manifest(p, extra="title"), "unexpected column 'title'"),
        (lambda p: _manifest(p, rel="../../escape.png"), "escapes the manifest's folder"),
        (lambda p: _folder(p, b"\x89PNG\r\n\x1a\nnot really"), "corrupt or unreadable image"),
        (lambda p: _folder(p, "I;16"), "has mode 'I;16'"),
        (lambda p: _truncated_idx(p), "truncated"),
    ],
)
def test_simulate_bad_input_one_line_no_output(tmp_path, make_catalog, match):
    out = tmp_path / "world"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visctr.cli",
            "simulate",
            "--preset",
            "tiny",
            "--catalog",
            *_as_args(make_catalog(tmp_path)),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".world") for p in tmp_path.iterdir())


def _as_args(catalog):
    return catalog if isinstance(catalog, list) else [catalog]


def _manifest(tmp_path, rel="a.png", extra=None):
    from PIL import Image

    Image.new("L", (28, 28), 90).save(tmp_path / "a.png")
    cols = {"item_id": [1], "image_path": [rel], "category": ["x"]}
    if extra:
        cols[extra] = ["?"]
    pq.write_table(pa.table(cols), tmp_path / "m.parquet")
    return str(tmp_path / "m.parquet")


def _folder(tmp_path, content):
    from PIL import Image

    root = tmp_path / "photos"
    (root / "shoes").mkdir(parents=True)
    Image.new("L", (28, 28), 90).save(root / "shoes" / "ok.png")
    if isinstance(content, bytes):
        (root / "shoes" / "bad.png").write_bytes(content)
    else:
        Image.new(content, (28, 28), 300).save(root / "shoes" / "bad.png")
    return str(root)


def _truncated_idx(tmp_path):
    import gzip
    import shutil

    from visctr.data.catalog import find_fashion_mnist_dir
    from visctr.errors import InputError

    try:
        src = find_fashion_mnist_dir(None)
    except InputError as e:  # `make test` installs it; a bare pytest run may not have it
        pytest.skip(str(e))
    data = tmp_path / "fmnist"
    data.mkdir()
    for f in src.iterdir():
        shutil.copy(f, data / f.name)
    images = next(data.glob("train-images-idx3-ubyte*"))
    raw = gzip.decompress(images.read_bytes()) if images.suffix == ".gz" else images.read_bytes()
    images.unlink()
    (data / "train-images-idx3-ubyte").write_bytes(raw[: len(raw) // 3])
    return ["fashion-mnist:train", "--data-dir", str(data)]


def _manifest_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"item_id": [1], "image_path": ["a.png"]}), path)
    return str(path)


def test_debug_flag_shows_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visctr.cli",
            "--debug",
            "simulate",
            "--preset",
            "tiny",
            "--catalog",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_unknown_config_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("world:\n  n_queriez: 10\n")
    res = CliRunner().invoke(
        main, ["simulate", "--preset", "tiny", "--config", str(cfg), "--out", str(tmp_path / "w")]
    )
    assert res.exit_code == 2
    assert "unknown key 'n_queriez'" in res.output
    assert not (tmp_path / "w").exists()


def test_failed_run_leaves_no_output(tmp_path):
    """A run that fails before any stage finishes removes what it created: no run directory
    when it made one, and only the user's own files when the directory was theirs."""
    bad = tmp_path / "catalog" / "c0"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main, ["run", "--preset", "tiny", "--catalog", str(bad.parent), "--out", str(out)]
    )
    assert res.exit_code == 2 and "corrupt or unreadable image" in res.output
    assert not out.exists()
    out.mkdir()  # an empty directory of the user's: kept, and left empty
    res = CliRunner().invoke(
        main, ["run", "--preset", "tiny", "--catalog", str(bad.parent), "--out", str(out)]
    )
    assert res.exit_code == 2 and out.is_dir() and not any(out.iterdir())


def test_config_show_prints_the_resolved_config_which_reads_back(tmp_path):
    import yaml

    res = CliRunner().invoke(main, ["config", "show", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(res.output)
    assert list(data) == [
        "world",
        "s1",
        "s2",
        "classify",
        "ctr",
        "trainer",
        "examples",
        "abtest",
        "ope",
    ]
    assert data["world"]["catalog"]["max_items"] == 600  # the tiny world
    assert data["ctr"]["max_epochs"] == 1 and data["s1"]["objective"]["method"] == "infonce"
    assert data["ctr"]["debias"]["negatives"]  # every field spelled out
    (tmp_path / "c.yaml").write_text(res.output)
    again = CliRunner().invoke(
        main, ["config", "show", "--preset", "tiny", "--config", str(tmp_path / "c.yaml")]
    )
    assert again.exit_code == 0 and yaml.safe_load(again.output) == data
    bias = CliRunner().invoke(
        main,
        ["config", "show", "--config", str(CONFIGS / "exposure-bias.yaml"), "--section", "world"],
    )
    assert bias.exit_code == 0 and yaml.safe_load(bias.output)["world"]["appeal_strength"] == 0.7
    bad = CliRunner().invoke(main, ["config", "show", "--config", str(tmp_path / "nope.yaml")])
    assert bad.exit_code == 2 and "config file not found" in bad.output


def test_train_ctr_takes_the_ctr_section_of_a_run_config(tiny_world_dir, tiny_embeddings, tmp_path):
    """What ``visctr run --config`` takes (or ``config show`` prints) works for train-ctr too:
    its ctr section, with the run's trainer section applied as run applies it."""
    from visctr.config import stage_section
    from visctr.errors import ConfigError

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "world: {n_queries: 10}\ns1: {epochs: 3}\nctr: {max_epochs: 1, batch_size: 256}\n"
        "trainer: {progress_bar: false}\n"
    )
    args = ["train-ctr", "--world", str(tiny_world_dir), "--embeddings", str(tiny_embeddings)]
    res = CliRunner().invoke(main, [*args, "--config", str(cfg), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "epochs=1" in res.output
    section = stage_section({"ctr": {"max_epochs": 2}, "trainer": {"precision": "32"}}, "ctr", "f")
    assert section == {"max_epochs": 2, "trainer": {"precision": "32"}}
    assert stage_section({"max_epochs": 2}, "ctr", "f") == {"max_epochs": 2}  # a CTR config
    with pytest.raises(ConfigError, match="unknown key 'wrold'"):
        stage_section({"ctr": {}, "wrold": {}}, "ctr", "f")
    cfg.write_text("ctr: {max_epochz: 1}\n")  # strict inside the section too
    res = CliRunner().invoke(main, [*args, "--config", str(cfg), "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "max_epochz" in res.output
    assert not (tmp_path / "d").exists()


def test_ctrl_c_while_the_cli_imports_is_one_line_and_exit_130():
    """A KeyboardInterrupt raised while visctr.cli imports (as Ctrl-C right after start
    does): the console entry point prints one line and exits 130, no traceback."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'visctr.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Stop())\n"
        "from visctr._entry import run\n"
        "sys.argv = ['visctr', '--help']\n"
        "run()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == [
        "visctr: interrupted (Ctrl-C) while starting; nothing was written"
    ]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_the_console_script_is_the_guarded_entry_point():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["visctr"] == "visctr._entry:run"
