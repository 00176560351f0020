"""Information maximisation for test-time adaptation (SHOT-IM): its loss against a hand
computation, the teacher-forcing inputs built from hypotheses, and the token prior."""

from __future__ import annotations

import math

import pytest
import torch

from lbdl_apps.asr.adapt import information_loss, token_prior
from lbdl_apps.asr.data import teacher_forcing
from lbdl_apps.asr.tokenizer import TextTokenizer


def test_information_loss_matches_a_hand_computation() -> None:
    # two valid predictions over two tokens, p = (0.8, 0.2) and (0.5, 0.5); one padded
    logits = torch.tensor([[[math.log(4.0), 0.0], [0.0, 0.0]], [[9.0, -9.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [False, False]])
    prior = torch.tensor([0.25, 0.75])
    entropy, divergence = information_loss(logits, valid, prior)
    h1 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert float(entropy) == pytest.approx((h1 + math.log(2)) / 2, rel=1e-5)
    mean = (0.65, 0.35)  # the mean prediction, against the prior
    kl = mean[0] * math.log(mean[0] / 0.25) + mean[1] * math.log(mean[1] / 0.75)
    assert float(divergence) == pytest.approx(kl, rel=1e-5)


def test_information_loss_is_lowest_for_confident_predictions_spread_as_the_prior() -> None:
    prior = torch.tensor([0.5, 0.5])
    valid = torch.ones(2, 1, dtype=torch.bool)
    confident_diverse = torch.tensor([[[8.0, -8.0]], [[-8.0, 8.0]]])
    confident_same = torch.tensor([[[8.0, -8.0]], [[8.0, -8.0]]])
    unsure = torch.zeros(2, 1, 2)
    total = [sum(information_loss(x, valid, prior)) for x in
             (confident_diverse, confident_same, unsure)]  # fmt: skip
    assert total[0] < 1e-3 and total[1] > 0.6 and total[2] > 0.6


def test_teacher_forcing_shifts_the_targets_and_pads_both() -> None:
    inputs, targets = teacher_forcing([[7, 8, 9, 2], [2], [5, 2]], sot=1, pad=0)
    assert inputs.tolist() == [[1, 7, 8, 9], [1, 0, 0, 0], [1, 5, 0, 0]]
    assert targets.tolist() == [[7, 8, 9, 2], [2, -100, -100, -100], [5, 2, -100, -100]]


def test_token_prior_counts_the_targets_with_their_end() -> None:
    tokenizer = TextTokenizer.train(["one two", "two"], vocab_size=270)
    prior = token_prior(tokenizer, ["one two", "two", "two"])
    two = str(tokenizer.encode("two")[0])
    assert prior[two] == 3 and prior[str(tokenizer.eot)] == 3
    assert sum(prior.values()) == sum(len(tokenizer.target(t)) for t in ["one two", "two", "two"])
