"""Recurrent encoder-decoders (RNN, GRU, LSTM), with or without attention, in the papers' order.

The encoder (Sutskever et al. 2014; bidirectional as in Bahdanau et al. 2015, §3.2), then three
decoders: none (Sutskever et al. 2014; with `context_every_step`, Cho et al. 2014), bahdanau
(Bahdanau et al. 2015, §3.1) and luong (Luong et al. 2015, §3), then the whole model. The
attention functions live in `attention.py`.

Memory. `encode` returns the top encoder layer's states (B, S, D'), D' = 2D when the encoder
is bidirectional (forward and backward states side by side, Bahdanau's annotations), else D.
The decoder's initial state is derived from that memory alone, so that beam search can reorder
it like any other: the sentence summary is the forward direction's state at the last real
position and the backward direction's at position 0, bridged to width D by Linear + tanh when
bidirectional. Every decoder layer starts from that summary, and so do an LSTM's cells: the
memory holds no encoder cells to pass on, and cells that start from the summary (as in JoeyNMT)
learned the reverse task much faster than cells that start at zero.

Masks: `src_mask` (B, S) is True on real tokens, padding on the right. The source is packed by
length, so padding never enters the recurrence; the target needs no mask (right padding never
reaches an earlier position, and the loss ignores padded positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnkit.models.attention import AdditiveAttention, LuongAttention
from attnkit.models.embeddings import init_weights, token_embeddings
from attnkit.models.protocol import Memory, Step, TeacherForcing
from attnkit.models.softmax import log_softmax

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
ATTENTIONS = ("none", "bahdanau", "luong")


@dataclass(frozen=True)
class RecurrentSize:
    """The width, depth and dropout of a recurrent encoder-decoder."""

    d_model: int  # hidden size of every layer and direction, and the embedding size
    encoder_layers: int
    decoder_layers: int
    dropout: float


# Sized so that a GRU with Bahdanau attention (bidirectional encoder, 8k joint vocabulary, tied
# embeddings) has about the parameters of the Transformer preset of the same name.
RNN_PRESETS: dict[str, RecurrentSize] = {
    "tiny": RecurrentSize(64, 2, 2, 0.1),  # 731,584 parameters (Transformer: 745,728)
    "small": RecurrentSize(320, 2, 2, 0.2),  # 7,999,680 (Transformer: 7,578,624)
    "base": RecurrentSize(640, 4, 4, 0.3),  # 46,537,600 (Transformer: 48,236,544)
    "big": RecurrentSize(1280, 4, 4, 0.3),  # 175,814,400 (Transformer: 184,553,472)
}


def recurrent_layers(
    cell: str,
    *,
    input_size: int,
    hidden_size: int,
    layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """A stacked tanh RNN, GRU or LSTM over (B, T, input) sequences, dropout between layers."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    return CELLS[cell](
        input_size,
        hidden_size,
        num_layers=layers,
        dropout=dropout if layers > 1 else 0.0,  # PyTorch warns about dropout after one layer
        batch_first=True,
        bidirectional=bidirectional,
    )


