"""Level 1 of Transformer⁻¹, the complexity predictor (spec §4): before any layer runs, a classifier on
cheap token statistics gives a prior p̂(d | x) over the depth d a sample needs.

- ``token_kinds``: what each vocabulary entry is (a word's start, a ``##`` piece, ``[UNK]``, digits,
  punctuation, special, capitalised), read once from the backbone's ``tokenizer.json``.
- ``TokenStatistics``: the 26 inputs, standardised with training statistics: 10 statistics of the
  tokens (``STATISTICS``) and the 16-dim PCA of the mean word + position embedding.
- ``first_correct_depth``: the label c(x), the smallest depth whose exit predicts y (N_L if none).
- ``ComplexityPredictor``: LightGBM multiclass [S] with the spec's settings, or, for tests and where
  lightgbm is not installed, scikit-learn's multinomial logistic regression (the spec's fallback is a
  softmax regression; scikit-learn's is the same model, kept by others).

Dimension legend: B samples, T tokens, V vocabulary, N_L depths, E embedding width.
"""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

WORD, PIECE, UNK, DIGIT, PUNCT, SPECIAL, CAPITAL = range(7)  # token kinds; DIGIT..CAPITAL start a word too
STATISTICS = ("tokens", "words", "pieces_per_word", "unk_share", "digit_share", "punct_share", "capital_share",
              "type_token_ratio", "mean_log_frequency", "min_log_frequency")
PCA_DIMS = 16
FEATURES = len(STATISTICS) + PCA_DIMS  # 26


def token_kinds(tokenizer_json: str | Path) -> Tensor:
    """(V,) int8: each token id's kind, from a WordPiece vocabulary (``[CLS]``-style specials, ``##`` pieces).
    Raises ValueError for a file that holds no vocabulary."""
    path = Path(tokenizer_json)
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: no WordPiece vocabulary (model.vocab) to read token kinds from")
    unk = model.get("unk_token", "[UNK]")
    kinds = torch.full((max(vocab.values()) + 1,), WORD, dtype=torch.int8)
    for token, index in vocab.items():
        if token == unk:
            kinds[index] = UNK
        elif token.startswith("[") and token.endswith("]"):
            kinds[index] = SPECIAL
        elif token.startswith("##"):
            kinds[index] = PIECE
        elif any(c.isdigit() for c in token):
            kinds[index] = DIGIT
        elif all(unicodedata.category(c)[0] in "PS" for c in token):
            kinds[index] = PUNCT
        elif token[0].isupper():
            kinds[index] = CAPITAL
    return kinds


def token_statistics(input_ids: Tensor, mask: Tensor, kinds: Tensor, log_frequency: Tensor) -> Tensor:
    """The 10 ``STATISTICS`` of each sample, unstandardised: input_ids, mask (B, T) -> (B, 10) float32.

    Specials count in ``tokens`` only; a word is a non-special token that is not a ``##`` piece; shares
    are of words; the type/token ratio and the frequencies (log(1 + training count)) are over non-special
    tokens."""
    kind = kinds.to(input_ids.device)[input_ids].long()  # (B, T)
    real = mask.bool()
    content = real & (kind != SPECIAL)
    word = content & (kind != PIECE)
    n_content = content.sum(1).clamp_min(1).float()
    n_words = word.sum(1).float()
    per_word = lambda k: (word & (kind == k)).sum(1).float() / n_words.clamp_min(1)
    sorted_ids = torch.where(content, input_ids, -1).sort(1).values  # a distinct id starts where the value changes
    new = sorted_ids >= 0
    new[:, 1:] &= sorted_ids[:, 1:] != sorted_ids[:, :-1]
    distinct = new.sum(1).float()
    frequency = log_frequency.to(input_ids.device)[input_ids]
    mean_frequency = (frequency * content).sum(1) / n_content
    min_frequency = torch.where(content, frequency, torch.full_like(frequency, math.inf)).min(1).values
    min_frequency = torch.where(content.any(1), min_frequency, torch.zeros_like(min_frequency))
    return torch.stack([real.sum(1).float(), n_words, content.sum(1).float() / n_words.clamp_min(1),
                        per_word(UNK), per_word(DIGIT), per_word(PUNCT), per_word(CAPITAL),
                        distinct / n_content, mean_frequency, min_frequency], 1)


