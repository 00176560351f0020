"""Q-networks: the Nature-DQN layout on 4 stacked 84x84 frames, the MLP, the dueling head."""

from __future__ import annotations

import torch

from lbdl_apps.dqn.model import build_q_network, q_network_config


def test_nature_network_has_the_papers_layers_and_size():
    net = build_q_network(q_network_config((4, 84, 84), 6, [512], dueling=False))
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    assert net(obs).shape == (5, 6)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert [(m.in_features, m.out_features) for m in linears] == [(3136, 512), (512, 6)]
    by_hand = (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512)
    assert sum(p.numel() for p in net.parameters()) == by_hand + 512 * 6 + 6


def test_dueling_head_is_value_plus_centred_advantage():
    torch.manual_seed(0)
    net = build_q_network(q_network_config((4,), 3, [16, 16], dueling=True))
    obs = torch.randn(7, 4)
    q = net(obs)
    features = net.features(obs)
    value = net.head.value(features)
    advantage = net.head.advantage(features)
    assert torch.allclose(q, value + advantage - advantage.mean(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(q.mean(dim=1, keepdim=True), value, atol=1e-6)


def test_mlp_layers_follow_hidden_sizes():
    net = build_q_network(q_network_config((6,), 3, [64, 32], dueling=False))
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 64), (64, 32), (32, 3)]


def test_nature_network_gives_the_same_values_in_either_memory_format():
    torch.manual_seed(0)
    net = build_q_network(q_network_config((4, 84, 84), 4, [512], dueling=True))
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    reference = net.head(net.features(obs.float().contiguous() / 255.0))
    assert torch.allclose(net(obs), reference, atol=1e-5)
