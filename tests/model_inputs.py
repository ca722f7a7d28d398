"""Inputs the model's tests share: token ids of the tiny vocabulary and a memory moved as training moves it."""
import torch

VOCAB = 512


def ids(batch=2, tokens=24, seed=0):
    return torch.randint(1, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def trained_like(memory, seed=1):
    """A memory moved away from its init in every component (what training produces), with some large rows."""
    g = torch.Generator().manual_seed(seed)
    out = memory.clone()
    out += 0.3 * torch.randn(out.shape, generator=g)
    out[..., 2] = 2.0 * torch.randn(out[..., 2].shape, generator=g)
    return out
