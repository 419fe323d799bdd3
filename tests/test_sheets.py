"""Contact sheets of a grid rendered by the real Ray driver (tiny preset, CPU): layout, frames, failed cells."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import render_on_local_ray
from PIL import Image

ray = pytest.importorskip("ray")

from turbo_batch.cli import main  # noqa: E402
from turbo_batch.grid import build_grid, grid_table, parse_vary  # noqa: E402
from turbo_batch.sheets import (MIN_CELL_HEIGHT, MP4_MAX_BYTES, MP4_MAX_SIDE, SheetLayout, fit_layout, frame_scale,  # noqa: E402
                                pick_frames, scaled_size, sheet_layout, write_sheets)
from turbo_batch.store import Store  # noqa: E402
from turbo_batch.video import decode_mp4  # noqa: E402

FAILED_ROW = 3  # p000-s1-v01 gets an invalid num_frames: the sheet must show the hole


@pytest.fixture(scope="module")
def grid_out(tmp_path_factory):
    """1 prompt x seeds 0,1 x steps=1,2 (num_frames 5), one cell made invalid, rendered once for the module."""
    folder = tmp_path_factory.mktemp("grid")
    table = grid_table(build_grid(["a red mug on a table"], [0, 1], parse_vary(["steps=1,2"]), {"num_frames": 5}))
    frames = table.column("num_frames").to_pylist()
    frames[FAILED_ROW] = 6
    table = table.set_column(table.column_names.index("num_frames"), "num_frames", pa.array(frames, pa.int64()))
    pq.write_table(table, folder / "grid.parquet")
    out = str(folder / "out")
    result = render_on_local_ray(str(folder / "grid.parquet"), out)
    assert result.summary["ok"] == 3 and result.summary["failed"] == 1
    return out


def test_frame_scaling_upscales_tiny_videos_by_an_integer_and_shrinks_big_ones():
    assert frame_scale(32) == 4.0 and scaled_size(64, 32, 4.0) == (256, 128)
    assert frame_scale(200) == 1.0 and frame_scale(480) == 0.5
    assert pick_frames(5, 3) == [0, 2, 4] and pick_frames(81, 3) == [0, 40, 80] and pick_frames(1, 3) == [0]


def test_the_layout_puts_seeds_down_and_variants_across_with_even_dimensions():
    layout = sheet_layout(rows=3, cols=4, frame_w=256, frame_h=128, frames_per_cell=3)
    assert isinstance(layout, SheetLayout) and layout.cell_w == 3 * 256 + 2 * 2 and layout.cell_h == 128
    w, h = layout.size
    assert w % 2 == 0 and h % 2 == 0 and w > 4 * layout.cell_w and h > 3 * layout.cell_h
    x0, y0 = layout.cell_origin(0, 0)
    x1, y1 = layout.cell_origin(2, 3)
    assert x1 - x0 == 3 * (layout.cell_w + layout.pad) and y1 - y0 == 2 * (layout.cell_h + layout.caption_h + layout.pad)
    assert x1 + layout.cell_w <= w and y1 + layout.cell_h + layout.caption_h <= h


def test_a_big_grid_shrinks_its_cells_then_leaves_out_trailing_seeds_to_fit_the_limits():
    # 100 seeds x 4 variants of 480p, 81 frames: far beyond one H.264 frame and the memory budget
    layout, scale = fit_layout(100, 4, 832, 480, 1, 81, 2, 1.0, MP4_MAX_SIDE, MP4_MAX_BYTES, 96)
    w, h = layout.size
    assert layout.cell_h == 96 and 1 <= layout.rows < 100 and max(w, h) <= MP4_MAX_SIDE and w * h * 3 * 81 <= MP4_MAX_BYTES
    small, _ = fit_layout(2, 2, 832, 480, 1, 81, 2, 1.0, MP4_MAX_SIDE, MP4_MAX_BYTES, 96)
    assert small.rows == 2 and small.cell_h == 480  # what fits is left alone


def test_a_grid_gets_one_png_per_prompt_with_rows_of_seeds_and_columns_of_variants(grid_out):
    sheets = write_sheets(grid_out)
    assert [s.png for s in sheets] == ["sheets/prompt-000.png"]
    sheet = sheets[0]
    png = Image.open(Store(grid_out).local_path(sheet.png))
    assert (sheet.layout.rows, sheet.layout.cols) == (2, 2)
    # tiny 64x32 frames -> x4 nearest -> three 256x128 frames per cell
    assert sheet.layout.cell_h == 128 >= MIN_CELL_HEIGHT and sheet.layout.cell_w == 3 * 256 + 4
    assert png.size == sheet_layout(2, 2, 256, 128, 3, seed_label_chars=1).size == sheet.layout.size
    pixels = np.asarray(png.convert("RGB"))
    # the failed cell (seed 1, variant 1) shows red error text on a pale red box, the others show frames
    x, y = sheet.layout.cell_origin(1, 1)
    failed = pixels[y:y + sheet.layout.cell_h, x:x + sheet.layout.cell_w].reshape(-1, 3).astype(int)
    assert ((failed[:, 0] > 150) & (failed[:, 1] < 80) & (failed[:, 2] < 80)).any()
    x, y = sheet.layout.cell_origin(0, 0)
    ok_cell = pixels[y:y + 128, x:x + 256]
    assert len(np.unique(ok_cell.reshape(-1, 3), axis=0)) > 50  # a picture, not a flat box


def test_the_tiled_mp4_holds_every_frame_of_the_grid_at_the_layout_size(grid_out):
    sheet = write_sheets(grid_out)[0]
    video = decode_mp4(Store(grid_out).local_path(sheet.mp4))
    assert video.shape[0] == 5 == sheet.video_frames
    assert (video.shape[2], video.shape[1]) == sheet.video_layout.size
    assert sheet.video_layout.cell_h >= MIN_CELL_HEIGHT and (sheet.video_layout.rows, sheet.video_layout.cols) == (2, 2)
    x, y = sheet.video_layout.cell_origin(0, 0)
    assert not np.array_equal(video[0, y:y + 128, x:x + 256], video[4, y:y + 128, x:x + 256])  # it plays


def test_the_sheet_command_writes_sheets_and_the_report(grid_out, capsys):
    assert main(["sheet", grid_out]) == 0
    printed = capsys.readouterr().out
    assert "prompt-000.png  (2 seeds x 2 variants)" in printed and "report.html" in printed
    html = (Store(grid_out).local_path("report.html"))
    assert 'src="sheets/prompt-000.png"' in open(html).read()
