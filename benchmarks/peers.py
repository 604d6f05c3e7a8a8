"""Peer comparison: attnkit against JoeyNMT and Hugging Face's Marian on the same task and budget.

Every system trains the same model size (3+3 layers, width 256, 4 heads, FFN 1024, ReLU, shared
and tied 8,000-piece embeddings, dropout 0.1, pre-norm where the toolkit has it: attnkit and
JoeyNMT; Marian is post-norm only) on Multi30k English-French with the same SentencePiece model,
trained here once with attnkit's tokenizer code and handed to every system. Each system runs in
its own process with `--threads` intra-op threads (torch.set_num_threads and OMP_NUM_THREADS) and
Adam (betas 0.9, 0.98) at 7e-4 after a 400-step linear warm-up, label smoothing 0.1, clipping 1.
The table shows, per system:

- training target tokens/s over the steps after `--warmup`: real target tokens (target + eos,
  never padding) divided by the wall time of those steps, making their batches included;
- target tokens per batch, so that the budgets can be seen to match: attnkit and Marian train on
  the very same batches (attnkit's length-bucketed batches of `--max-tokens`, padding counted);
  JoeyNMT samples its own batches without length bucketing, so its token budget (which counts
  padding too) is `--joeynmt-batch-size`, by default 75/32 x `--max-tokens` (9,600 for 4,096),
  which gives about as many real target tokens per batch;
- the peak resident memory of the process (ru_maxrss, read when training ends);
- beam-5 decoding sentences/s on the first `--decode-limit` lines of test_2016_flickr.en, sorted
  by length and decoded in consecutive batches of 64 sentences after a 2-sentence warm-up, the
  fastest of `--decode-repeats` passes (the machine's noise only ever slows a pass down). The
  output length is pinned so that speed never depends on how far a model trained: every sentence
  gets exactly `--out-len` tokens and then the end of sentence (attnkit: min_len = max_len_b =
  out_len, max_len_a = 0; Marian: min_new_tokens = out_len, max_new_tokens = out_len + 1 with a
  forced eos; JoeyNMT: min_output_length = out_len, max_output_length = out_len + 1), so each
  system runs out_len + 1 decoder steps per sentence. JoeyNMT cannot force the end of sentence
  at its last step, so there it may emit a word instead, which shows as out_len + 1 output tokens
  per sentence (column "out tok/sent", end of sentence not counted) after the same number of
  steps. Detokenized text is produced in all three;
- attnkit's speed divided by each system's, for training and for decoding.

attnkit trains with train_speed.py's `Trainer` (its Adam, its label-smoothed loss normalised by
target tokens) and process settings as `attnkit train` makes them (runtime.configure: thread count,
glibc keeping freed memory, attention kept off cuDNN on CUDA), and decodes with its `Translator`.
Marian (transformers' `MarianMTModel`, built from scratch) trains in a plain PyTorch loop
(peers_marian.py). JoeyNMT runs its own data pipeline, `TrainManager._train_step`, clipper,
optimizer and scheduler in the order of `TrainManager.train_and_validate` without its logging
and validation, and decodes with its `predict` (peers_joeynmt.py; JoeyNMT 2.3's `predict` drops `testing.min_output_length` on its way
to the search, so the worker binds it onto `joeynmt.prediction.search`). Parameters are counted
where they train (Marian's fixed sinusoidal tables are parameters that never train). A system
whose environment cannot be built is shown as "not installed: <reason>"; one whose run fails as
"failed: <reason>", with its log in `<venvs>/logs/`.

    python benchmarks/peers.py ../shared/data/multi30k --steps 30 --warmup 5 --threads 2

Environments. The peers live in virtual environments under `--venvs` (`.bench/`, ignored by git),
created on first use: `.bench/joeynmt` gets `torch==2.13.0` first (the CPU build, from the local
wheel folder that pip is configured with; an unpinned torch would pull a multi-GB CUDA build), then
`joeynmt==2.3.*`, `importlib-metadata` and `sentencepiece==0.2.0`; `.bench/marian` gets
`torch==2.13.0`, then `transformers` and `sentencepiece`. When this was written, JoeyNMT 2.3.0
declared `torch>=1.12.0`, so it accepted torch 2.13.0+cpu as it was and no older torch was
needed; its `protobuf<3.21` pin resolved to protobuf 3.20.3 beside tensorboard 2.20, and
`pip check` found no broken requirement. The Marian environment got transformers 5.24.0.

On a GPU (`--device cuda`), every system trains and decodes on it in mixed precision: attnkit and
Marian under bf16 autocast (attnkit's `train.precision` and `decode.precision` `auto`), JoeyNMT
under its own `fp16` setting, the only one it has (fp16 autocast with a gradient scaler);
attnkit and Marian keep attention off cuDNN (JoeyNMT writes its own attention); each
timed step waits for its GPU work, and the table adds the peak GPU memory
(`torch.cuda.max_memory_allocated`). `--current-python` runs the peers with this interpreter
instead of building environments, for a machine where they are installed already (the GPU
machine's image holds transformers; JoeyNMT travels as wheels on PYTHONPATH, which is then kept):

    python benchmarks/peers.py DATA --device cuda --current-python --threads 8 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peers_result import fastest_pass, peak_gpu_mib, peak_rss_mib, worker_result
from train_speed import Trainer, device_name, synchronize

from attnkit import runtime
from attnkit.config import Config, DecodeConfig, ModelConfig
from attnkit.data.batching import collate, make_batches
from attnkit.data.corpus import (
    TokenizedCorpus,
    read_lines,
    read_parallel,
    tokenize_corpus,
    write_lines,
)
from attnkit.data.tokenizer import load_tokenizers, train_tokenizers
from attnkit.errors import UserError
from attnkit.generation.translator import Translator
from attnkit.models.build import build_model
from attnkit.training.schedule import learning_rate

BENCHMARKS = Path(__file__).resolve().parent
SYSTEMS = ("attnkit", "marian", "joeynmt")
VOCAB_SIZE = 8000
MAX_LEN = 256  # training pairs longer than this (tokens, either side) are dropped, as attnkit does
LR, LR_WARMUP = 7e-4, 400
BEAM, DECODE_BATCH = 5, 64  # beam width; sentences per decoding batch
DATA_FILES = ("train.en", "train.fr", "test_2016_flickr.en")
# Installed in this order into `<venvs>/<name>`: torch first and pinned, so that the CPU wheel on
# local disk is the one installed (see the module docstring).
ENVIRONMENTS = {
    "joeynmt": [
        ["torch==2.13.0"],
        ["joeynmt==2.3.*", "importlib-metadata", "sentencepiece==0.2.0"],
    ],
    "marian": [["torch==2.13.0"], ["transformers", "sentencepiece"]],
}


def build_environment(name: str, venvs: Path) -> str | None:
    """Create `<venvs>/<name>` with its packages unless it is ready; None, or why it failed."""
    home = venvs / name
    if (home / ".ready").is_file():
        return None
    log = venvs / "logs" / f"install-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"creating {home} (log: {log}) ...", file=sys.stderr, flush=True)
    python = str(home.absolute() / "bin" / "python")
    steps = {"python -m venv": [sys.executable, "-m", "venv", str(home)]}
    for packages in ENVIRONMENTS[name]:
        steps[f"pip install {' '.join(packages)}"] = [python, "-m", "pip", "install", *packages]
    with log.open("w") as handle:
        for what, command in steps.items():
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                return f"{what}: {reason(log, first_error=True)}"
    (home / ".ready").write_text("\n".join(steps) + "\n")
    return None


def reason(log: Path, *, first_error: bool = False) -> str:
    """One line of a log that says what went wrong.

    pip states the cause in its first `ERROR:` line (`first_error`); a Python traceback in its
    last line that names an error. Otherwise the last line of the log.
    """
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if first_error:
        errors = [line for line in lines if line.startswith("ERROR")][:1]
    else:
        errors = [line for line in lines if "Error" in line or line.startswith("ERROR")][-1:]
    return (errors or lines[-1:] or ["no output"])[0][:200]


def prepare_work(args: argparse.Namespace, work: Path) -> None:
    """Write what every system reads into `work`: tokenizer, corpus, batch plan, decoding input.

    `tokenizer/joint.model` is one unigram SentencePiece model trained on train.en + train.fr;
    `corpus.npz` holds the tokenized training pairs and `plan.json` the pair indices of the first
    warmup + steps batches of attnkit's shuffled length-bucketed batching; `decode.en` holds the
    first `--decode-limit` non-blank test lines sorted by their token count.
    """
    src, tgt = read_parallel(args.data / "train.en", args.data / "train.fr")
    toks = train_tokenizers(src, tgt, work / "tokenizer", vocab_size=VOCAB_SIZE, joint=True)
    corpus, _ = tokenize_corpus(src, tgt, toks.src, toks.tgt, max_len=MAX_LEN)
    corpus.save(work / "corpus.npz")
    plan = make_batches(
        corpus.src_lengths(), corpus.tgt_lengths(), max_tokens=args.max_tokens, shuffle=True, seed=1
    )[: args.warmup + args.steps]
    if len(plan) < args.warmup + args.steps:
        raise UserError(f"the corpus has only {len(plan)} batches of {args.max_tokens} tokens")
    (work / "plan.json").write_text(json.dumps([batch.tolist() for batch in plan]))
    lines = [line for line in read_lines(args.data / "test_2016_flickr.en") if line.strip()]
    lines = lines[: args.decode_limit]
    lengths = [len(ids) for ids in toks.src.encode(lines)]
    write_lines(work / "decode.en", [lines[i] for i in np.argsort(lengths, kind="stable")])


def attnkit_train(
    model: torch.nn.Module, work: Path, warmup: int, device: torch.device
) -> tuple[float, int]:
    """Train on every planned batch with attnkit's training step; the seconds and target tokens
    of the batches after `warmup`, collating included."""
    corpus = TokenizedCorpus.load(work / "corpus.npz")
    plan = json.loads((work / "plan.json").read_text())
    trainer = Trainer(model, attnkit_loss=True, device=device)
    seconds, tokens = 0.0, 0
    for step, indices in enumerate(plan, start=1):
        lr = learning_rate(
            step, lr=LR, warmup=LR_WARMUP, schedule="inverse_sqrt", max_steps=len(plan)
        )
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        batch = collate(corpus, np.asarray(indices))
        trainer.step(batch)
        if step > warmup:
            seconds += time.perf_counter() - start
            tokens += batch.n_tgt_tokens
    return seconds, tokens


def attnkit_decode(
    translator: Translator, lines: list[str], repeats: int
) -> tuple[float, list[int]]:
    """Translate `lines` in consecutive batches of DECODE_BATCH sentences after a 2-sentence
    warm-up, `repeats` times; the seconds of the fastest pass and the length of each best
    output."""
    budget = DECODE_BATCH * (translator.max_len + 1)  # one batch per chunk of sentences

    def one_pass() -> list[int]:
        lengths = []
        for first in range(0, len(lines), DECODE_BATCH):
            found = translator.translate(lines[first : first + DECODE_BATCH], max_tokens=budget)
            lengths.extend(len(hyps[0].tokens) for hyps in found)
        synchronize(translator.device)  # the pass ends when the GPU's work does
        return lengths

    translator.translate(lines[:2], max_tokens=budget)
    return fastest_pass(one_pass, repeats)


def attnkit_worker(args: argparse.Namespace) -> dict:
    """attnkit's part, run in a process of its own: train on the plan, then decode; the results."""
    runtime.configure(args.threads)  # as `attnkit train` does: threads, freed memory, attention
    torch.manual_seed(1)
    tokenizers = load_tokenizers(args.worker / "tokenizer")
    vocab = tokenizers.src.vocab_size
    model = build_model(ModelConfig(preset="small"), src_vocab=vocab, tgt_vocab=vocab)
    device = torch.device(args.device)
    seconds, tokens = attnkit_train(model, args.worker, args.warmup, device)
    peak_rss, peak_gpu = peak_rss_mib(), peak_gpu_mib(torch, device)
    decode = DecodeConfig(beam=BEAM, max_len_a=0.0, max_len_b=args.out_len, min_len=args.out_len)
    translator = Translator(model.eval(), tokenizers, Config(decode=decode), device)
    lines = read_lines(args.worker / "decode.en")
    decode_seconds, lengths = attnkit_decode(translator, lines, args.decode_repeats)
    trained = {"seconds": seconds, "tokens": tokens, "batches": args.steps}
    decoded = {"seconds": decode_seconds, "sentences": len(lines), "tokens": sum(lengths)}
    version = f"attnkit (this tree), torch {torch.__version__}"
    return worker_result("attnkit", version, model, trained, decoded, peak_rss, peak_gpu)


