"""Shared fixtures: small generated files in temporary folders, never data from ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent

# Tests use two threads like the target machine and stay quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Property-based tests (tests/test_fuzz.py): a fixed number of examples in CI, many more with
# HYPOTHESIS_PROFILE=long. A failure prints the example and a blob that replays it.
settings.register_profile(
    "ci", max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, timeout: int = 600):
    """Run `attnkit ARGS` in a fresh interpreter, as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "attnkit", *args],
        cwd=cwd or ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


def tiny_training(data: Path, run_dir: Path, *overrides: str) -> list[str]:
    """Config and overrides for `attnkit train` of a tiny Transformer (one layer a side, width
    32, a 200-piece vocabulary) on the built-in corpus written to `data`, with no time limit
    and no progress bar; later `overrides` win."""
    return [
        "configs/demo.yaml",
        f"run.dir={run_dir}",
        f"data.train_src={data / 'train.en'}",
        f"data.train_tgt={data / 'train.fr'}",
        "data.vocab_size=200",
        "model.d_model=32",
        "model.d_ff=64",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "train.max_minutes=null",
        "train.progress=false",
        *overrides,
    ]


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI run that failed as a user error should: status 1, nothing on stdout, one line on
    stderr naming the problem (each of `fragments`), no traceback."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnkit: error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose much when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_shared_memory_rows_decode_alike(model, src, tgt):
    """Decode `tgt` (B*G, T) with G rows per sentence of `src` (B, S) twice: all G reading one
    memory row of their sentence, as beam search decodes, and each with its own copy of it."""
    import torch

    from attnkit.models.protocol import padding_mask

    rows = torch.arange(src.size(0)).repeat_interleave(tgt.size(0) // src.size(0))
    with torch.no_grad():
        memory = model.encode(src, padding_mask(src))
        shared = model.init_state(memory).reorder(rows)
        copied = model.init_state(memory.reorder(rows))
        for t in range(tgt.size(1)):
            one = model.decode_step(memory, shared, tgt[:, t], need_attention=True)
            own = model.decode_step(memory.reorder(rows), copied, tgt[:, t], need_attention=True)
            torch.testing.assert_close(one.log_probs, own.log_probs, atol=1e-5, rtol=0)
            assert (one.attention is None) == (own.attention is None)
            if own.attention is not None:
                torch.testing.assert_close(one.attention, own.attention, atol=1e-6, rtol=0)
            shared, copied = one.state, own.state


def assert_beam_decodes_a_batch_as_one_by_one(model, src, options):
    """Beam search over the right-padded batch `src` gives each sentence what it gives that
    sentence alone; returns the batch's hypotheses."""
    import pytest
    import torch

    from attnkit.generation.search import beam_search
    from attnkit.models.protocol import padding_mask

    mask = padding_mask(src)
    batched = beam_search(model, src, mask, options, need_attention=True)
    for i, hypotheses in enumerate(batched):
        one = src[i : i + 1, : int(mask[i].sum())]
        alone = beam_search(model, one, padding_mask(one), options, need_attention=True)[0]
        assert [h.tokens for h in hypotheses] == [h.tokens for h in alone]
        assert [h.score for h in hypotheses] == pytest.approx([h.score for h in alone], abs=1e-5)
        for h, a in zip(hypotheses, alone, strict=True):
            assert (h.attention is None) == (a.attention is None)
            if a.attention is not None:
                torch.testing.assert_close(h.attention, a.attention, atol=1e-5, rtol=0)
    return batched


def decode_step_by_step(model, src, tgt, *, need_attention=False):
    """Log-probs (B, T, V) and attention from `decode_step` over the prefix `tgt`, one token at
    a time, to compare with teacher forcing; any architecture of the model protocol."""
    import torch

    from attnkit.models.protocol import padding_mask

    memory = model.encode(src, padding_mask(src))
    state = model.init_state(memory)
    log_probs, attention = [], []
    for t in range(tgt.size(1)):
        step = model.decode_step(memory, state, tgt[:, t], need_attention=need_attention)
        log_probs.append(step.log_probs)
        attention.append(step.attention)
        state = step.state
    return torch.stack(log_probs, 1), attention