class RecurrentEncoder(nn.Module):
    """A stacked, optionally bidirectional RNN over the embedded source.

    Sequences are packed by length, so each direction starts and ends on real tokens and the
    states at padded positions are zero.
    """

    def __init__(
        self, *, cell: str, d_model: int, layers: int, dropout: float, bidirectional: bool
    ):
        super().__init__()
        self.rnn = recurrent_layers(
            cell,
            input_size=d_model,
            hidden_size=d_model,
            layers=layers,
            dropout=dropout,
            bidirectional=bidirectional,
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Embedded source x (B, S, D), mask (B, S) -> top-layer states (B, S, D')."""
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=x.size(1))
        return states


def final_states(memory: Memory, bidirectional: bool) -> Tensor:
    """Each sentence's summary (B, D'): where each direction of the encoder ended."""
    last = memory.mask.sum(1) - 1  # (B,) the last real position
    rows = torch.arange(last.numel(), device=last.device)
    forward = memory.states[rows, last]  # (B, D')
    if not bidirectional:
        return forward
    width = memory.states.size(-1) // 2
    return torch.cat([forward[:, :width], memory.states[:, 0, width:]], dim=-1)  # (B, 2D)


@dataclass(frozen=True)
class RecurrentState:
    """The decoder's state between steps; reorder selects batch rows for beam search."""

    hidden: Tensor  # (L, B, D) each decoder layer's hidden state
    cell: Tensor | None  # (L, B, D) LSTM memory cells; None for rnn and gru
    feed: Tensor | None  # (B, D) input to the next step beside the token: Luong's h~, Cho's summary

    def reorder(self, indices: Tensor) -> RecurrentState:
        """The state of batch rows `indices` (B',), in that order."""

        def pick(x: Tensor | None, dim: int) -> Tensor | None:
            return None if x is None else x.index_select(dim, indices)

        return RecurrentState(
            self.hidden.index_select(1, indices),
            pick(self.cell, 1),
            pick(self.feed, 0),
        )


def recur(rnn: nn.RNNBase, inputs: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
    """Run the stacked cell over inputs (B, T, I) from `state`: top-layer outputs (B, T, D)."""
    if state.cell is None:
        outputs, hidden = rnn(inputs, state.hidden)
        return outputs, dataclasses.replace(state, hidden=hidden)
    outputs, (hidden, cell) = rnn(inputs, (state.hidden, state.cell))
    return outputs, dataclasses.replace(state, hidden=hidden, cell=cell)


def unroll(
    decoder: nn.Module, x: Tensor, memory: Memory, state: RecurrentState, need_weights: bool
) -> tuple[Tensor, Tensor | None]:
    """Teacher forcing one step at a time, for decoders whose input depends on the last step:
    outputs (B, T, D) and, when asked, the attention of every step (B, T, S)."""
    outputs, weights = [], []
    for x_t in x.unbind(1):
        output, state, step_weights = decoder.step(x_t, memory, state)
        outputs.append(output)
        weights.append(step_weights)
    return torch.stack(outputs, 1), torch.stack(weights, 1) if need_weights else None


class PlainDecoder(nn.Module):
    """A decoder that sees the source only through its initial state (Sutskever et al. 2014, §2).

    With `context_every_step`, the sentence summary is also part of every step's input (Cho et
    al. 2014, §2.2). Nothing depends on the previous output, so teacher forcing runs the whole
    target through the recurrent layers in one call.
    """

    def __init__(
        self, *, cell: str, d_model: int, layers: int, dropout: float, context_every_step: bool
    ):
        super().__init__()
        self.context_every_step = context_every_step
        input_size = 2 * d_model if context_every_step else d_model
        self.rnn = recurrent_layers(
            cell, input_size=input_size, hidden_size=d_model, layers=layers, dropout=dropout
        )

    def start(
        self, memory: Memory, hidden: Tensor, cell: Tensor | None, summary: Tensor
    ) -> RecurrentState:
        """The state before the first token; the summary (B, D) is fed on when asked."""
        return RecurrentState(hidden, cell, summary if self.context_every_step else None)

    def memory_derived(self, states: Tensor) -> tuple[Tensor, ...]:
        """Nothing: this decoder does not attend."""
        return ()

    def forward(
        self, x: Tensor, memory: Memory, state: RecurrentState, *, need_weights: bool = False
    ) -> tuple[Tensor, None]:
        """Embedded target x (B, T, D) -> outputs (B, T, D), and no attention."""
        return self._run(x, state)[0], None

    def step(
        self, x: Tensor, memory: Memory, state: RecurrentState
    ) -> tuple[Tensor, RecurrentState, None]:
        """One token x (B, D) -> output (B, D), the next state, no attention."""
        outputs, state = self._run(x[:, None], state)
        return outputs[:, 0], state, None

    def _run(self, x: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        if state.feed is not None:
            x = torch.cat([x, state.feed[:, None].expand(-1, x.size(1), -1)], dim=-1)  # (B, T, 2D)
        return recur(self.rnn, x, state)


class BahdanauDecoder(nn.Module):
    """A decoder that attends before each step (Bahdanau et al. 2015, §3.1).

    The previous top-layer state s_{t-1} scores every encoder state; the context c_t joins the previous
    token's embedding as the cell's input. The output is the new state s_t, a function of the
    same s_{t-1}, y_{t-1} and c_t that the paper's maxout readout reads.
    """

    def __init__(self, *, cell: str, d_model: int, memory_size: int, layers: int, dropout: float):
        super().__init__()
        self.attention = AdditiveAttention(
            query_size=d_model, key_size=memory_size, hidden_size=d_model
        )
        self.rnn = recurrent_layers(
            cell,
            input_size=d_model + memory_size,
            hidden_size=d_model,
            layers=layers,
            dropout=dropout,
        )

    def start(
        self, memory: Memory, hidden: Tensor, cell: Tensor | None, summary: Tensor
    ) -> RecurrentState:
        """The state before the first token."""
        return RecurrentState(hidden, cell, None)

    def memory_derived(self, states: Tensor) -> tuple[Tensor, ...]:
        """The memory as the attention's keys (B, S, A), projected once: `Memory.derived`."""
        return (self.attention.keys(states),)

    def forward(
        self, x: Tensor, memory: Memory, state: RecurrentState, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Embedded target x (B, T, D) -> outputs (B, T, D), and attention (B, T, S) if asked."""
        return unroll(self, x, memory, state, need_weights)

    def step(
        self, x: Tensor, memory: Memory, state: RecurrentState
    ) -> tuple[Tensor, RecurrentState, Tensor]:
        """One token x (B, D) -> output (B, D), the next state, attention (B, S)."""
        attended = self.attention(state.hidden[-1], memory.states, memory.mask, *memory.derived)
        outputs, state = recur(self.rnn, torch.cat([x, attended.context], dim=-1)[:, None], state)
        return outputs[:, 0], state, attended.weights


class LuongDecoder(nn.Module):
    """A decoder that attends after each step, with input feeding (Luong et al. 2015, §3, §3.3).

    The new top state h_t scores every encoder state; the attentional vector
    h~_t = tanh(W_c [c_t; h_t]) is the output, and joins the next token's embedding as input.
    """

    def __init__(
        self, *, cell: str, d_model: int, memory_size: int, layers: int, dropout: float, score: str
    ):
        super().__init__()
        self.rnn = recurrent_layers(
            cell, input_size=2 * d_model, hidden_size=d_model, layers=layers, dropout=dropout
        )
        self.attention = LuongAttention(score=score, query_size=d_model, key_size=memory_size)
        self.combine = nn.Linear(memory_size + d_model, d_model, bias=False)  # W_c

    def start(
        self, memory: Memory, hidden: Tensor, cell: Tensor | None, summary: Tensor
    ) -> RecurrentState:
        """The state before the first token: h~_0 = 0."""
        return RecurrentState(hidden, cell, torch.zeros_like(summary))

    def memory_derived(self, states: Tensor) -> tuple[Tensor, ...]:
        """The memory as the attention's keys (B, S, Dq), projected once: `Memory.derived`."""
        return (self.attention.keys(states),)

    def forward(
        self, x: Tensor, memory: Memory, state: RecurrentState, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Embedded target x (B, T, D) -> attentional vectors (B, T, D), and attention
        (B, T, S) if asked."""
        return unroll(self, x, memory, state, need_weights)

    def step(
        self, x: Tensor, memory: Memory, state: RecurrentState
    ) -> tuple[Tensor, RecurrentState, Tensor]:
        """One token x (B, D) -> attentional vector (B, D), the next state, attention (B, S)."""
        outputs, state = recur(self.rnn, torch.cat([x, state.feed], dim=-1)[:, None], state)
        top = outputs[:, 0]  # h_t (B, D)
        attended = self.attention(top, memory.states, memory.mask, *memory.derived)
        attentional = torch.tanh(self.combine(torch.cat([attended.context, top], dim=-1)))
        return attentional, dataclasses.replace(state, feed=attentional), attended.weights


def recurrent_decoder(
    *,
    attention: str,
    attention_score: str,
    context_every_step: bool,
    cell: str,
    d_model: int,
    memory_size: int,
    layers: int,
    dropout: float,
) -> nn.Module:
    """The decoder that `attention` names: none (plain), bahdanau or luong."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if context_every_step and attention != "none":
        raise ValueError("context_every_step is for attention 'none'; attention brings its own")
    stack = dict(cell=cell, d_model=d_model, layers=layers, dropout=dropout)
    if attention == "none":
        return PlainDecoder(context_every_step=context_every_step, **stack)
    if attention == "bahdanau":
        return BahdanauDecoder(memory_size=memory_size, **stack)
    return LuongDecoder(memory_size=memory_size, score=attention_score, **stack)


def attention_label(cell: str, attention: str, attention_score: str) -> str | None:
    """How figures name a recurrent model's attention, e.g. "GRU, Bahdanau attention"."""
    if attention == "none":
        return None
    kind = attention.capitalize() + (f" ({attention_score})" if attention == "luong" else "")
    return f"{cell.upper()}, {kind} attention"


class RecurrentSeq2Seq(TeacherForcing):
    """A recurrent encoder-decoder implementing the Seq2Seq protocol.

    `attention` picks the decoder: none, bahdanau or luong (with `attention_score` dot, general
    or concat). Tying works as in the Transformer: with `tie_embeddings` the output projection
    (no bias) shares the target embedding, and with one joint vocabulary the source shares it too.
    Dropout applies to embeddings, between recurrent layers and before the output projection.
    Memory states are (B, S, 2D) with a bidirectional encoder, else (B, S, D).
    """

    def __init__(
        self,
        *,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int,
        encoder_layers: int,
        decoder_layers: int,
        cell: str = "lstm",
        attention: str = "bahdanau",
        attention_score: str = "general",
        bidirectional: bool = True,
        context_every_step: bool = False,
        dropout: float = 0.1,
        tie_embeddings: bool = True,
        joint_vocab: bool = True,
        pad_id: int = 0,
    ):
        super().__init__()
        self.bidirectional = bidirectional
        self.is_lstm = cell == "lstm"
        self.decoder_layers = decoder_layers
        self.attention_label = attention_label(cell, attention, attention_score)
        self.source_embedding, self.target_embedding = token_embeddings(
            src_vocab=src_vocab,
            tgt_vocab=tgt_vocab,
            d_model=d_model,
            pad_id=pad_id,
            share=tie_embeddings and joint_vocab,
        )
        self.dropout = nn.Dropout(dropout)
        self.encoder = RecurrentEncoder(
            cell=cell,
            d_model=d_model,
            layers=encoder_layers,
            dropout=dropout,
            bidirectional=bidirectional,
        )
        memory_size = 2 * d_model if bidirectional else d_model
        self.bridge = (
            nn.Sequential(nn.Linear(memory_size, d_model), nn.Tanh())
            if bidirectional
            else nn.Identity()
        )
        self.decoder = recurrent_decoder(
            attention=attention,
            attention_score=attention_score,
            context_every_step=context_every_step,
            cell=cell,
            d_model=d_model,
            memory_size=memory_size,
            layers=decoder_layers,
            dropout=dropout,
        )
        self.output_projection = nn.Linear(d_model, tgt_vocab, bias=False)
        init_weights(self, d_model)
        if tie_embeddings:
            self.output_projection.weight = self.target_embedding.weight

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Source tokens (B, S) and mask (B, S) -> encoder states (B, S, D') with the mask, and
        as `derived` the attention's keys of them (B, S, A), projected once."""
        x = self.dropout(self.source_embedding(src))
        states = self.encoder(x, src_mask)
        return Memory(states, src_mask, self.decoder.memory_derived(states))

    def decode(self, memory: Memory, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: the decoder outputs (B, T, D) that the output projection reads,
        after dropout."""
        x = self.dropout(self.target_embedding(tgt_in))  # (B, T, D)
        outputs, _ = self.decoder(x, memory, self.init_state(memory))  # (B, T, D)
        return self.dropout(outputs)

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        """The one attention, teacher-forced (1, B, 1, T, S); None without attention."""
        if self.attention_label is None:
            return None
        memory = self.encode(src, src_mask)
        x = self.dropout(self.target_embedding(tgt_in))
        _, weights = self.decoder(x, memory, self.init_state(memory), need_weights=True)
        return weights[None, :, None]  # (1, B, 1, T, S)

    def init_state(self, memory: Memory) -> RecurrentState:
        """Every decoder layer starts from the bridged summary, an LSTM's cells too."""
        summary = self.bridge(final_states(memory, self.bidirectional))  # (B, D)
        hidden = summary[None].repeat(self.decoder_layers, 1, 1)  # (L, B, D)
        cell = hidden if self.is_lstm else None
        return self.decoder.start(memory, hidden, cell, summary)

    def decode_step(
        self,
        memory: Memory,
        state: RecurrentState,
        prev_tokens: Tensor,
        *,
        need_attention: bool = False,
    ) -> Step:
        """Advance every row by `prev_tokens` (B,); attention (B, S) when asked and attending."""
        x = self.dropout(self.target_embedding(prev_tokens))  # (B, D)
        output, state, weights = self.decoder.step(x, memory, state)
        logits = self.output_projection(self.dropout(output))  # (B, V)
        return Step(log_softmax(logits), state, weights if need_attention else None)
