"""The model protocol every sequence-to-sequence architecture implements (docs/design.md).

Search algorithms (greedy, beam, sampling), the training loop, the study, the server and the
exporters use only the names declared in `Seq2Seq`, so a Transformer and a recurrent model are
interchangeable everywhere and no code outside `models/` asks which architecture it holds.
Masks follow one convention: `True` marks a real token (attend), `False` marks padding.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor, nn


class Memory(NamedTuple):
    """What the encoder hands the decoder: states (B, S, D) and the source mask (B, S).

    `derived` holds tensors (B, ...) that a model computes from the states once per batch and
    reads at every decoding step, such as the Transformer's cross-attention keys and values. They
    live here rather than in the decoder state because they change only when the memory does:
    beam search reorders the state at every step but the memory only when sentences finish.
    """

    states: Tensor
    mask: Tensor
    derived: tuple[Tensor, ...] = ()

    def reorder(self, indices: Tensor) -> Memory:
        """Select (and repeat) batch rows, e.g. to expand each sentence to its beam."""
        return Memory(
            self.states.index_select(0, indices),
            self.mask.index_select(0, indices),
            tuple(tensor.index_select(0, indices) for tensor in self.derived),
        )


class State(Protocol):
    """Decoder state between steps: a key/value cache or a recurrent hidden state."""

    def reorder(self, indices: Tensor) -> State:
        """Return the state of the batch rows `indices` (B',), in that order."""
        ...


class Step(NamedTuple):
    """One decoding step: log-probabilities (B, V), the new state, cross-attention (B, S) or None."""

    log_probs: Tensor
    state: State
    attention: Tensor | None


class Seq2Seq(Protocol):
    """An encoder-decoder model as the rest of attnkit sees it.

    Attributes generic code reads: `output_projection` (an nn.Linear from the decoder states to
    the vocabulary; the CPU training loss applies it itself), `source_embedding` (the
    nn.Embedding of source tokens, where the study measures how much gradient reaches each
    source position), and `attention_label` (what its cross-attention is called in figures, or
    None for a model without attention).
    """

    output_projection: nn.Linear
    source_embedding: nn.Embedding
    attention_label: str | None

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor,
        tgt_in: Tensor,
        positions: Tensor | None = None,
        *,
        project: bool = True,
    ) -> Tensor:
        """Teacher forcing: logits (B, T, V) for every target position at once.

        With `positions` (N,), flat indices into the B x T target positions, only the logits
        (N, V) of those: training passes the real ones, so padding costs no output projection.
        With `project=False`, what `hidden` returns: the CPU training loss projects the states
        itself, and it asks through `forward` because DistributedDataParallel synchronises the
        gradients of what runs through the forward of the module it wraps.
        """
        ...

    def hidden(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, positions: Tensor | None = None
    ) -> Tensor:
        """What `forward` feeds its `output_projection`: (B, T, D), or (N, D) at `positions`."""
        ...

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Encode a source batch (B, S) into memory."""
        ...

    def decode(self, memory: Memory, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: the decoder states (B, T, D) for the target inputs `tgt_in` (B, T)."""
        ...

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        """Teacher-forced cross-attention of every decoder layer and head (L, B, H, T, S), for
        heatmaps and the API; (1, B, 1, T, S) for a recurrent model's one attention, None for
        a model without attention."""
        ...

    def init_state(self, memory: Memory) -> State:
        """The decoder state before the first target token."""
        ...

    def decode_step(
        self, memory: Memory, state: State, prev_tokens: Tensor, *, need_attention: bool = False
    ) -> Step:
        """Advance every row by one token `prev_tokens` (R,); attention only when asked.

        The state has R rows and the memory B, where R is a multiple G of B: rows b*G ..
        b*G+G-1 decode from memory row b. Beam search keeps one memory row per sentence for
        its K rows (G = K) rather than K copies; greedy search has G = 1."""
        ...


class TeacherForcing(nn.Module):
    """`forward` and `hidden` of the protocol, written once for every architecture from its
    `encode`, `decode` and `output_projection`.

    The one base class of the models, and it holds no abstract methods: each architecture
    defines the rest of the protocol itself (composition inside, this shared frame outside).
    """

    output_projection: nn.Linear

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor,
        tgt_in: Tensor,
        positions: Tensor | None = None,
        *,
        project: bool = True,
    ) -> Tensor:
        """Teacher forcing: logits (B, T, V), or (N, V) at `positions`; the decoder states when
        not `project` (see `Seq2Seq.forward`)."""
        hidden = self.hidden(src, src_mask, tgt_in, positions)
        return self.output_projection(hidden) if project else hidden

    def hidden(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, positions: Tensor | None = None
    ) -> Tensor:
        """What the output projection reads in `forward`: (B, T, D), or (N, D) at `positions`."""
        memory = self.encode(src, src_mask)  # type: ignore[attr-defined]
        return select_positions(self.decode(memory, tgt_in), positions)  # type: ignore[attr-defined]


def select_positions(hidden: Tensor, positions: Tensor | None) -> Tensor:
    """Decoder states (B, T, D) -> those at flat `positions` (N, D), or all when None."""
    if positions is None:
        return hidden
    return hidden.reshape(-1, hidden.size(-1)).index_select(0, positions)


def padding_mask(tokens: Tensor, pad_id: int = 0) -> Tensor:
    """The mask of real tokens (B, L): True where `tokens` is not padding."""
    return tokens.ne(pad_id)


__all__ = [
    "Memory",
    "Seq2Seq",
    "State",
    "Step",
    "TeacherForcing",
    "padding_mask",
    "select_positions",
]
