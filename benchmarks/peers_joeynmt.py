"""JoeyNMT worker for benchmarks/peers.py: JoeyNMT 2.3's own data pipeline, training step and search.

Runs inside its own virtual environment (`.bench/joeynmt`: torch, joeynmt, sentencepiece), never
with attnkit installed. It writes a JoeyNMT YAML config into the work folder that peers.py
prepared (keys as JoeyNMT 2.3's config.py, builders.py, model.py, tokenizers.py and
vocabulary.py read them): a 3+3-layer pre-norm Transformer, width 256, 4 heads, FFN 1024, ReLU,
tied source, target and output embeddings, dropout 0.1; the shared SentencePiece model
(`tokenizer/joint.model`) as JoeyNMT's sentencepiece tokenizer, with a vocabulary file listing
its pieces in id order (JoeyNMT numbers the specials its own way: unk 0, pad 1, bos 2, eos 3);
token batches of `--batch-size` (padding counted, no length bucketing: JoeyNMT's sampler);
Adam (0.9, 0.98), `warmupinversesquareroot` schedule, label smoothing 0.1, loss normalised by
tokens, clipping at 1; beam 5 with alpha 0.6, 64 sentences per batch, out_len + 1 decoder steps
per sentence (min_output_length = out_len, max_output_length = out_len + 1): `--out-len` tokens,
then the end of sentence or, since JoeyNMT cannot force it, one more token.

Training runs the body of `TrainManager.train_and_validate` itself (next batch from JoeyNMT's
iterator, `_train_step`, clip, optimizer step, scheduler step, zero_grad), without the logging,
validation and checkpoints around it, so that the steps after `--warmup` can be timed alone;
batches are made and tokenized on the fly, as JoeyNMT always does, inside the timed steps.
Decoding uses `joeynmt.prediction.predict` on `decode.en`. With `--device cuda` JoeyNMT runs on
the GPU with its `fp16` setting (fp16 autocast and a gradient scaler, its only mixed precision),
and each timed step waits for its GPU work. Prints one JSON line on stdout.

    .bench/joeynmt/bin/python benchmarks/peers_joeynmt.py WORK --data ../shared/data/multi30k
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import joeynmt.prediction
import sentencepiece as spm
import torch
import yaml
from joeynmt.batch import Batch
from joeynmt.config import BaseConfig, load_config, parse_global_args, set_validation_args
from joeynmt.datasets import BaseDataset, build_dataset
from joeynmt.model import Model
from joeynmt.prediction import predict, prepare
from joeynmt.training import TrainManager
from peers_result import fastest_pass, peak_gpu_mib, peak_rss_mib, worker_result
from torch.utils.data import DataLoader


def side(lang: str, work: Path) -> dict:
    """The `data.src` / `data.trg` section for one language: the shared SentencePiece model."""
    return {
        "lang": lang,
        "level": "bpe",
        "lowercase": False,
        "max_length": 256,
        "voc_file": str(work / "joeynmt" / "vocab.txt"),
        "tokenizer_type": "sentencepiece",
        "tokenizer_cfg": {"model_file": str(work / "tokenizer" / "joint.model")},
    }


def stack() -> dict:
    """The `model.encoder` / `model.decoder` section: the benchmark's size, pre-norm."""
    return {
        "type": "transformer",
        "num_layers": 3,
        "num_heads": 4,
        "hidden_size": 256,
        "ff_size": 1024,
        "dropout": 0.1,
        "layer_norm": "pre",
        "activation": "relu",
        "embeddings": {"embedding_dim": 256, "scale": True, "dropout": 0.1},
    }


