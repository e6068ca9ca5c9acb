"""The real data sets the quality runs use, all available offline: scikit-learn's handwritten digits
(1797 8x8 images, shipped inside the scikit-learn package) and English text from the Python
documentation (`pydoc_data.topics`, about 465k characters, shipped with CPython)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def batches(self, size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        order = torch.randperm(len(self.x), generator=generator) if shuffle else torch.arange(len(self.x))
        return [(self.x[i], self.y[i]) for i in order.split(size)]


def digits(test_fraction: float = 0.2, seed: int = 0, images: bool = False) -> tuple[Split, Split]:
    """(train, test) of sklearn's digits, pixels scaled to [0, 1]; x is [N, 64], or [N, 1, 8, 8]
    with images=True. The split is stratified-free but seeded, so it is the same on every machine."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits data set needs scikit-learn: pip install 'sparseinfer[quality]'") from error
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    if images:
        x = x.view(-1, 1, 8, 8)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return Split(x[train], y[train]), Split(x[test], y[test])


@dataclass
class CharText:
    """A character-level corpus: `alphabet[i]` is token i; train/val are 1-D token tensors."""
    alphabet: str
    train: torch.Tensor
    val: torch.Tensor
    digest: str  # of the source text: pydoc_data differs between Python versions

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def windows(self, split: str, count: int, length: int, seed: int) -> torch.Tensor:
        """[count, length + 1] random windows (inputs are [:, :-1], next-char targets [:, 1:])."""
        tokens = self.train if split == "train" else self.val
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(tokens) - length - 1, (count,), generator=g)
        return torch.stack([tokens[s:s + length + 1] for s in starts.tolist()])

    def val_windows(self, length: int, limit: int | None = None) -> torch.Tensor:
        """Consecutive non-overlapping validation windows (a fixed evaluation set)."""
        n = (len(self.val) - 1) // length
        if limit is not None:
            n = min(n, limit)
        return torch.stack([self.val[i * length:i * length + length + 1] for i in range(n)])


def python_docs_text(max_chars: int | None = None, val_fraction: float = 0.1) -> CharText:
    """The Python documentation topics as a character corpus (printable ASCII plus newline; other
    characters become '?'). The last val_fraction of the text is held out. The text is the running
    Python's own, so figures differ slightly between Python versions (`digest` tells them apart)."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[key] for key in sorted(topics))
    if max_chars is not None:
        text = text[:max_chars]
    alphabet = "\n" + "".join(chr(c) for c in range(32, 127))
    index = {c: i for i, c in enumerate(alphabet)}
    unknown = index["?"]
    tokens = torch.tensor([index.get(c, unknown) for c in text], dtype=torch.long)
    cut = int(len(tokens) * (1 - val_fraction))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return CharText(alphabet, tokens[:cut], tokens[cut:], digest)
