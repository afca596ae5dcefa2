"""Agent policies: something that writes the next agent turn for many conversations at once.

The rollout engine only needs ``Policy.generate``: one call per engine step over every live
episode, so a local model sees one batch per step instead of one call per episode. Only real
policies live here (a local Hugging Face model); tests define their own scripted ones.

A conversation that no longer fits in the model's context gets ``None`` instead of a turn;
the rollout ends that episode with terminate_reason "max_length" rather than truncating the
prompt (a truncated prompt silently loses the instruction and would poison the records).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from eto_core import stopping
from eto_core.draft_lookup import LookupDrafter, accepted
from eto_core.kv_cache import (
    CacheEntry,
    KVCache,
    RowStart,
    layer_kv,
    prefill_groups,
    row_view,
    set_length,
    squeeze_columns,
)
from eto_core.records import Message
from eto_core.sampling import RowSampler, SampledTokenProcessor
from eto_core.shared_prefix_attention import SharedPrefix, shared_prefix, supports


@runtime_checkable
class Policy(Protocol):
    """Writes one agent turn per conversation.

    ``generate`` returns, per conversation and in order, the agent's raw text (stripped), or
    ``None`` where the conversation plus the turn would not fit in the model's context.
    """

    name: str
    model_uri: str

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]: ...


class GenerationSettings(BaseModel):
    """How a local model writes agent turns during exploration and evaluation."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=64, ge=1, description="Most tokens in one agent turn.")
    temperature: float = Field(
        default=0.0,
        ge=0.0,
        description="0 decodes greedily (deterministic); above 0 samples with this temperature.",
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus-sampling mass; used only when sampling."
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        description="Episodes in flight; also the most conversations in one model.generate call.",
    )
    max_context_tokens: int = Field(
        default=2048,
        ge=16,
        description=(
            "Prompt tokens + max_new_tokens may not exceed this (nor the model's position table); "
            "a longer episode ends with terminate_reason 'max_length'."
        ),
    )
    seed: int = Field(default=0, description="Seeds sampling, so a sampled rollout can be reproduced.")
    shard_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Episodes per checkpointed shard: each finished shard is saved as its own artifact, so a "
            "run that crashes mid-rollout redoes at most one shard."
        ),
    )


# The action line is complete once a non-empty "Action: ..." is followed by a newline; the
# format has nothing after it, so decoding further only wastes time (eos is the usual stop).
ACTION_LINE_DONE = re.compile(r"Action:[ \t]*\S[^\n]*\n")


class StopOnRequest(StoppingCriteria):
    """Every row stops at once when the process was asked to stop (``eto_core.stopping``): a
    sampled batch's ``generate`` call can run for minutes, and a stop signal would otherwise
    wait for it to end."""

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), stopping.stop_requested(),  # type: ignore[return-value]
                          dtype=torch.bool, device=input_ids.device)


class ActionLineStop(StoppingCriteria):
    """Per-row stop once the agent turn's action line is complete.

    Decoding every row at every step would cost more than it saves, so a row is only decoded
    when its newest token contains a newline (the only token that can complete the line).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        vocab: dict[str, int] = tokenizer.get_vocab()
        newline_ids = [i for i in vocab.values() if "\n" in tokenizer.decode([i])]
        self.newline_ids = torch.tensor(sorted(newline_ids), dtype=torch.long)

    def line_done(self, new_tokens: list[int]) -> bool:
        """Whether a row's turn so far has completed its action line."""
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return ACTION_LINE_DONE.search(str(text)) is not None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] <= self.prompt_len or self.newline_ids.numel() == 0:
            return done  # type: ignore[return-value]
        last = input_ids[:, -1].cpu()
        for row in torch.nonzero(torch.isin(last, self.newline_ids)).flatten().tolist():
            if self.line_done(input_ids[row, self.prompt_len :].tolist()):
                done[row] = True
        return done  # type: ignore[return-value]


