"""Hostile model files against the real CLI: foreign graphs carrying tunepp metadata, broken or absurd
metadata values (temperatures 1e-30 / NaN / 'abc' / -1), ONNX Runtime failures during a call, and
malicious pickles — each a one-line error (or an isolated case failure), nothing executed, nothing left."""

from __future__ import annotations

import math
from pathlib import Path

import corpus
import pytest
import torch
from corpus import (
    assert_cli_error,
    cli,
    contract_graph,
    evil_checkpoint,
    props_with,
    run_tunepp,
    tree,
    write_nifti,
)
from tunepp_deploy.export.metadata import PREFIX

from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.model_file import TEMPERATURE_RANGE, check_temperature, read_temperature

tiny_model = corpus.tiny_model  # the fixture (no shared conftest)
FAST = ("--samples", "2", "--device", "cpu")


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "in" / "case_0000.nii.gz", corpus.scan_data())


def _infer(scan: Path, out: Path, model: Path):
    return cli("infer", "-i", scan, "-o", out, "-m", model, *FAST)


def test_foreign_graph_with_our_metadata_is_refused_at_open(tmp_path: Path, tiny_model, scan: Path) -> None:
    """Used to be ONNX Runtime's InvalidArgument traceback on the first window."""
    model = contract_graph(tmp_path / "foreign.onnx", tiny_model.meta, foreign=True)
    out = tmp_path / "out"
    assert_cli_error(_infer(scan, out, model), contains="graph inputs")
    assert tree(out) == []


def test_graph_with_our_names_but_wrong_ranks_is_refused(tmp_path: Path, tiny_model, scan: Path) -> None:
    import onnx

    model = contract_graph(tmp_path / "m.onnx", tiny_model.meta)
    proto = onnx.load(str(model))
    x = proto.graph.input[0].type.tensor_type.shape
    del x.dim[-1]  # x declared 4D
    onnx.save(proto, str(model))
    assert_cli_error(_infer(scan, tmp_path / "out", model), contains="rank")


def test_ort_error_during_a_call_is_one_line_runtime_error(tmp_path: Path, tiny_model, scan: Path) -> None:
    """A backend failure inside a call is a RuntimeError the batch isolates as a failed case."""
    from tunepp_deploy.infer.runners import open_runner

    model = contract_graph(tmp_path / "m.onnx", tiny_model.meta)
    meta = tiny_model.meta
    with open_runner(model, "ort", "cpu") as runner:
        x = torch.zeros(1, meta.in_channels, *meta.window)
        masks = [torch.ones(s.mask_shape(meta.window, 1)) for s in meta.sites]
        with pytest.raises(RuntimeError) as info:
            runner(x, masks)
    msg = str(info.value)
    assert msg.startswith("ONNX Runtime:") and "\n" not in msg
    out = tmp_path / "out"
    res = cli("infer", "-i", scan, "-o", out, "-m", model, *FAST, "--backend", "ort")
    assert res.exit_code in (1, 2), res.output  # a failed case of a folder: 1; the only scan given: 2
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stderr and "ONNX Runtime" in res.output
    assert not list(out.glob("case_*.nii.gz"))


BAD_TEMPERATURES = {"1e-30": [1e-30], "nan": [math.nan], "negative": [-1.0], "huge": [1e6], "text": ["abc"],
                    "inf": [math.inf], "empty": []}


@pytest.mark.parametrize("kind", list(BAD_TEMPERATURES))
def test_bad_temperature_in_onnx_metadata(tmp_path: Path, tiny_model, scan: Path, kind: str) -> None:
    """1e-30 passed the old ``> 0`` check and NaN slipped through ``min(t) <= 0``: maps of NaN, exit 0."""
    model = contract_graph(tmp_path / "m.onnx", tiny_model.meta,
                           props_with(temperature=BAD_TEMPERATURES[kind]))
    out = tmp_path / "out"
    assert_cli_error(_infer(scan, out, model), contains="temperature")
    assert tree(out) == []


@pytest.mark.parametrize("raw", ["abc", "[1.0,", '"abc"', "{}", "null", "[true]"])
def test_broken_json_temperature_names_the_key(tmp_path: Path, tiny_model, scan: Path, raw: str) -> None:
    model = contract_graph(tmp_path / "m.onnx", tiny_model.meta, {PREFIX + "temperature": raw})
    line = assert_cli_error(_infer(scan, tmp_path / "out", model), contains="temperature")
    assert "tunepp.temperature" in line


@pytest.mark.parametrize("kind", ["1e-30", "nan", "negative", "text"])
def test_bad_temperature_in_checkpoint(tmp_path: Path, tiny_model, scan: Path, kind: str) -> None:
    ck = torch.load(tiny_model.ckpt, weights_only=True)
    ck["temperature"] = BAD_TEMPERATURES[kind] if kind != "text" else "abc"
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    assert_cli_error(_infer(scan, tmp_path / "out", bad), contains="temperature")


