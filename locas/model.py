"""CausalLMWithMemory: a frozen HF causal LM with a Locas memory branch beside every gated MLP.

The backbone is never edited: a forward hook on each MLP adds the memory branch while a memory is active
(`use_memory`), and `to_dense` builds a new plain model with the memory fused into wider MLPs.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from locas.checks import check_model_config
from locas.errors import LocasError
from locas.losses import linear_nll, token_nll
from locas.memory import GATE, KEY, MEMORY_INITS, VALUE, check_input_ids, check_memory, clip_rows, prepare_memory
from locas.memory import prepared_branch

# model types whose causal-LM head is exactly `logits = lm_head(final hidden states)` (no scaling or capping)
_PLAIN_HEAD_TYPES = ("qwen3", "qwen2", "llama", "mistral", "qwen3_moe", "qwen2_moe")


def _gated_mlps(model) -> list[nn.Module]:
    """The MLP of every decoder layer, checked to be `down(SiLU(gate(a)) * up(a))` without biases."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise LocasError(f"{type(model).__name__} has no decoder layers at .model.layers: not a supported causal LM")
    check_model_config(model.config, model=getattr(model.config, "name_or_path", "") or type(model).__name__)
    mlps = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        projs = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(p, nn.Linear) for p in projs):
            raise LocasError(f"layer {i} of {type(model).__name__} has no gated MLP (gate_proj, up_proj, down_proj)")
        if any(p.bias is not None for p in projs):
            raise LocasError(f"layer {i} of {type(model).__name__} has MLP biases, which Locas does not support")
        mlps.append(mlp)
    return mlps


