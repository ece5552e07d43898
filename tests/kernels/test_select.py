import pytest
import torch
from gpufocus.kernels import fold_max


def fold_all(scores, values, chunk, track_index=True):
    state = None
    for start in range(0, scores.shape[0], chunk):
        state = fold_max(state, scores[start : start + chunk], values[start : start + chunk], start, track_index)
    return state


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_matches_argmax_over_the_whole_stack(chunk, device):
    gen = torch.Generator(device).manual_seed(0)
    scores = torch.rand(7, 1, 5, 6, device=device, generator=gen)
    values = torch.rand(7, 3, 5, 6, device=device, generator=gen)
    state = fold_all(scores, values, chunk)
    winner = scores.argmax(dim=0, keepdim=True)
    torch.testing.assert_close(state.index, winner.int(), rtol=0, atol=0)
    torch.testing.assert_close(state.value, values.gather(0, winner.expand(1, 3, 5, 6)), rtol=0, atol=0)
    torch.testing.assert_close(state.score, scores.amax(dim=0, keepdim=True), rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_ties_go_to_the_lowest_frame(chunk, device):
    scores = torch.tensor([0.5, 0.9, 0.9, 0.9], device=device).view(4, 1, 1, 1)
    values = torch.arange(4.0, device=device).view(4, 1, 1, 1)
    state = fold_all(scores, values, chunk)
    assert state.index.item() == 1 and state.value.item() == 1.0


def test_per_channel_decisions(device):
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device).view(2, 2, 1, 1)
    values = torch.tensor([[10.0, 11.0], [20.0, 21.0]], device=device).view(2, 2, 1, 1)
    state = fold_all(scores, values, chunk=1)
    assert state.value.flatten().tolist() == [10.0, 21.0]
    assert state.index.flatten().tolist() == [0, 1]


def test_index_is_optional_and_state_owns_its_memory(device):
    scores, values = torch.rand(2, 1, 3, 3, device=device), torch.rand(2, 2, 3, 3, device=device)
    state = fold_max(None, scores[:1], values[:1], 0)
    assert state.index is None
    values[0] = -1  # the caller reuses its buffer
    assert (state.value >= 0).all()