def test_temperature_range_is_the_fit_range(tmp_path: Path, tiny_model) -> None:
    """The validator accepts what ``calibrate temperature`` can fit (|log T| <= log 100), nothing else."""
    from tunepp_deploy.calibrate.temperature import LOG_T_BOUND

    lo, hi = TEMPERATURE_RANGE
    assert check_temperature([math.exp(-LOG_T_BOUND), math.exp(LOG_T_BOUND)], "t") == pytest.approx([lo, hi])
    assert check_temperature(torch.tensor([1.5]), "t") == [1.5]
    for bad in ([lo / 2], [hi * 2], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], "1.5", [None]):
        with pytest.raises(ModelMismatchError):
            check_temperature(bad, "t", classes=3)
    good = contract_graph(tmp_path / "ok.onnx", tiny_model.meta, props_with(temperature=[1.7]))
    assert read_temperature(good) == [1.7]


@pytest.mark.parametrize("key,raw", [("window", "abc"), ("window", "[48, 48]"), ("window", "[48, 48, -32]"),
                                     ("dropout_sites", "[{}]"), ("config", "not json")])
def test_corrupt_metadata_value_names_the_key(tmp_path: Path, tiny_model, scan: Path, key: str, raw: str) -> None:
    model = contract_graph(tmp_path / "m.onnx", tiny_model.meta, {PREFIX + key: raw})
    line = assert_cli_error(_infer(scan, tmp_path / "out", model))
    assert PREFIX + key in line or "metadata" in line


@pytest.mark.parametrize("legacy", [False, True], ids=["torch_zip", "bare_pickle"])
@pytest.mark.parametrize("command", ["infer", "export", "evaluate"])
def test_malicious_pickle_never_runs(tmp_path: Path, scan: Path, legacy: bool, command: str) -> None:
    marker = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, legacy=legacy)
    args = {"infer": ("infer", "-i", scan, "-o", tmp_path / "out", "-m", evil, *FAST),
            "export": ("export", "onnx", "--checkpoint", evil, "--out", tmp_path / "out" / "m.onnx"),
            "evaluate": ("evaluate", "-m", evil, "-d", tmp_path / "data", "-o", tmp_path / "out")}[command]
    res = cli(*args)
    assert not marker.exists(), "the pickle's code ran"
    line = assert_cli_error(res)
    assert "weights_only" not in line and "trust" not in line
    if not legacy:
        assert "refused for safety" in line and "posix.system" in line
    assert tree(tmp_path / "out") == []


def test_malicious_pickle_in_a_real_process(tmp_path: Path) -> None:
    """Own process: torch's "Detected pickle protocol 4" warning for a bare pickle was a second stderr line."""
    marker = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, legacy=True)
    proc = run_tunepp("export", "onnx", "--checkpoint", evil, "--out", tmp_path / "m.onnx")
    assert not marker.exists()
    corpus.assert_one_line_error(proc.returncode, proc.stderr, contains="not a tunepp checkpoint")
    assert "weights_only" not in proc.stderr and not (tmp_path / "m.onnx").exists()


def _nan_checkpoint(tmp_path: Path, tiny_model, where: str) -> Path:
    """The tiny model with one weight NaN (what a diverged training run saves): ``first`` — the first
    convolution (every output NaN), ``log_var`` — the heteroscedastic head (only the logit noise NaN)."""
    from tunepp_deploy.model import build_network
    from tunepp_deploy.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = build_network(tiny_model.cfg).eval()
    weights = [(n, p) for n, p in net.named_parameters() if p.dim() > 1]
    param = weights[0][1] if where == "first" else dict(weights)["log_var.weight"]
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    return save_checkpoint(tmp_path / "nan.pt", net, tiny_model.cfg, epoch=0)


@pytest.mark.parametrize("where", ["first", "log_var"])
def test_nan_weights_refuse_the_case_instead_of_writing_nan_maps(tmp_path: Path, tiny_model, scan: Path,
                                                                 where: str) -> None:
    """Issue 12 item 1: NaN weights gave NaN maps, exit 0 and a 'safe' report (triage 0, nothing flagged)."""
    model = _nan_checkpoint(tmp_path, tiny_model, where)
    out = tmp_path / "out"
    res = _infer(scan, out, model)  # the run header is printed before the model runs; then one error line
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and "Traceback" not in res.stderr and len(errors) == 1 and "non-finite" in errors[0]
    assert tree(out) == []  # no map, no report, no temporary
    folder = scan.parent
    write_nifti(folder / "other_0000.nii.gz", corpus.scan_data())
    res = _infer(folder, out, model)  # a folder: each case fails on its own, the run exits 1, nothing written
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert not list(out.glob("*_report.json")) and not list(out.glob("*.nii.gz"))
