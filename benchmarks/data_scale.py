"""Data scale: the time and peak memory of preparing corpora of 29k to 10M pairs, and of a start
that finds them prepared.

The script builds each corpus itself: Multi30k English-French (`--data`, the folder with
train.en and train.fr) repeated to N pairs, every line prefixed with its number so that no two
pairs are equal. One joint 8,000-piece SentencePiece model is trained once on Multi30k and used
at every size. For each size, each part runs in a fresh interpreter, so its peak memory is its
own:

- `build`: the first start, `data.cache.cached_corpus` with no cache: the text streamed,
  encoded on every core, written to disk;
- `reuse`: a later start (a resume, another worker): `cached_corpus` finds the cache and maps
  it, then `make_batches` orders an epoch and `collate` builds the first batch: time to ready;
- `batches`: `collate` over the first `--batches` batches of a shuffled epoch of the mapped
  corpus: batches/s and tokens/s, which must not fall as the corpus grows;
- `in-memory` (sizes up to `--in-memory-max`): what `attnkit train` did before the cache, the
  whole text read with `read_parallel` and tokenized with `tokenize_corpus`, for comparison;
- `tokenizer` (only when named in `--parts`): SentencePiece training on the streamed corpus,
  a reservoir sample of `--tokenizer-sample` sentences;
- `start` and `resume` (only when named): `attnkit train` itself, the Multi30k recipe's `small`
  Transformer on the corpus with the one tokenizer (`data.spm_src`): a first start from an
  empty run directory for `--train-steps` steps (the data read, checked, cached), then a resume
  for 10 more: the time to the first step's end (imports included), peak memory, and training
  target tokens/s (the median of the logged steps after the first).

Memory is reported as the peak RSS of the part's main process (ru_maxrss, which counts the
pages of a mapped cache it touched: page cache the kernel may drop, shared by every process
that maps the cache), the peak of its anonymous memory alone (its own arrays and objects), the
peak RSS of its largest worker process, and the peak of the summed proportional set size (PSS,
which shares mapped pages and libraries fairly) of the whole process tree; all but the first
are sampled every 50 ms. Every part imports `attnkit.data.batching`, and with it PyTorch
(about 230 MiB). The load column is the machine's 1-minute load average when the part ended:
the times are only comparable at similar loads.

    python benchmarks/data_scale.py --data ../shared/data/multi30k --sizes 29000 300000 3000000 \\
        --json docs/figures/data_scale.json --plot docs/figures/data_scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SIZES = (29_000, 300_000, 3_000_000, 10_000_000)
PARTS = ("build", "reuse", "batches", "in-memory", "tokenizer", "start", "resume")
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "multi30k_en_fr.yaml"
MAX_LEN = 256
MAX_TOKENS = 4096  # tokens a batch, as the recipes use


# --- inside a part's own interpreter ----------------------------------------------------------


def measure(part: str, corpus: Path, work: Path, args: argparse.Namespace) -> dict:
    """Run one part on the corpus in `corpus` (train.en, train.fr) and time it."""
    start = time.perf_counter()
    from attnkit.data.batching import collate, make_batches
    from attnkit.data.cache import cached_corpus
    from attnkit.data.corpus import iter_lines, read_parallel, tokenize_corpus
    from attnkit.data.tokenizer import load_tokenizers, train_tokenizers

    src, tgt = corpus / "train.en", corpus / "train.fr"
    cache_dir = work / "cache"
    result: dict = {}
    if part == "tokenizer":
        train_tokenizers(
            iter_lines(src),
            iter_lines(tgt),
            work / "tokenizer",
            vocab_size=8000,
            sample=args.tokenizer_sample,
        )
        result["seconds"] = time.perf_counter() - start
        return result
    if part in ("start", "resume"):
        return measure_training(part, src, tgt, work, args, start)
    tokenizers = load_tokenizers(args.work / "tokenizer")
    result["import_seconds"] = time.perf_counter() - start
    if part == "in-memory":
        sources, targets = read_parallel(src, tgt)
        data, _ = tokenize_corpus(sources, targets, tokenizers.src, tokenizers.tgt, max_len=MAX_LEN)
        result["seconds"] = time.perf_counter() - start
        result["pairs"] = len(data)
        return result
    if part == "build":
        shutil.rmtree(cache_dir, ignore_errors=True)
    mapping = time.perf_counter()
    data, report, message = cached_corpus(
        src, tgt, tokenizers, max_len=MAX_LEN, cache_dir=cache_dir, progress=args.progress
    )
    result["cache_seconds"] = time.perf_counter() - mapping
    result["message"], result["pairs"] = message, len(data)
    if part == "build":
        result["seconds"] = time.perf_counter() - start
        return result
    ready = time.perf_counter()
    batches = make_batches(
        data.src_lengths(), data.tgt_lengths(), max_tokens=MAX_TOKENS, shuffle=True, seed=1
    )
    result["batching_seconds"] = time.perf_counter() - ready
    collate(data, batches[0])
    result["seconds"] = time.perf_counter() - start  # to the first batch, imports included
    if part == "batches":
        chosen = batches[: args.batches]
        began = time.perf_counter()
        tokens = 0
        for indices in chosen:
            batch = collate(data, indices)
            tokens += int(batch.src_mask.sum()) + batch.n_tgt_tokens
        seconds = time.perf_counter() - began
        result["batches_per_s"] = len(chosen) / seconds
        result["tokens_per_s"] = tokens / seconds
        result["batches"] = len(batches)
    return result


def measure_training(
    part: str, src: Path, tgt: Path, work: Path, args: argparse.Namespace, start: float
) -> dict:
    """`attnkit train` on the corpus: a first start, or a resume of it, in this process."""
    import statistics

    from attnkit import config as config_lib
    from attnkit.training import loop

    run_dir = work / "run"
    steps = args.train_steps if part == "start" else args.train_steps + 10
    if part == "start":
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = config_lib.load(RECIPE, [
        f"run.dir={run_dir}", f"data.train_src={src}", f"data.train_tgt={tgt}",
        f"data.spm_src={args.work / 'tokenizer' / 'joint.model'}", "run.threads=2",
        f"train.max_steps={steps}", f"train.valid_every={args.train_steps}", "train.log_every=1",
        "train.max_minutes=null", "train.progress=false", "train.save_every_minutes=null",
    ])  # fmt: skip
    first: list[float] = []
    report = loop._report

    def timed_report(session, step, tokens_per_s):
        first.append(time.perf_counter())
        report(session, step, tokens_per_s)

    loop._report = timed_report  # the first call ends the first step
    loop.train(cfg)
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rates = [e["tgt_tokens_per_s"] for e in map(json.loads, lines)
             if e["event"] == "train" and e["step"] > steps - args.train_steps + 1]  # fmt: skip
    return {
        "seconds": time.perf_counter() - start,
        "first_step_seconds": first[0] - start,
        "tokens_per_s": statistics.median(rates),
        "steps": steps,
    }


def child_main(args: argparse.Namespace) -> None:
    """Print one part's result as one JSON line, with this process's peak memory."""
    part, corpus, work = args.child
    result = measure(part, Path(corpus), Path(work), args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# --- the driver -------------------------------------------------------------------------------


def write_corpus(base: Path, out: Path, pairs: int) -> None:
    """Multi30k's train.en and train.fr repeated to `pairs` lines, each prefixed with its number."""
    if all(_line_count(out / f"train.{lang}") == pairs for lang in ("en", "fr")):
        return
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "fr"):
        lines = (base / f"train.{lang}").read_text(encoding="utf-8").splitlines()
        with (out / f"train.{lang}").open("w", encoding="utf-8") as handle:
            for start in range(0, pairs, len(lines)):
                count = min(len(lines), pairs - start)
                handle.writelines(f"{start + i} {line}\n" for i, line in enumerate(lines[:count]))


