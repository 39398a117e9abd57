"""Flat weights <-> state_dicts: a forecast written as a state_dict loads into its network."""

import numpy as np
import pytest
import torch

from gfm.data.schema import ParamMeta
from gfm.data.state_dicts import read_run_folder, to_state_dict, write_state_dict


def test_a_state_dict_written_from_flat_weights_reads_back_the_same(tmp_path):
    # given a network's layout and flat weights in state_dict order
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    params = ParamMeta.from_named_shapes([(k, tuple(v.shape)) for k, v in net.state_dict().items()])
    w = np.arange(len(params), dtype=np.float32) / 10
    # when written as checkpoints of a run folder
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        write_state_dict(run / f"step_{step}.pt", w + step, params)
    # then it loads into the network and reads back as the same flat weights and layout
    net.load_state_dict(torch.load(run / "step_5.pt", weights_only=True))
    assert torch.equal(net[0].bias, torch.tensor([0.6, 0.7]) + 5)
    steps, W, back = read_run_folder(run)
    assert steps.tolist() == [0, 5] and np.array_equal(W[0], w)
    assert back.layer.tolist() == params.layer.tolist() and back.shape == params.shape


def test_weights_of_the_wrong_length_are_named():
    params = ParamMeta.from_named_shapes([("w", (2, 2))])
    with pytest.raises(ValueError, match="D=4 values, got 3"):
        to_state_dict(np.zeros(3), params)
