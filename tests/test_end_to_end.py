"""End to end through the command line in a temporary folder: synth, train, translate, evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
import yaml


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("e2e")
    result = run_cli("data", "synth", "--out", str(root / "data"), "--size", "600")
    assert result.returncode == 0, result.stderr
    d = root / "data"
    result = run_cli(
        "train",
        "configs/demo.yaml",
        f"run.dir={root / 'run'}",
        f"data.train_src={d / 'train.en'}",
        f"data.train_tgt={d / 'train.fr'}",
        f"data.valid_src={d / 'valid.en'}",
        f"data.valid_tgt={d / 'valid.fr'}",
        "data.vocab_size=300",
        "model.d_model=32",
        "model.d_ff=64",
        "train.max_steps=12",
        "train.valid_every=6",
        "train.max_minutes=null",
        "train.warmup=4",
        "train.progress=false",
        "train.max_tokens=1024",
        "decode.beam=2",
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
def test_run_directory_is_complete(trained_run):
    run = trained_run / "run"
    assert (run / "config.yaml").is_file()
    assert any((run / "tokenizer").glob("*.model"))
    for name in ("last", "best"):
        assert (run / "checkpoints" / name / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last" / "train_state.pt").is_file()
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [e for e in events if e["event"] == "valid"]
    assert [e["step"] for e in valid] == [6, 12]
    assert {"loss", "ppl", "bleu", "chrf"} <= set(valid[0])
    assert any((run / "tensorboard").iterdir())


@pytest.mark.slow
def test_translate_stdin_keeps_order_and_empty_lines(trained_run, cli):
    text = "The cat is small.\n\nThe women see the dogs.\n"
    result = cli("translate", str(trained_run / "run"), "--beam", "2", stdin=text)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""


@pytest.mark.slow
def test_translate_files_and_nbest(trained_run, cli):
    src = trained_run / "data" / "test.en"
    out = trained_run / "hyp.fr"
    result = cli(
        "translate",
        str(trained_run / "run"),
        "-i",
        str(src),
        "-o",
        str(out),
        "--beam",
        "3",
        "--nbest",
        "2",
    )
    assert result.returncode == 0, result.stderr
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 * 500
    rank, score, _ = rows[1].split("\t")
    assert rank == "1" and float(score) <= 0.0
    assert not (trained_run / "hyp.fr.tmp").exists()


@pytest.mark.slow
def test_translate_too_long_input_is_an_error_or_split(trained_run, cli):
    long_line = " ".join(["the small cat"] * 80) + "\n"
    result = cli("translate", str(trained_run / "run"), "--beam", "1", stdin=long_line)
    assert result.returncode == 1
    assert "over the model's limit" in result.stderr and "Traceback" not in result.stderr
    result = cli(
        "translate", str(trained_run / "run"), "--beam", "1", "--too-long", "split", stdin=long_line
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.slow
def test_translate_truncates_long_input_when_the_run_was_trained_so(trained_run, cli):
    import shutil

    import yaml

    run = trained_run / "run_truncating"
    shutil.copytree(trained_run / "run", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["data"]["truncate_source"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    long_line = " ".join(["the small cat"] * 80)
    text = f"{long_line}\nThe cat is small.\n{long_line}\n"
    result = cli("translate", str(run), "--beam", "1", stdin=text)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "attnkit: warning: truncated 2 input lines longer than 128 tokens to their first 128 "
        "(data.truncate_source)"
    ]


@pytest.mark.slow
def test_evaluate_prints_signatures(trained_run, cli):
    d = trained_run / "data"
    result = cli(
        "evaluate",
        str(trained_run / "run"),
        "--src",
        str(d / "test.en"),
        "--ref",
        str(d / "test.fr"),
        "--beam",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "BLEU" in result.stdout and "nrefs:1" in result.stdout and "CHRF" in result.stdout


@pytest.mark.slow
def test_incompatible_config_on_resume(trained_run, cli):
    d = trained_run / "data"
    result = cli(
        "train",
        "configs/demo.yaml",
        f"run.dir={trained_run / 'run'}",
        f"data.train_src={d / 'train.en'}",
        f"data.train_tgt={d / 'train.fr'}",
        "data.vocab_size=300",
        "model.d_model=64",
    )
    assert result.returncode == 1
    assert "different 'data' config" in result.stderr or "different 'model'" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_mixed_precision_decoding_agrees_with_fp32(trained_run, device):
    """decode.precision=bf16 runs every decoder step under autocast: scores stay fp32, and the
    outputs are those of fp32 decoding up to near ties (the CPU can autocast too, so CI checks
    it)."""
    from attnkit.generation.translator import Translator

    fp32 = Translator.from_run(trained_run / "run", device=device)
    decode = dataclasses.replace(fp32.config.decode, precision="bf16")
    bf16 = Translator(fp32.model, fp32.tokenizers, dataclasses.replace(fp32.config, decode=decode),
                      fp32.device)  # fmt: skip
    steps, decode_step = [], fp32.model.decode_step

    def recording_step(*args, **kwargs):
        out = decode_step(*args, **kwargs)
        steps.append((torch.is_autocast_enabled(device), out.log_probs.dtype))
        return out

    fp32.model.decode_step = recording_step
    lines = (trained_run / "data" / "valid.en").read_text(encoding="utf-8").splitlines()[:40]
    try:
        ours = [h[0] for h in bf16.translate(lines, bf16.options.replace(beam=2))]
    except RuntimeError as error:
        # PyTorch's CPU bf16 attention kernel checks the hardware for AVX-512 (it packs with
        # VNNI) but runs the dispatched AVX2 code when ATEN_CPU_CAPABILITY=avx2 emulates an
        # AVX2 CPU on an AVX-512 one; on real AVX2 hardware it takes another path and runs.
        if "pack_vnni2" in str(error) and os.environ.get("ATEN_CPU_CAPABILITY"):
            pytest.skip("bf16 attention cannot run under ATEN_CPU_CAPABILITY emulation")
        raise
    autocast_steps, steps = steps, []
    reference = [h[0] for h in fp32.translate(lines, fp32.options.replace(beam=2))]
    assert autocast_steps and set(autocast_steps) == {(True, torch.float32)}
    assert steps and set(steps) == {(False, torch.float32)}
    same = [(a.score, b.score) for a, b in zip(ours, reference, strict=True) if a.text == b.text]
    assert len(same) >= len(lines) // 2, f"{len(same)} of {len(lines)} outputs agree"
    # The same output gets the same score up to bf16's rounding (8 significant bits: 0.4%),
    # and not exactly the same score: the model really ran in bf16.
    assert all(abs(a - b) <= 0.005 * abs(b) for a, b in same)
    assert any(a != b for a, b in same)


@pytest.mark.slow
def test_the_precision_option_overrides_the_runs_decode_precision(trained_run, cli):
    from attnkit import runtime
    from attnkit.cli.common import PRECISIONS

    assert tuple(PRECISIONS) == runtime.PRECISIONS  # the CLI's copy, kept free of torch
    lines = "".join(f"{line}\n" for line in (trained_run / "data" / "valid.en").read_text(
        encoding="utf-8").splitlines()[:20])  # fmt: skip
    scores = {}
    for precision in ("fp32", "bf16"):
        result = cli("translate", str(trained_run / "run"), "--nbest", "2", "--precision",
                     precision, stdin=lines)  # fmt: skip
        if "pack_vnni2" in result.stderr and os.environ.get("ATEN_CPU_CAPABILITY"):
            pytest.skip("bf16 attention cannot run under ATEN_CPU_CAPABILITY emulation")
        assert result.returncode == 0, result.stderr
        scores[precision] = [float(row.split("\t")[1]) for row in result.stdout.splitlines()]
    assert len(scores["bf16"]) == len(scores["fp32"]) == 2 * 20
    assert scores["bf16"] != scores["fp32"]  # the model really ran in bf16
    assert scores["bf16"] == pytest.approx(scores["fp32"], rel=0.05)


@pytest.mark.slow
def test_a_bad_decode_precision_in_the_run_is_a_one_line_error(trained_run, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "run", run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["decode"]["precision"] = "fp8"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = cli("translate", str(run), stdin="The cat is small.\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "attnkit: error: decode.precision: unknown value 'fp8' (expected one of: auto, fp32, "
        "bf16, fp16)"
    ]