class CausalLMWithMemory(nn.Module):
    """A frozen causal LM (Qwen3, Qwen2, Llama, ...) whose MLPs take a memory passed at call time."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.mlps = _gated_mlps(model)
        # mean column norm of each frozen down_proj: τ_l = this / base rank (SPEC §1)
        col_norms = [torch.linalg.vector_norm(m.down_proj.weight.float(), dim=0).mean() for m in self.mlps]
        self.register_buffer("down_col_norm", torch.stack(col_norms), persistent=False)  # (L,)
        self._active: tuple[torch.Tensor, torch.Tensor] | None = None  # (memory, τ per layer) while in use
        self._prepared: tuple | None = None  # this forward's clipped rows per layer (`prepare_memory`)
        for layer_index, mlp in enumerate(self.mlps):
            mlp.register_forward_hook(self._hook(layer_index))
        # the memory is clipped once per forward of the decoder stack (at its first MLP) and dropped after it,
        # so an update between forwards is always seen
        self.model.base_model.register_forward_pre_hook(self._drop_prepared)
        self.model.base_model.register_forward_hook(self._drop_prepared)

    @classmethod
    def from_pretrained(cls, path_or_id, *, dtype=None, device=None, trust_remote_code: bool = False, **kwargs):
        """Load a checkpoint exactly as transformers does (local folder or hub id), frozen, memory off."""
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                path_or_id, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
            )
        except (OSError, ValueError) as e:
            raise LocasError(f"could not load model {str(path_or_id)!r}: {str(e).splitlines()[0]}") from None
        wrapped = cls(model)
        return wrapped.to(device) if device is not None else wrapped

    # ---- shape -------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.mlps)

    @property
    def hidden_size(self) -> int:
        return self.mlps[0].gate_proj.in_features

    @property
    def intermediate_size(self) -> int:
        return self.mlps[0].gate_proj.out_features

    @property
    def device(self) -> torch.device:
        return self.down_col_norm.device

    def shape_signature(self) -> dict:
        """What a memory must match to be used with this model (recorded when a memory is saved)."""
        return {"model_type": self.config.model_type, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}

    def check_memory(self, memory, batch: int | None = None) -> None:
        check_memory(memory, self.num_layers, self.hidden_size, batch)

    def memory_scales(self, base_rank: int) -> torch.Tensor:
        """τ_l = (1/r) · mean_j ||W_D[:, j]||, with r the base rank (the first block's, after expansion)."""
        return self.down_col_norm / base_rank  # (L,)

    @staticmethod
    def parameter_count(memory: torch.Tensor) -> int:
        """Trainable parameters of one sample's memory: 3·L·d·r."""
        return memory[:, 0].numel()

    # ---- running with a memory -----------------------------------------------------------------------
    def _drop_prepared(self, *args) -> None:
        self._prepared = None

    def _hook(self, layer_index: int):
        def add_memory(module, args, output):
            if self._active is None:
                return None
            if self._prepared is None:
                self._prepared = tuple(t.unbind(0) for t in prepare_memory(*self._active))
            key_gate, values = self._prepared
            return output + prepared_branch(args[0], key_gate[layer_index], values[layer_index])

        return add_memory

    @contextlib.contextmanager
    def use_memory(self, memory: torch.Tensor | None, base_rank: int | None = None, batch: int | None = None):
        """Every forward (and `generate`) of `self.model` inside this block runs with `memory`."""
        if memory is None:
            yield
            return
        self.check_memory(memory, batch)
        if memory.device != self.device:
            raise LocasError(f"memory is on {memory.device} but the model on {self.device}: "
                             f"move it with memory.to('{self.device}')")
        rank = base_rank or memory.shape[2]
        if not 1 <= rank <= memory.shape[2]:
            raise LocasError(f"base_rank {rank} must be between 1 and the memory's width {memory.shape[2]}")
        previous, self._active = self._active, (memory, self.memory_scales(rank).to(memory.device))
        self._prepared = None
        try:
            yield
        finally:
            self._active, self._prepared = previous, None

    def forward(self, input_ids, attention_mask=None, memory=None, base_rank=None, **kwargs):
        """The base model's forward with `memory` (or none) added to every MLP."""
        check_input_ids(input_ids, attention_mask)
        with self.use_memory(memory, base_rank, batch=input_ids.shape[0]):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def compute_nll(self, input_ids, memory=None, attention_mask=None, base_rank=None) -> torch.Tensor:
        """Per-token next-token NLL (B, T−1) under the memory; padded targets are 0. Differentiable (once, and
        only into the memory and the inputs: the output head is frozen).

        For a plain head (`plain_head_weight`) the NLL comes from the final hidden states by `linear_nll`,
        without materializing (B, T, V) logits; otherwise from the logits."""
        weight = self.plain_head_weight()
        if weight is None:
            logits = self(input_ids, attention_mask=attention_mask, memory=memory, base_rank=base_rank).logits
            return token_nll(logits, input_ids, attention_mask)
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, memory=memory, base_rank=base_rank)
        nll = linear_nll(hidden[:, :-1], weight, input_ids[:, 1:])
        return nll if attention_mask is None else nll * attention_mask[:, 1:].to(nll.dtype)

    def hidden_states(self, input_ids, attention_mask=None, memory=None, base_rank=None) -> torch.Tensor:
        """The decoder stack's final (normed) hidden states (B, T, d) under the memory: the head's input."""
        check_input_ids(input_ids, attention_mask)
        with self.use_memory(memory, base_rank, batch=input_ids.shape[0]):
            return self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def compiled(self) -> bool:
        """Whether this model or its causal LM was compiled with `.compile()` (ModelSpec.compile)."""
        return any(getattr(m, "_compiled_call_impl", None) is not None for m in (self, self.model))

    def plain_head_weight(self) -> torch.Tensor | None:
        """The frozen output head's weight W when logits are exactly `hidden @ W.T` (a known model type, no
        bias, scaling or soft-capping) and the causal LM is not compiled as a whole (its compiled forward is
        then the fast path); else None."""
        head, config = self.model.get_output_embeddings(), self.config
        plain = (config.model_type in _PLAIN_HEAD_TYPES and isinstance(head, nn.Linear) and head.bias is None
                 and not head.weight.requires_grad and not getattr(config, "final_logit_softcapping", None)
                 and getattr(config, "logit_scale", None) in (None, 1, 1.0)
                 and getattr(config, "logits_scaling", None) in (None, 1, 1.0)
                 and not self.compiled)
        return head.weight if plain else None

    # ---- memorize ------------------------------------------------------------------------------------
    @torch.no_grad()
    def importance(self, input_ids, attention_mask=None) -> torch.Tensor:
        """α (L, B, m): mean over non-padding tokens of |SiLU(W_G a) ⊙ (W_U a)|, from one forward, memory off."""
        check_input_ids(input_ids, attention_mask)
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).to(torch.float32)
        mask = mask.unsqueeze(-1)  # (B, T, 1)
        scores: list[torch.Tensor] = []

        def record(module, args):
            scores.append((args[0].float().abs() * mask).sum(1) / mask.sum(1))  # (B, m)

        handles = [mlp.down_proj.register_forward_pre_hook(record) for mlp in self.mlps]
        previous, self._active = self._active, None
        try:
            self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            self._active = previous
            for h in handles:
                h.remove()
        return torch.stack(scores)

    @torch.no_grad()
    def memorize(self, input_ids, keep_top: int = 64, memory_init: str = "highest", attention_mask=None,
                 seed: int = 0) -> torch.Tensor:
        """Clone k backbone units per layer and sample into a fresh memory (L, B, k, d, 3), V = 0, fp32."""
        if memory_init not in MEMORY_INITS:
            raise LocasError(f"unknown memory_init {memory_init!r}: choose one of {', '.join(MEMORY_INITS)}")
        m = self.intermediate_size
        if not isinstance(keep_top, int) or not 1 <= keep_top <= m:
            raise LocasError(f"keep_top={keep_top!r} must be an integer from 1 to the MLP's {m} units")
        check_input_ids(input_ids, attention_mask)
        batch, (L, d) = input_ids.shape[0], (self.num_layers, self.hidden_size)
        generator = torch.Generator().manual_seed(seed)
        memory = torch.zeros(L, batch, keep_top, d, 3, device=self.device)
        if memory_init == "random":
            memory[..., KEY] = torch.randn(L, batch, keep_top, d, generator=generator).to(self.device)
            memory[..., GATE] = torch.randn(L, batch, keep_top, d, generator=generator).to(self.device)
        else:
            if memory_init == "random_index":
                chosen = torch.stack([torch.stack([torch.randperm(m, generator=generator)[:keep_top]
                                                   for _ in range(batch)]) for _ in range(L)])
            else:
                alpha = self.importance(input_ids, attention_mask)  # (L, B, m)
                chosen = alpha.topk(keep_top, dim=-1, largest=memory_init == "highest").indices
            chosen = chosen.to(self.device)  # (L, B, k)
            for layer, mlp in enumerate(self.mlps):
                memory[layer, ..., KEY] = mlp.up_proj.weight.float()[chosen[layer]]
                memory[layer, ..., GATE] = mlp.gate_proj.weight.float()[chosen[layer]]
        memory[..., [KEY, GATE]] = F.normalize(memory[..., [KEY, GATE]], dim=-2)
        return memory

    def expand_memory(self, memory, input_ids, keep_top: int, memory_init: str = "highest", attention_mask=None,
                      seed: int = 0) -> torch.Tensor:
        """Concatenate a new block memorized on `input_ids` along r. Its V is 0, so outputs are unchanged
        as long as τ keeps the first block's rank: pass `base_rank=` that rank from now on."""
        self.check_memory(memory, batch=input_ids.shape[0])
        block = self.memorize(input_ids, keep_top, memory_init, attention_mask, seed)
        return torch.cat([memory.detach().expand(-1, block.shape[1], -1, -1, -1), block], dim=2)

    # ---- dense export --------------------------------------------------------------------------------
    @torch.no_grad()
    def to_dense(self, memory: torch.Tensor, batch_index: int = 0, base_rank: int | None = None):
        """A new plain model of the base class with the memory of sample `batch_index` fused into its MLPs:
        gate' = [W_G; c(G)], up' = [W_U; c(K)], down' = [W_D, τ c(V)ᵀ]. The source model is not modified."""
        self.check_memory(memory)
        if not 0 <= batch_index < memory.shape[1]:
            raise LocasError(f"batch_index {batch_index} out of range for a memory of batch {memory.shape[1]}")
        sample = memory[:, batch_index].float()  # (L, r, d, 3)
        scales = self.memory_scales(base_rank or sample.shape[1])
        config = copy.deepcopy(self.config)
        config.intermediate_size = self.intermediate_size + sample.shape[1]
        dtype = self.model.dtype
        with torch.device(self.device):
            dense = type(self.model)._from_config(config, dtype=dtype)
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        for layer, mlp in enumerate(self.mlps):
            prefix = _module_prefix(self.model, mlp)
            rows = clip_rows(sample[layer].movedim(-1, 0))  # (3, r, d): clipped keys, gates, values
            fused = {
                "gate_proj": torch.cat([mlp.gate_proj.weight, rows[GATE].to(dtype)], 0),
                "up_proj": torch.cat([mlp.up_proj.weight, rows[KEY].to(dtype)], 0),
                "down_proj": torch.cat([mlp.down_proj.weight, (scales[layer] * rows[VALUE]).T.to(dtype)], 1),
            }
            for name, weight in fused.items():
                if not torch.isfinite(weight).all():
                    raise LocasError(f"to_dense: layer {layer} {name} has non-finite weights; the memory is corrupt")
                state[f"{prefix}.{name}.weight"] = weight
        dense.load_state_dict(state, strict=True)
        dense.tie_weights()
        return dense.eval()


def _module_prefix(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise LocasError("internal: MLP not found in its model")


Qwen3ForCausalLMWithMemory = CausalLMWithMemory