def worker_command(system: str, args: argparse.Namespace, work: Path) -> list[str]:
    """The command line that runs one system's worker on the prepared `work` folder."""
    common = ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    common += ["--out-len", str(args.out_len), "--device", args.device]
    common += ["--decode-repeats", str(args.decode_repeats)]
    if system == "attnkit":
        common += ["--current-python"] * args.current_python  # its own checks see the same flags
        return [sys.executable, str(Path(__file__).resolve()), str(args.data), "--worker",
                str(work), "--steps", str(args.steps), *common]  # fmt: skip
    python = str((args.venvs / system / "bin" / "python").absolute())  # not resolve(): a link
    python = sys.executable if args.current_python else python
    schedule = ["--decode-batch", str(DECODE_BATCH), "--lr", str(LR), "--lr-warmup", str(LR_WARMUP)]
    if system == "marian":
        return [python, str(BENCHMARKS / "peers_marian.py"), str(work), *common, *schedule]
    joey_batch = args.joeynmt_batch_size or args.max_tokens * 75 // 32
    return [python, str(BENCHMARKS / "peers_joeynmt.py"), str(work), "--data", str(args.data),
            "--steps", str(args.steps), "--batch-size", str(joey_batch), *common, *schedule]  # fmt: skip


def run_worker(system: str, command: list[str], args: argparse.Namespace, log: Path) -> dict:
    """Run one worker with `args.threads` threads; its JSON result, or an `error` saying why
    none came."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",  # nothing may be downloaded at run time
    }
    if not args.current_python:
        env["PYTHONPATH"] = ""  # each worker sees only its own environment
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"running {system} (log: {log}) ...", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=handle, text=True, env=env, check=False
        )
    results = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not results:
        return {"system": system, "error": f"failed: {reason(log)}"}
    return json.loads(results[-1])


def table(results: list[dict]) -> str:
    """The results as an aligned markdown table, with attnkit's speeds over each system's."""
    ours = next((r for r in results if r["system"] == "attnkit" and "error" not in r), None)
    header = ["system", "version", "trained params", "tgt tok/batch", "train tgt tok/s", "peak RSS MiB",
              "peak GPU MiB", "beam-5 sent/s", "out tok/sent", "attnkit/x train",
              "attnkit/x decode"]  # fmt: skip
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["system"], r["error"], *[""] * (len(header) - 2)])
            continue
        ratios = ["", ""]
        if ours is not None:
            ratios = [
                f"{ours['train_tokens_per_s'] / r['train_tokens_per_s']:.2f}x",
                f"{ours['decode_sentences_per_s'] / r['decode_sentences_per_s']:.2f}x",
            ]
        rows.append([
            r["system"], r["version"], f"{r['params'] / 1e6:.2f}M",
            f"{r['tgt_tokens_per_batch']:,.0f}", f"{r['train_tokens_per_s']:,.0f}",
            f"{r['peak_rss_mib']:,.0f}",
            "-" if r.get("peak_gpu_mib") is None else f"{r['peak_gpu_mib']:,.0f}",
            f"{r['decode_sentences_per_s']:.1f}",
            f"{r['output_tokens_per_sentence']:.1f}", *ratios,
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="Multi30k folder: train.en, train.fr, test files")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per system")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch, padded")
    parser.add_argument(
        "--joeynmt-batch-size",
        type=int,
        help="JoeyNMT's token batch_size (default: 75/32 x --max-tokens, see the docstring)",
    )
    parser.add_argument("--decode-limit", type=int, default=1000, help="test sentences to decode")
    parser.add_argument(
        "--decode-repeats", type=int, default=3, help="decoding passes; the fastest counts"
    )
    parser.add_argument("--out-len", type=int, default=25, help="tokens per translation")
    parser.add_argument("--venvs", type=Path, default=Path(".bench"), help="peer environments")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    parser.add_argument(
        "--current-python",
        action="store_true",
        help="run the peers with this interpreter instead of building environments",
    )
    parser.add_argument("--only", default=",".join(SYSTEMS), help="systems to run, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # attnkit's own process
    args = parser.parse_args()
    for name in ("steps", "warmup", "threads", "max_tokens", "decode_limit", "decode_repeats",
                 "out_len"):  # fmt: skip
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA device here")
    if args.device == "cuda" and not args.current_python:
        parser.error("--device cuda needs --current-python: the environments built here hold "
                     "the CPU build of torch")  # fmt: skip
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in SYSTEMS]
    if unknown or not args.only:
        parser.error(f"--only: unknown system {unknown} (known: {', '.join(SYSTEMS)})")
    return args


def main() -> None:
    args = parse_args()
    missing = [name for name in DATA_FILES if not (args.data / name).is_file()]
    if missing:
        sys.exit(f"{args.data}: not a Multi30k folder (missing {', '.join(missing)})")
    if args.worker is not None:
        print(json.dumps(attnkit_worker(args)))
        return

    ready = {
        name: None
        if name == "attnkit" or args.current_python
        else build_environment(name, args.venvs)
        for name in args.only
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="attnkit-peers-") as tmp:
        work = Path(tmp)
        print("training the shared SentencePiece model ...", file=sys.stderr, flush=True)
        prepare_work(args, work)
        for system in args.only:
            if ready[system] is not None:
                results.append({"system": system, "error": f"not installed: {ready[system]}"})
                continue
            log = args.venvs / "logs" / f"{system}.log"
            results.append(run_worker(system, worker_command(system, args, work), args, log))
    print(
        f"{device_name(torch.device(args.device))}, "
        f"threads {args.threads}, {args.steps} timed training steps after {args.warmup}, "
        f"max tokens {args.max_tokens}, beam {BEAM}, {args.out_len} output tokens, "
        f"decoding batches of {DECODE_BATCH} sentences"
    )
    print(table(results))
    if args.json is not None:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