def write_config(args: argparse.Namespace) -> Path:
    """Write JoeyNMT's config and vocabulary file into `<work>/joeynmt`; the config's path."""
    home = args.work / "joeynmt"
    home.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(args.work / "tokenizer" / "joint.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]  # specials included once
    (home / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    config = {
        "name": "peers",
        "model_dir": str(home / "model"),
        "use_cuda": args.device == "cuda",
        "fp16": args.device == "cuda",
        "random_seed": 1,
        "data": {
            "train": str(args.data / "train"),
            "test": str(args.work / "decode"),  # decode.en; no decode.fr, so no scoring
            "dataset_type": "plain",
            "src": side("en", args.work),
            "trg": side("fr", args.work),
        },
        "training": {
            "optimizer": "adam",
            "adam_betas": [0.9, 0.98],
            "learning_rate": args.lr,
            "learning_rate_min": 1e-8,  # below the first warm-up rate, so never a floor
            "scheduling": "warmupinversesquareroot",
            "learning_rate_warmup": args.lr_warmup,
            "loss": "crossentropy",
            "label_smoothing": 0.1,
            "normalization": "tokens",
            "clip_grad_norm": 1.0,
            "batch_type": "token",
            "batch_size": args.batch_size,
            "shuffle": True,
            "epochs": 1000,
            "logging_freq": 100,
            "validation_freq": 1000,
            "keep_best_ckpts": 0,
        },
        "testing": {
            "beam_size": 5,
            "beam_alpha": 0.6,
            "batch_type": "sentence",
            "batch_size": args.decode_batch,
            "min_output_length": args.out_len,
            "max_output_length": args.out_len + 1,  # the last step is the end of sentence
            "eval_metrics": [],
        },
        "model": {
            "initializer": "xavier_uniform",
            "embed_initializer": "xavier_uniform",
            "bias_initializer": "zeros",
            "tied_embeddings": True,
            "tied_softmax": True,
            "encoder": stack(),
            "decoder": stack(),
        },
    }
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def batches(loader: DataLoader, seed: int) -> Iterator[Batch]:
    """JoeyNMT's training batches, epoch after epoch, reseeded per epoch as `train_and_validate`."""
    epoch = 1
    while True:
        loader.dataset.seed = seed + epoch
        loader.batch_sampler.set_seed(seed + epoch)
        yield from loader
        epoch += 1


def train(
    trainer: TrainManager, train_data: BaseDataset, args: argparse.Namespace
) -> dict[str, float]:
    """`--warmup` + `--steps` JoeyNMT training steps; the later ones timed, batching included."""
    loader = train_data.make_iter(
        batch_size=trainer.args.batch_size,
        batch_type=trainer.args.batch_type,
        seed=trainer.seed,
        shuffle=trainer.args.shuffle,
        num_workers=0,
        device=trainer.device,
        eos_index=trainer.model.eos_index,
        pad_index=trainer.model.pad_index,
    )
    trainer.train_iter = loader
    model, stream = trainer.model, batches(loader, trainer.seed)
    model.train()
    model.zero_grad()
    seconds, tokens = 0.0, 0
    for step in range(1, args.warmup + args.steps + 1):
        start = time.perf_counter()
        batch = next(stream)
        trainer._train_step(batch)
        if trainer.clip_grad_fun is not None:
            trainer.clip_grad_fun(parameters=model.parameters())
        if trainer.scaler is None:
            trainer.optimizer.step()
        else:  # fp16 on CUDA, as `train_and_validate` does it
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
        trainer.scheduler.step(trainer.stats.steps)
        model.zero_grad()
        trainer.stats.steps += 1
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if step > args.warmup:
            seconds += time.perf_counter() - start
            tokens += int(batch.ntokens)  # non-pad target positions, eos included
    return {"seconds": seconds, "tokens": tokens, "batches": args.steps}


def decode(
    model: Model, test_data: BaseDataset, run: BaseConfig, args: argparse.Namespace
) -> dict[str, float]:
    """Translate `decode.en` with JoeyNMT's `predict`, after a 2-sentence warm-up: the fastest
    of `args.decode_repeats` timed passes."""
    (args.work / "joeynmt" / "warmup.en").write_text(
        "\n".join(test_data.src[:2]) + "\n", encoding="utf-8"
    )
    warmup = build_dataset(
        dataset_type="plain",
        path=str(args.work / "joeynmt" / "warmup"),
        src_lang=test_data.src_lang,
        trg_lang=test_data.trg_lang,
        split="test",
        tokenizer=test_data.tokenizer,
        sequence_encoder=test_data.sequence_encoder,
        has_prompt=test_data.has_prompt,
    )

    # JoeyNMT 2.3's `predict` parses testing.min_output_length but never hands it to `search`
    # (eos is then only forbidden at the first step), so it is bound onto `search` here.
    search = functools.partial(joeynmt.prediction.search, min_output_length=args.out_len)
    joeynmt.prediction.search = search

    def translate(data: BaseDataset) -> tuple:
        return predict(
            model=model, data=data, device=run.device, n_gpu=run.n_gpu, compute_loss=False,
            normalization="none", num_workers=0, args=run.test, autocast=run.autocast,
        )  # fmt: skip

    translate(warmup)
    seconds, found = fastest_pass(lambda: translate(test_data), args.decode_repeats)
    _, _, hypotheses, tokens, _, _ = found
    specials = set(model.trg_vocab.specials)
    lengths = [sum(t not in specials for t in sentence) for sentence in tokens]
    return {"seconds": seconds, "sentences": len(hypotheses), "tokens": sum(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="work folder written by benchmarks/peers.py")
    parser.add_argument("--data", type=Path, required=True, help="folder with train.en, train.fr")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=9600, help="tokens a batch, padded")
    parser.add_argument("--out-len", type=int, default=25, help="tokens per translation")
    parser.add_argument("--decode-batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--decode-repeats", type=int, default=3, help="passes; the fastest counts")
    parser.add_argument("--lr", type=float, default=7e-4, help="peak learning rate")
    parser.add_argument("--lr-warmup", type=int, default=400, help="learning-rate warm-up steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    args = parser.parse_args()
    args.work, args.data = args.work.resolve(), args.data.resolve()
    torch.set_num_threads(args.threads)
    for name in list(logging.root.manager.loggerDict):  # JoeyNMT logs every step at INFO
        if name.startswith("joeynmt"):
            logging.getLogger(name).setLevel(logging.WARNING)

    run = parse_global_args(load_config(write_config(args)), rank=0, mode="train")
    run.model_dir.mkdir(parents=True, exist_ok=True)
    model, train_data, _, test_data = prepare(run, rank=0, mode="train")
    trainer = TrainManager(
        model=model, model_dir=run.model_dir, device=run.device, n_gpu=run.n_gpu, rank=0,
        num_workers=0, autocast=run.autocast, seed=run.seed, train_args=run.train,
        dev_args=set_validation_args(run.test),
    )  # fmt: skip
    trained = train(trainer, train_data, args)
    peak_rss, peak_gpu = peak_rss_mib(), peak_gpu_mib(torch, run.device)
    decoded = decode(model, test_data, run, args)
    result = worker_result(
        "joeynmt",
        f"joeynmt {version('joeynmt')}, torch {torch.__version__}",
        model,
        trained,
        decoded,
        peak_rss,
        peak_gpu,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