def _line_count(path: Path) -> int:
    if not path.is_file():
        return -1
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))


def tree_memory_mib(pid: int) -> tuple[float, float, float]:
    """The summed PSS of a process and its descendants, the largest RSS among the descendants,
    and the process's own anonymous memory (its RSS without mapped files), in MiB (processes
    gone meanwhile count 0)."""
    pss, worker_rss, anonymous, pending = 0, 0, 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            pss += int(fields["Pss"].split()[0])
            if current != pid:
                worker_rss = max(worker_rss, int(fields["Rss"].split()[0]))
            else:
                anonymous = int(fields["Anonymous"].split()[0])
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending += [int(child) for child in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, KeyError):
            continue
    return pss / 1024, worker_rss / 1024, anonymous / 1024


def run_part(part: str, corpus: Path, work: Path, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter, sampling the PSS of its process tree meanwhile."""
    command = [sys.executable, __file__, "--child", part, str(corpus), str(work)]
    command += ["--work", str(args.work), "--batches", str(args.batches)]
    command += ["--tokenizer-sample", str(args.tokenizer_sample)]
    command += ["--train-steps", str(args.train_steps)]
    command += ["--progress"] if args.progress else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0.0, 0.0, 0.0]  # tree PSS, largest worker RSS, main anonymous

    def sample() -> None:
        while process.poll() is None:
            peak[:] = map(max, peak, tree_memory_mib(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{part} on {corpus} failed (exit {process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    return {
        "part": part,
        **result,
        "tree_pss_mib": peak[0],
        "worker_peak_rss_mib": peak[1],
        "anonymous_mib": peak[2],
        "load_average": os.getloadavg()[0],
    }


def train_tokenizer(base: Path, work: Path) -> None:
    """The one joint SentencePiece model of every size, trained on Multi30k itself."""
    from attnkit.data.corpus import iter_lines
    from attnkit.data.tokenizer import train_tokenizers

    if not (work / "tokenizer" / "joint.model").is_file():
        train_tokenizers(
            iter_lines(base / "train.en"), iter_lines(base / "train.fr"), work / "tokenizer",
            vocab_size=8000,
        )  # fmt: skip


def plot(results: list[dict], path: Path) -> None:
    """Peak memory and time against corpus size, one line a part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"build": "o-", "reuse": "s-", "in-memory": "x--", "tokenizer": "d:",
              "start": "^-", "resume": "v-"}  # fmt: skip
    labels = {
        "build": "first start: build the cache",
        "reuse": "later start: map the cache, first batch",
        "in-memory": "before: read and tokenize in memory",
        "tokenizer": "SentencePiece training (streamed sample)",
        "start": "attnkit train: first start, 30 steps",
        "resume": "attnkit train: resume, 10 steps",
    }
    for part, style in styles.items():
        rows = [r for r in results if r["part"] == part]
        if not rows:
            continue
        sizes = [r["size"] for r in rows]
        left.plot(sizes, [r["tree_pss_mib"] for r in rows], style, label=labels[part])
        right.plot(sizes, [r["seconds"] for r in rows], style, label=labels[part])
    for axis, label in ((left, "peak memory of all its processes (PSS), MiB"), (right, "seconds")):
        axis.set_xscale("log")
        axis.set_xlabel("training pairs")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    left.set_title("peak memory")
    right.set_title("wall time")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def print_row(size: int, r: dict) -> None:
    extra = ""
    if r["part"] == "reuse":
        extra = (
            f"imports {r['import_seconds']:.2f} s, check and map {r['cache_seconds']:.2f} s, "
            f"order an epoch {r['batching_seconds']:.2f} s"
        )
    elif r["part"] == "batches":
        extra = f"{r['batches_per_s']:,.0f} batches/s, {r['tokens_per_s'] / 1e6:.2f}M tokens/s"
    elif r["part"] == "build":
        extra = f"{size / r['seconds']:,.0f} pairs/s"
    elif r["part"] in ("start", "resume"):
        extra = (
            f"first step after {r['first_step_seconds']:.1f} s, "
            f"{r['tokens_per_s']:,.0f} target tokens/s"
        )
    print(
        f"{size:>11,} {r['part']:>10} {r['seconds']:>8.1f} {r['peak_rss_mib']:>9,.0f} "
        f"{r['anonymous_mib']:>9,.0f} {r['worker_peak_rss_mib']:>10,.0f} "
        f"{r['tree_pss_mib']:>9,.0f} {r['load_average']:>5.1f}  {extra}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder with Multi30k's train.en and train.fr")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:4]))
    parser.add_argument("--work", type=Path, default=Path("/tmp/attnkit_data_scale"))
    parser.add_argument("--batches", type=int, default=2000, help="batches collated in `batches`")
    parser.add_argument("--in-memory-max", type=int, default=3_000_000)
    parser.add_argument("--tokenizer-sample", type=int, default=500_000)
    parser.add_argument("--train-steps", type=int, default=30, help="steps of `start`")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    parser.add_argument("--progress", action="store_true", help="show the build's progress bar")
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--replot", type=Path, nargs="+", metavar="JSON",
        help="only draw --plot from the JSON files of earlier runs",
    )  # fmt: skip
    parser.add_argument(
        "--child", nargs=3, metavar=("PART", "CORPUS", "WORK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if args.replot:
        plot([r for path in args.replot for r in json.loads(path.read_text())], args.plot)
        return
    if args.data is None:
        parser.error("--data is required (the folder with Multi30k's train.en and train.fr)")
    train_tokenizer(args.data, args.work)
    print(f"{usable_cores_line()}; max_len {MAX_LEN}, batches of {MAX_TOKENS} tokens")
    print(
        f"{'pairs':>11} {'part':>10} {'seconds':>8} {'main RSS':>9} {'anonymous':>9} "
        f"{'worker RSS':>10} {'tree PSS':>9} {'load':>5}  (peak MiB; load: the 1-minute average)"
    )
    results = []
    for size in args.sizes:
        corpus = args.work / f"corpus-{size}"
        write_corpus(args.data, corpus, size)
        for part in args.parts:
            if part == "in-memory" and size > args.in_memory_max:
                continue
            r = run_part(part, corpus, corpus, args) | {"size": size}
            results.append(r)
            print_row(size, r)
        if not args.keep:
            shutil.rmtree(corpus)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)


def usable_cores_line() -> str:
    from attnkit.data.binarize import usable_cores

    return f"{usable_cores()} usable cores"


if __name__ == "__main__":
    main()