def first_correct_depth(exit_logits: Tensor, labels: Tensor) -> Tensor:
    """The label c(x) of spec §4: exit_logits (B, N_L, C) from depths 1..N_L, labels (B,) -> (B,) long in
    1..N_L, the smallest depth whose argmax is the label; N_L where none is."""
    correct = exit_logits.argmax(-1) == labels[:, None]  # (B, N_L)
    depth = correct.float().argmax(1) + 1  # first True (argmax returns the first maximum)
    return torch.where(correct.any(1), depth, torch.full_like(depth, exit_logits.shape[1]))


class TokenStatistics:
    """The predictor's 26 standardised inputs (spec §4): ``STATISTICS`` and the PCA of the mean word +
    position embedding, both fitted on training rows.

    kinds (V,) int8 from ``token_kinds``; log_frequency (V,) log(1 + count) over the training split;
    components (16, E) and centre (E,) the PCA's; mean, std (26,) the standardisation."""

    def __init__(self, kinds: Tensor, log_frequency: Tensor, centre: Tensor, components: Tensor,
                 mean: Tensor, std: Tensor) -> None:
        self.kinds, self.log_frequency = kinds, log_frequency
        self.centre, self.components, self.mean, self.std = centre, components, mean, std

    @classmethod
    def fit(cls, kinds: Tensor, ids: list[list[int]], embeddings: Tensor, seed: int) -> "TokenStatistics":
        """Fit on the training rows ``ids``; ``embeddings`` (N, E) are their mean word + position
        embeddings (``mean_embedding``). Uses scikit-learn's PCA (seeded)."""
        from sklearn.decomposition import PCA

        counts = torch.zeros(len(kinds), dtype=torch.float64)
        for row in ids:
            counts.index_add_(0, torch.tensor(row), torch.ones(len(row), dtype=torch.float64))
        log_frequency = torch.log1p(counts).float()
        pca = PCA(n_components=min(PCA_DIMS, *embeddings.shape), random_state=seed).fit(embeddings.double().numpy())
        components = torch.zeros(PCA_DIMS, embeddings.shape[1])
        components[: pca.n_components_] = torch.from_numpy(pca.components_).float()
        centre = torch.from_numpy(pca.mean_).float()
        unscaled = cls(kinds, log_frequency, centre, components, torch.zeros(FEATURES), torch.ones(FEATURES))
        width = max(len(r) for r in ids)
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in ids])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], dtype=torch.bool)
        raw = unscaled(input_ids, mask, embeddings)
        return cls(kinds, log_frequency, centre, components, raw.mean(0), raw.std(0).clamp_min(1e-6))

    def __call__(self, input_ids: Tensor, mask: Tensor, embeddings: Tensor) -> Tensor:
        """(B, T) ids and mask, (B, E) mean embeddings -> (B, 26) standardised features."""
        device = input_ids.device
        pca = (embeddings.float() - self.centre.to(device)) @ self.components.to(device).T
        raw = torch.cat([token_statistics(input_ids, mask, self.kinds, self.log_frequency), pca], 1)
        return (raw - self.mean.to(device)) / self.std.to(device)

    def flops(self, tokens: int, hidden: int) -> float:
        """Per sample: a few operations per token, the embedding mean (T·E adds) and the projection."""
        return 10.0 * tokens + tokens * hidden + 2.0 * PCA_DIMS * hidden + 2.0 * FEATURES

    def state_dict(self) -> dict[str, Tensor]:
        return {"kinds": self.kinds, "log_frequency": self.log_frequency, "centre": self.centre,
                "components": self.components, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "TokenStatistics":
        return cls(**{name: state[name] for name in ("kinds", "log_frequency", "centre", "components", "mean", "std")})


def mean_embedding(word: Tensor, position: Tensor, input_ids: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of word + position embeddings (before LayerNorm): (B, T) -> (B, E)."""
    h = word[input_ids] + position[: input_ids.shape[1]]
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# LightGBM's settings (spec §4).
LIGHTGBM = {"objective": "multiclass", "num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 20,
            "feature_fraction": 0.9, "num_threads": 2, "verbose": -1, "deterministic": True}
TREES, EARLY_STOPPING, TREE_DEPTH = 200, 20, 5


def lightgbm_available() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


class ComplexityPredictor:
    """p̂(d | x) over depths 1..N_L from the 26 features; backend ``lightgbm`` or ``logistic``."""

    def __init__(self, backend: str, depths: int, model: Any = None) -> None:
        if backend not in ("lightgbm", "logistic"):
            raise ValueError(f"predictor must be lightgbm or logistic, got {backend!r}")
        self.backend, self.depths, self.model = backend, depths, model

    def fit(self, features: Tensor, depth: Tensor, seed: int) -> "ComplexityPredictor":
        """features (N, 26), depth (N,) in 1..N_L. LightGBM holds out a seeded 20% for early stopping."""
        x, y = features.double().numpy(), (depth - 1).numpy()
        if self.backend == "lightgbm":
            import lightgbm as lgb

            order = np.random.default_rng(seed).permutation(len(y))
            held = order[: max(1, len(y) // 5)]
            kept = order[len(held):]
            params = {**LIGHTGBM, "num_class": self.depths, "seed": seed}
            train = lgb.Dataset(x[kept], y[kept])
            valid = lgb.Dataset(x[held], y[held], reference=train)
            booster = lgb.train(params, train, TREES, valid_sets=[valid],
                                callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)])
            self.model = booster.model_to_string(num_iteration=booster.best_iteration or None)
            self._booster = lgb.Booster(model_str=self.model)  # as a reloaded run has it: early stopping's trees
        else:
            from sklearn.linear_model import LogisticRegression

            if len(set(y.tolist())) < 2:  # one class seen: the prior is that class
                self.model = {"classes": sorted(set(y.tolist())), "coef": [[0.0] * x.shape[1]], "intercept": [0.0]}
                return self
            fitted = LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)
            self.model = {"classes": fitted.classes_.tolist(), "coef": fitted.coef_.tolist(),
                          "intercept": fitted.intercept_.tolist()}
        return self

    def predict(self, features: Tensor) -> Tensor:
        """(B, 26) -> p̂ (B, N_L) float32 on the features' device; uniform before the predictor is fitted."""
        B = features.shape[0]
        if self.model is None:
            return features.new_full((B, self.depths), 1.0 / self.depths)
        if self.backend == "lightgbm":
            p = torch.from_numpy(self.booster().predict(features.detach().cpu().double().numpy())).float()
            return p.reshape(B, self.depths).to(features.device)
        classes = self.model["classes"]
        coef = torch.tensor(self.model["coef"], dtype=torch.float32, device=features.device)
        intercept = torch.tensor(self.model["intercept"], dtype=torch.float32, device=features.device)
        scores = features.float() @ coef.T + intercept
        if len(classes) == 2 and coef.shape[0] == 1:  # scikit-learn's binary case: one score for classes[1]
            scores = torch.cat([torch.zeros_like(scores), scores], 1)
        p = features.new_zeros((B, self.depths), dtype=torch.float32)
        p[:, classes] = scores.softmax(-1) if len(classes) > 1 else 1.0
        return p

    def booster(self) -> Any:
        if getattr(self, "_booster", None) is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_str=self.model)
        return self._booster

    def flops(self) -> float:
        """Per sample: trees × depth comparisons (LightGBM), or the logistic scores' products."""
        if self.model is None:
            return 0.0
        if self.backend == "lightgbm":
            return float(self.booster().num_trees() * TREE_DEPTH)
        return 2.0 * FEATURES * self.depths

    def state_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "depths": self.depths, "model": self.model}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ComplexityPredictor":
        return cls(state["backend"], int(state["depths"]), state["model"])
