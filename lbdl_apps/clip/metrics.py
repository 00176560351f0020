"""How well a CLIP model matches images and texts (book 6.6): retrieval recall@k in both
directions, zero-shot classification accuracy with prompt ensembling, and the scores of a
set of pairs that training's validation, `evaluate` and the test split report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lbdl_apps.clip.data import PairDataset, PairSet, pair_tokens, prompt_tokens, scene_class_names
from lbdl_apps.clip.loss import clip_loss

RECALL_KS = (1, 5, 10)


class Encoders(Protocol):
    """What the metrics call of a model: a `CLIP` in training, a loaded model's `Towers`
    (which may run in ONNX Runtime or int8) in `evaluate`."""

    def encode_image(self, images: Tensor) -> Tensor: ...

    def encode_text(self, tokens: Tensor) -> Tensor: ...

    def scale(self) -> Tensor: ...


@torch.no_grad()
def embed_pairs(model: Encoders, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Unit-norm image and text embeddings of every pair of `loader` (in order), on CPU."""
    images, texts = [], []
    for image_batch, token_batch in loader:
        images.append(model.encode_image(image_batch.to(device)).float().cpu())
        texts.append(model.encode_text(token_batch.to(device)).float().cpu())
    return torch.cat(images), torch.cat(texts)


def _ids(values: Sequence[str]) -> Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values])


def _hits(sim: Tensor, relevant: Callable[[slice], Tensor], chunk: int) -> Tensor:
    """(N, max k) whether each query's k-th nearest item is relevant, in query chunks."""
    k = min(max(RECALL_KS), sim.shape[1])
    rows = []
    for start in range(0, len(sim), chunk):
        part = slice(start, start + chunk)
        rows.append(relevant(part).gather(1, sim[part].topk(k, dim=1).indices))
    return torch.cat(rows)


def retrieval_recalls(
    image_emb: Tensor,
    text_emb: Tensor,
    image_keys: Sequence[str],
    captions: Sequence[str],
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@1/5/10 image->text and text->image over N pairs: a hit when a relevant item
    (same image, or the very same caption) is among the k most similar."""
    keys, texts = _ids(image_keys), _ids(captions)

    def relevant(rows: slice) -> Tensor:  # symmetric, so it serves both directions
        return (keys[rows, None] == keys[None, :]) | (texts[rows, None] == texts[None, :])

    similarity = image_emb @ text_emb.t()
    scores = {}
    for name, sim in (("i2t", similarity), ("t2i", similarity.t())):
        hits = _hits(sim, relevant, chunk)
        for k in RECALL_KS:
            scores[f"{name}_r{k}"] = hits[:, :k].any(dim=1).float().mean().item()
    scores["recall_mean"] = sum(scores.values()) / len(scores)
    return scores


@torch.no_grad()
def class_embeddings(model: Encoders, prompt_tokens: Tensor, num_classes: int) -> Tensor:
    """Prompt ensembling: the embeddings of each class's prompts (num_classes x templates
    rows, class-major) averaged and renormalized -> (num_classes, D)."""
    emb = model.encode_text(prompt_tokens).float().cpu()  # (classes x templates, D)
    per_class = emb.view(num_classes, -1, emb.shape[1])  # -> (classes, templates, D)
    return F.normalize(per_class.mean(dim=1), dim=-1)


def zero_shot_predictions(image_emb: Tensor, classes: Tensor) -> Tensor:
    """The most similar class of each image."""
    return (image_emb @ classes.t()).argmax(dim=1)


def scene_attribute_accuracy(
    predicted: Tensor, labels: Sequence[int], class_names: Sequence[str]
) -> dict[str, float]:
    """For "{color} {shape}" classes: how often the color and the shape alone are right."""
    truth = [class_names[y].split(" ") for y in labels]
    guess = [class_names[p].split(" ") for p in predicted.tolist()]
    n = max(1, len(truth))
    return {
        "zero_shot_color_acc": sum(t[0] == g[0] for t, g in zip(truth, guess, strict=True)) / n,
        "zero_shot_shape_acc": sum(t[1] == g[1] for t, g in zip(truth, guess, strict=True)) / n,
    }


def pair_metrics(
    model: Encoders,
    loader: DataLoader,
    device: torch.device,
    pairs: PairSet,
    prompts: Tensor | None,
    class_names: Sequence[str] | None,
) -> dict[str, float]:
    """Loss, retrieval recalls and (with labels) zero-shot accuracy of a set of pairs."""
    image_emb, text_emb = embed_pairs(model, loader, device)
    scale = float(model.scale())
    size = loader.batch_size or len(image_emb)
    total = 0.0
    for start in range(0, len(image_emb), size):  # the loss of each batch, as in training
        images, texts = image_emb[start : start + size], text_emb[start : start + size]
        total += float(clip_loss(images, texts, scale)) * len(images)
    scores = {"loss": total / len(image_emb)}
    scores.update(retrieval_recalls(image_emb, text_emb, pairs.image_keys, pairs.first_captions()))
    if prompts is not None and class_names and pairs.labels is not None:
        classes = class_embeddings(model, prompts.to(device), len(class_names))
        predicted = zero_shot_predictions(image_emb, classes)
        truth = torch.tensor(pairs.labels)
        scores["zero_shot_acc"] = (predicted == truth).float().mean().item()
        if list(class_names) == scene_class_names():
            scores.update(scene_attribute_accuracy(predicted, pairs.labels, class_names))
    return scores


def evaluate_pairs(
    clip: Any,
    pairs: PairSet,
    class_names: list[str] | None,
    templates: Sequence[str],
    batch_size: int,
    workers: int = 0,
) -> dict[str, float]:
    """The metrics of a loaded model (a `clip.api.ClipModel`, through its towers) on a set
    of pairs."""
    dataset = PairDataset(pairs, pair_tokens(pairs, clip.tokenizer), clip.preprocessing)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    prompts = prompt_tokens(clip.tokenizer, class_names, templates) if class_names else None
    return pair_metrics(clip.towers, loader, clip.device, pairs, prompts, class_names)