class LocalHFPolicy:
    """A Hugging Face causal LM in this process, generating in left-padded batches.

    Each ``generate`` call runs one ``model.generate`` per ``settings.batch_size`` conversations
    (one call when the engine keeps ``batch_size`` episodes live). Greedy decoding when
    temperature is 0, so the same conversations give the same turns whatever the batch holds.
    Sampling is seeded from ``settings.seed``, a per-policy call counter and the row's place in
    the call, so a rollout repeated from a fresh policy reproduces, a row's tokens do not depend
    on which rows share its batch, and the global torch RNG is left untouched
    (``eto_core.sampling``). With a KV cache, greedy and sampled turns alike come from our own
    decoding loop, where finished rows leave the batch; without one, from HF ``generate``.
    """

    DRAFT_ROOM_FORWARDS = 8
    """With lookup drafts, the batch cache has room for this many forwards' worth of rejected
    draft columns before they are squeezed out (a squeeze copies every row's turn columns)."""

    PREFILL_CALL_TOKENS = 24
    """A forward's fixed cost (reading every weight once) in prompt tokens of prefill: at 1 thread
    on this CPU ~70 ms vs ~3 ms per token. Rows are grouped for the prefill so that padding
    and extra forwards cost the least by this count (kv_cache.prefill_groups)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: GenerationSettings | None = None,
        model_uri: str = "",
        name: str = "",
        prefix_cache: bool = False,
        episode_cache: bool = False,
        shared_prefix_attention: bool = False,
        decode_loop: bool = True,
        lookup_draft: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.model_uri = model_uri
        self.name = name or model_uri or type(model).__name__
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos token; generation could not stop at the end of a turn."
            )
        # A pad id is needed to left-pad batches; eos doubles as pad when the tokenizer has none
        # (padded positions are masked out, so the choice does not change the output).
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else tokenizer.eos_token_id)
        # Positions past the model's table would fail or give garbage, so the context limit is
        # the tighter of the setting and the model's own limit.
        model_max = getattr(model.config, "max_position_embeddings", None)
        limit = self.settings.max_context_tokens
        self.max_context_tokens: int = min(limit, int(model_max)) if model_max else limit
        self._stop: ActionLineStop | None = None
        self._calls = 0
        self.generated_tokens = 0
        """New tokens produced so far (for throughput reports)."""
        self.prefilled_tokens = 0
        """Prompt tokens run through the model so far (those served from the prefix cache excluded)."""
        self.decode_loop = decode_loop
        """With a KV cache: decode in our own loop, finished rows leaving the batch (False: HF
        ``generate``, which the benchmarks and tests compare against)."""
        if lookup_draft < 0:
            raise ValueError(f"lookup_draft must be 0 or more, got {lookup_draft}")
        self.lookup_draft = lookup_draft
        """Our decoding loop, greedy or sampled: up to this many tokens looked up in the row's own
        context are checked per forward (eto_core.draft_lookup); 0 decodes one token per forward."""
        self.shared_prefix_batches = 0
        """Batches whose rows attended to their shared prefix once (shared-prefix attention)."""
        self.decoded_row_steps = 0
        """Rows run through a decoding step by our decoding loop (finished rows leave the batch)."""
        self.prefill_calls = 0
        """Forwards our decoding loop ran to encode prompts (one per group of rows of similar length)."""
        self.kv_cache = (KVCache(model, shared=prefix_cache, episodes=episode_cache,
                                  row_entries=self.settings.batch_size + 4)
                         if prefix_cache or episode_cache else None)
        # Reading the shared prefix once per batch needs the prefix cache, and attention this
        # module can split exactly (plain causal softmax on CPU; see shared_prefix_attention).
        self.shared_prefix_attention = (shared_prefix_attention and prefix_cache and supports(model)
                                        and model.device.type == "cpu")

    def encode(self, conversation: list[Message]) -> list[int]:
        """Token ids of the conversation followed by the agent-turn header."""
        ids = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)  # type: ignore[arg-type]

    def fits(self, conversation: list[Message]) -> bool:
        """Whether the conversation leaves room for a whole agent turn in the context."""
        return len(self.encode(conversation)) + self.settings.max_new_tokens <= self.max_context_tokens

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        encoded = [self.encode(conv) for conv in conversations]
        out: list[str | None] = [None] * len(conversations)
        room = self.max_context_tokens - self.settings.max_new_tokens
        todo = [i for i, ids in enumerate(encoded) if len(ids) <= room]
        size = self.settings.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            for i, text in zip(chunk, self._generate_batch([encoded[i] for i in chunk]), strict=True):
                out[i] = text
        return out

    def _generate_batch(self, batch: list[list[int]]) -> list[str]:
        # Each row may start from cached keys/values: its own episode's cache from the last step,
        # or a prefix the batch shares. Row i's cached part (c_i tokens) is right-aligned in the
        # first C columns and its remaining suffix in the last S, so new tokens line up; HF
        # derives positions from the attention mask, so every token keeps the position it has
        # in a from-scratch encoding. Without a cache (C = 0) this is plain left padding.
        # With shared-prefix attention the first P columns hold the prefix every row shares,
        # read once per batch from the shared entry (the batch cache leaves them empty); row
        # i's cached tokens P..c_i are then right-aligned in columns P..C.
        kv = self.kv_cache
        starts: list[RowStart] = kv.lookup(batch) if kv is not None else [(0, None)] * len(batch)
        shared = kv.common_prefix(batch, starts) if kv is not None and self.shared_prefix_attention else None
        p = 0
        if shared is not None:
            p = len(shared.tokens)
            self.shared_prefix_batches += 1
            starts = [(c, e) if c >= p else (p, shared) for c, e in starts]
        self._calls += 1
        sampler = (RowSampler(self.settings.seed, self._calls, len(batch), self.settings.temperature,
                              self.settings.top_p) if self.settings.temperature > 0 else None)
        if kv is not None and self.decode_loop:
            return self._decode_from_cache(batch, starts, shared, sampler)
        cached = max(c for c, _ in starts)
        suffix = max(len(ids) - c for ids, (c, _) in zip(batch, starts, strict=True))
        width = cached + suffix
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, (c, _)) in enumerate(zip(batch, starts, strict=True)):
            input_ids[row, :p] = torch.tensor(ids[:p], dtype=torch.long)
            mask[row, :p] = 1
            input_ids[row, cached - (c - p) : cached] = torch.tensor(ids[p:c], dtype=torch.long)
            mask[row, cached - (c - p) : cached] = 1
            input_ids[row, width - len(ids) + c :] = torch.tensor(ids[c:], dtype=torch.long)
            mask[row, width - len(ids) + c :] = 1
        self.prefilled_tokens += sum(len(ids) - c for ids, (c, _) in zip(batch, starts, strict=True))
        device = self.model.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        if self._stop is None:
            self._stop = ActionLineStop(self.tokenizer, width)
        self._stop.prompt_len = width
        s = self.settings
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([self._stop, StopOnRequest()]),
        }
        # Greedy in HF's terms either way: a sampled token comes from our per-row sampler, so
        # generate samples what our loop samples (eto_core.sampling).
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampler is not None:
            kwargs["logits_processor"] = LogitsProcessorList([SampledTokenProcessor(sampler)])
        if kv is not None:
            kwargs["return_dict_in_generate"] = True
            kwargs[kv.cache_kwarg] = kv.batch_cache(starts, cached, device, width + s.max_new_tokens, skip=p)
        self.model.eval()
        attention = (shared_prefix(self.model, SharedPrefix(p, shared.own, columns=p)) if shared is not None
                     else contextlib.nullcontext())
        with torch.inference_mode(), attention:
            generate: Any = self.model.generate  # typed loosely by transformers
            output = generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        stopping.check()  # a stop ended the call early: its turns are cut, not to be used
        sequences = output.sequences if kv is not None else output
        new = sequences[:, width:].cpu()
        texts: list[str] = []
        kept: list[list[int]] = []
        eos = self.tokenizer.eos_token_id
        for row in new.tolist():
            # Cut at the first eos: rows that finished early are filled with pad afterwards.
            if eos in row:
                row = row[: row.index(eos) + 1]
                self.generated_tokens += len(row)
                kept.append(row)
                row = row[:-1]
            else:
                while row and row[-1] == self.pad_token_id:
                    row.pop()
                self.generated_tokens += len(row)
                kept.append(row)
            texts.append(str(self.tokenizer.decode(row, skip_special_tokens=True)).strip())
        if kv is not None and kv.episodes:
            kv.keep_rows(batch, starts, kept, output.past_key_values, cached, suffix, shared=shared)
        return texts

    @staticmethod
    def _sample_drafted(logits: torch.Tensor, live: list[int], drafts: list[list[int]], done: set[int],
                        sampler: RowSampler, order: list[int]) -> list[list[int]]:
        """Each live row's sampled tokens from one forward over its last token and its draft.

        Position by position, every row still on its draft draws its next token from its own
        stream, as plain sampling would at that point of its turn (one draw per token); a drawn
        token equal to the draft's keeps the row going, any other ends it there. So the turns are
        plain sampling's, draw for draw, and a confident row writes several tokens per forward.
        ``logits[i, j]``: row i's next-token logits after its fed column j. A finished row still
        in the batch draws nothing (its entry is a placeholder, never read).
        """
        out: list[list[int]] = [[] for _ in live]
        active = [i for i, row in enumerate(live) if row not in done]
        j = 0
        while active:
            picked = sampler.pick(logits[active, j], [order[live[i]] for i in active]).tolist()
            going = []
            for i, token in zip(active, picked, strict=True):
                out[i].append(token)
                if j < len(drafts[i]) and token == drafts[i][j]:
                    going.append(i)
            active, j = going, j + 1
        return [tokens or [0] for tokens in out]

    def _decode_from_cache(self, batch: list[list[int]], starts: list[RowStart], shared: CacheEntry | None,
                           sampler: RowSampler | None) -> list[str]:
        """Decoding in our own loop (greedy, or sampled by ``sampler``), so that a row leaves the
        batch once its turn ends.

        ``generate`` decodes every row until the slowest one ends, and turns vary in length
        (tidy: 33 tokens on average, the longest of a step ~51), so finished rows would cost
        as much as live ones. Here a finished row's keys/values are stored at once and the batch
        is compacted once a quarter of its rows are done. The cache holds only the tokens after
        the shared prefix (positions are given explicitly): row i's cached tokens right-aligned
        in the first O columns, the rest of its prompt in the next S, then the turn.
        """
        kv = self.kv_cache
        assert kv is not None
        s = self.settings
        p = len(shared.tokens) if shared is not None else 0
        n = len(batch)
        # Longest prompt suffix first, so rows of similar length sit together for the prefill.
        order = sorted(range(n), key=lambda i: len(batch[i]) - starts[i][0], reverse=True)
        batch, starts = [batch[i] for i in order], [starts[i] for i in order]
        lengths = [len(ids) - c for ids, (c, _) in zip(batch, starts, strict=True)]  # each row's new tokens
        own = max(c - p for c, _ in starts)
        suffix = lengths[0]
        width = own + suffix
        input_ids = torch.full((n, suffix), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, (ids, (c, _), length) in enumerate(zip(batch, starts, lengths, strict=True)):
            mask[row, own - (c - p) : own] = 1
            input_ids[row, suffix - length :] = torch.tensor(ids[c:], dtype=torch.long)
            mask[row, width - length :] = 1
        positions = (p + mask.cumsum(-1) - 1).clamp(min=0)
        self.prefilled_tokens += sum(lengths)
        device = self.model.device
        # Drafted tokens add up to k columns per forward, some of them rejected: room for a few
        # forwards' worth before the rejected columns are squeezed out.
        k = self.lookup_draft
        room = width + s.max_new_tokens + self.DRAFT_ROOM_FORWARDS * k
        cache = kv.batch_cache(starts, own, device, room, skip=p)
        if self._stop is None:
            self._stop = ActionLineStop(self.tokenizer, 0)
        newlines = set(self._stop.newline_ids.tolist())
        eos = self.tokenizer.eos_token_id
        self.model.eval()
        attention = (shared_prefix(self.model, SharedPrefix(p, shared.own, columns=0)) if shared is not None
                     else contextlib.nullcontext())
        new: list[list[int]] = [[] for _ in range(n)]
        drafters = [LookupDrafter(ids) for ids in batch] if k else []
        live = list(range(n))  # batch position -> row
        done: set[int] = set()  # rows finished but still in the batch
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)

        def finish(row: int, at: int) -> None:
            """Mark ``row`` (batch position ``at``) done and keep its keys/values for its next step."""
            done.add(row)
            if not kv.episodes:
                return
            ids, (c, _) = batch[row], starts[row]
            # Rejected drafts left masked columns among the turn's: keep the fed ones only.
            fed = (torch.nonzero(mask[at, width:]).squeeze(1) + width).tolist() if k else None
            # The layers' tensors are replaced when the batch is compacted: read them now.
            kv.keep_row(ids, c, new[row], layer_kv(cache), at, own, width, shared, turn_columns=fed)

        with torch.inference_mode(), attention:
            # The prompts' new tokens, in groups of rows of similar length rather than all rows
            # padded to the longest: observations vary (tidy: 2x the real tokens when padded).
            logits = []
            for lo, hi in prefill_groups(lengths, self.PREFILL_CALL_TOKENS):
                start = suffix - lengths[lo]
                self.prefill_calls += 1
                out = self.model(input_ids=input_ids[lo:hi, start:], attention_mask=mask[lo:hi],
                                 position_ids=positions[lo:hi, own + start:], use_cache=True, logits_to_keep=1,
                                 **{kv.cache_kwarg: row_view(cache, lo, hi, own + start)})
                logits.append(out.logits[:, -1])
            set_length(cache, width)
            next_logits = torch.cat(logits)
            next_pos = positions[:, -1:] + 1
            # Each live row's tokens from the last forward: written to its turn, the last one
            # not yet fed to the model.
            self.decoded_row_steps += n
            picked = (next_logits.argmax(-1) if sampler is None else sampler.pick(next_logits, order))
            emitted: list[list[int]] = [[token] for token in picked.tolist()]
            while True:
                stopping.check()  # between decoding steps, as generate's StopOnRequest does
                for i, row in enumerate(live):
                    if row in done:
                        continue
                    for token in emitted[i]:
                        new[row].append(token)
                        if (token == eos or len(new[row]) == s.max_new_tokens
                                or (token in newlines and self._stop.line_done(new[row]))):
                            finish(row, i)
                            break
                if len(done) == len(live):
                    break
                if len(done) >= max(1, len(live) // 4):
                    keep = [i for i, row in enumerate(live) if row not in done]
                    index = torch.tensor(keep, device=device)
                    for layer in cache.layers:
                        layer.keys = layer.keys.index_select(0, index)
                        layer.values = layer.values.index_select(0, index)
                        layer.batch_size = len(keep)
                    mask, next_pos = mask[index], next_pos[index]
                    emitted = [emitted[i] for i in keep]
                    live = [live[i] for i in keep]
                    done.clear()
                # Drafts: what followed the latest earlier occurrence of each row's last tokens,
                # no longer than its turn has room for.
                drafts: list[list[int]] = []
                for i, row in enumerate(live):
                    if k and row not in done:
                        drafters[row].extend(emitted[i])
                        drafts.append(drafters[row].draft(min(k, s.max_new_tokens - len(new[row]) - 1)))
                    else:
                        drafts.append([])
                q = 1 + max(len(d) for d in drafts)
                if mask.shape[1] + q > room:
                    # A row's visible turn columns are the tokens it fed (< max_new_tokens), so
                    # squeezing leaves room for DRAFT_ROOM_FORWARDS forwards and more.
                    mask = squeeze_columns(cache, mask, width)
                    if mask.shape[1] + q > room:
                        raise RuntimeError(f"decoding cache full after squeezing: {mask.shape[1]} + {q} > {room}")
                fed = torch.full((len(live), q), self.pad_token_id, dtype=torch.long)
                for i, d in enumerate(drafts):
                    fed[i, 0] = emitted[i][-1]
                    fed[i, 1 : 1 + len(d)] = torch.tensor(d, dtype=torch.long)
                mask = torch.cat([mask, mask.new_ones((len(live), q))], dim=1)
                # A draft stops where its turn's room ends, so only padding could pass the
                # position table's end: clamped, as its outputs are never read.
                out = self.model(input_ids=fed.to(device), attention_mask=mask,
                                 position_ids=(next_pos + torch.arange(q, device=device)).clamp(
                                     max=self.max_context_tokens - 1),
                                 use_cache=True, logits_to_keep=q, **{kv.cache_kwarg: cache})
                self.decoded_row_steps += len(live)
                if sampler is None:
                    greedy = out.logits.argmax(-1).tolist()
                    # Each live row's fed tokens up to the last confirmed draft are now its turn's;
                    # a row finished but still in the batch writes nothing.
                    counts = [0 if row in done else accepted(d, greedy[i]) + 1
                              for i, (row, d) in enumerate(zip(live, drafts, strict=True))]
                    emitted = [greedy[i][: max(count, 1)] for i, count in enumerate(counts)]
                else:
                    emitted = self._sample_drafted(out.logits, live, drafts, done, sampler, order)
                    counts = [0 if row in done else len(e) for row, e in zip(live, emitted, strict=True)]
                written = torch.tensor(counts, device=device)[:, None]
                # The other columns (rejected drafts, padding, a finished row's filler) stay in
                # the cache unread: masked from now on, squeezed out when the cache fills.
                mask[:, -q:] = (torch.arange(q, device=device)[None] < written).to(mask.dtype)
                next_pos = next_pos + written
        texts: list[str] = [""] * n
        for row, turn in zip(order, new, strict=True):
            self.generated_tokens += len(turn)
            text = turn[:-1] if turn and turn[-1] == eos else turn
            texts[row] = str(self.tokenizer.decode(text, skip_special_tokens=True)).strip()
        return texts
