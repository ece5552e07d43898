import pytest
import torch

from gpufocus import AlignOptions, GpufocusError, StackFuser, fuse
from gpufocus.synth import make_stack
from gpufocus.tiling import auto_tile, plan_tiles, tile_margin


@pytest.fixture(scope="module")
def moving():
    return make_stack(200, 264, 5, breathing=0.004, shift=1.0, max_blur=6.0, seed=5)


def fused(stack, tile, **settings):
    fuser = StackFuser(device="cpu", levels=3, tile=tile, **settings)
    return fuser.run(stack.frames), fuser


@pytest.mark.parametrize(
    "settings",
    [
        {"align": None},
        {"align": AlignOptions(crop=True), "depth_map": True},
        {"method": "max-log"},
        {"consistency": 2},
    ],
)
def test_tiled_equals_untiled(moving, settings):
    whole, plain = fused(moving, 0, **settings)
    tiled, cut = fused(moving, 48, **settings)
    assert len(cut.tiles) > 4 and len(plain.tiles) == 1
    assert torch.equal(tiled, whole)
    if settings.get("depth_map"):
        assert torch.equal(cut.depth_map(), plain.depth_map())


def test_tiles_cover_the_frame_once_and_start_on_the_coarsest_grid():
    tiles = plan_tiles(1000, 1300, 300, levels=4, kernel_size=9)
    covered = torch.zeros(1000, 1300, dtype=torch.int32)
    for tile in tiles:
        top, left, height, width = tile.core
        covered[top : top + height, left : left + width] += 1
        assert tile.padded[0] % 16 == 0 and tile.padded[1] % 16 == 0
        assert tile.padded[0] <= top and tile.padded[1] <= left
        margin = tile_margin(4, 9)
        assert tile.padded[0] == max(0, top - margin)
    assert (covered == 1).all()


def test_automatic_tiles_only_when_a_frame_does_not_fit_and_tiles_save_memory():
    fits = dict(channels=3, bytes_per_sample=32, result_bytes=53)
    assert auto_tile(budget=10**9, height=1000, width=1000, margin=64, **fits) is None
    side = auto_tile(budget=10**8, height=4000, width=6000, margin=64, **fits)
    assert side is not None and 3 * (side + 128) ** 2 * 32 <= 10**8
    # margins of 512 pixels (6 levels) around tiles of a 3000x2000 frame: their results
    # together would take more than the frame's working memory they save
    assert auto_tile(budget=10**8, height=2000, width=3000, margin=tile_margin(6, 9), **fits) is None
    # one tile at a time: as large as the frame in flight and the tile's running result
    # allow together, its core at least half the margin
    side = auto_tile(budget=10**8, height=4000, width=6000, margin=64, one_at_a_time=3 * 10**8, **fits)
    assert (side + 128) ** 2 * (3 * 32 + 53) <= 3 * 10**8 < (side + 129) ** 2 * (3 * 32 + 53)
    assert auto_tile(budget=10**8, height=4000, width=6000, margin=1024, one_at_a_time=10**8, **fits) == 512
    assert auto_tile(budget=10**10, height=4000, width=6000, margin=1024, one_at_a_time=10**8, **fits) is None


def test_wang_chang_cannot_be_tiled(moving):
    with pytest.raises(GpufocusError, match="wang-chang cannot be tiled"):
        fuse(moving.frames, method="wang-chang", tile=64)


def test_a_small_memory_budget_tiles_by_itself(moving):
    whole, _ = fused(moving, 0, align=None)
    budget = 200 * 264 * 3 * 32 // 2  # half of what one frame takes (in bytes)
    fuser = StackFuser(device="cpu", levels=3, align=None, memory_budget=budget)
    tiled = fuser.run(moving.frames)  # tile after tile: one tile's result in memory
    assert len(fuser.tiles) > 1 and torch.equal(tiled, whole)
    # frames fed by hand are fused in every tile at once: there the tiles' results,
    # margins and all, would take more than the frame's working memory they save
    streamed = StackFuser(device="cpu", levels=3, align=None, memory_budget=budget)
    for frame in moving.frames:
        streamed.add(frame)
    assert len(streamed.tiles) == 1 and torch.equal(streamed.result(), whole)


@pytest.mark.parametrize("settings", [{}, {"consistency": 2}, {"depth_map": True, "align": True, "chunk": 2}])
def test_tiles_fused_one_after_the_other_give_the_whole_frames_result(moving, settings):
    whole = StackFuser(device="cpu", levels=3, **{"align": None, **settings})
    expected = whole.run(moving.frames)
    tiled = StackFuser(device="cpu", levels=3, tile=64, **{"align": None, **settings})
    calls = []
    got = tiled.run(moving.frames, progress=lambda done, total, stage: calls.append(stage))
    assert len(tiled.tiles) > 1 and torch.equal(got, expected)
    assert f"fusing, tile {len(tiled.tiles)} of {len(tiled.tiles)}" in calls  # the stack read once per tile
    if settings.get("depth_map"):
        assert torch.equal(tiled.depth_map(), whole.depth_map())
    assert all(region.rule is None for region in tiled._regions)  # each tile's running state let go


@pytest.mark.parametrize("settings", [{"align": None}, {"consistency": 1}, {"align": AlignOptions(reference=2)}])
def test_tiles_after_the_first_are_cut_from_the_frames_as_decoded(moving, monkeypatch, settings):
    """Past the first tile, motion and noise come from the first tile's pass: the tile is
    cut before the frames become floats, and a frame that moves is made floats alone."""
    import gpufocus.engine as engine

    made, to_float = [], engine.to_float
    fuser = StackFuser(device="cpu", levels=3, tile=64, **settings)

    def recording(frames, device, dtype):
        made.append((fuser._active is not None and fuser._active[0] is not fuser._regions[0], frames.shape))
        return to_float(frames, device, dtype)

    monkeypatch.setattr(engine, "to_float", recording)
    frames = (moving.frames * 255).round().to(torch.uint8)
    got = fuser.run(frames)
    monkeypatch.undo()
    assert torch.equal(got, StackFuser(device="cpu", levels=3, tile=0, **settings).run(frames))
    later = [shape for past_first, shape in made if past_first]
    assert len(later) >= len(fuser.tiles) - 1
    if settings.get("align", True) is None:
        assert all(shape[-2:] != frames.shape[-2:] for shape in later)
    else:  # the frames breathe: each moving frame whole, one at a time
        assert all(shape[-2:] != frames.shape[-2:] or shape[0] == 1 for shape in later)
        assert any(shape[-2:] == frames.shape[-2:] for shape in later)


def test_memory_sizes():
    from gpufocus.options import parse_size

    assert parse_size("4G") == 4 * 2**30 and parse_size("512M") == 512 * 2**20 and parse_size("2.5GB") == int(2.5 * 2**30)
    with pytest.raises(GpufocusError, match="memory_budget='lots': use a size such as 4G"):
        parse_size("lots")
