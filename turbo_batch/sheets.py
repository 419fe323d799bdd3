"""Contact sheets for rendered A/B grids: one PNG and one tiled MP4 per prompt, seeds down, variants across.

A grid's coordinates travel as passthrough columns (see `grid.py`), so the output index alone says where each
cell goes. The PNG shows a few frames of every cell (first, middle, last) so a reviewer can compare variants at
a glance; the MP4 plays all cells in lockstep. Tiny videos are upscaled with nearest neighbour (cells at least
`MIN_CELL_HEIGHT` px tall, pixels stay honest); large ones are scaled down to keep the files reviewable.
Failed cells show their error in red, so a sheet never hides a hole in the grid.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .grid import COORDINATE_COLUMNS
from .store import Store
from .video import decode_mp4, encode_mp4

MIN_CELL_HEIGHT = 128  # tiny videos are upscaled (integer factor, nearest) to at least this height
PNG_MAX_FRAME_HEIGHT = 240  # larger frames are scaled down in the PNG
MP4_MAX_FRAME_HEIGHT = 480
# Big grids shrink their cells down to a minimum height, then leave out trailing seeds (the title says so):
PNG_MAX_SIDE, PNG_MAX_BYTES, PNG_MIN_FRAME_HEIGHT = 16000, 256 * 2**20, 64
MP4_MAX_SIDE, MP4_MAX_BYTES, MP4_MIN_FRAME_HEIGHT = 4096, 512 * 2**20, 96  # H.264 level limits; built in memory

BACKGROUND = (248, 248, 246)
CELL_BACKGROUND = (226, 226, 222)
FAILED_BACKGROUND = (255, 236, 236)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)
ERROR_TEXT = (200, 0, 0)


# ----------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet: a title line, a header row of variant labels, a label column of seeds,
    and rows x cols cells, each `cell_w` x `cell_h` of frames with a caption line below."""

    rows: int
    cols: int
    cell_w: int
    cell_h: int
    label_w: int = 80
    title_h: int = 26
    header_h: int = 20
    caption_h: int = 18
    pad: int = 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), rounded up to even numbers (yuv420p needs them; harmless for PNG)."""
        w = self.pad + self.label_w + self.cols * (self.cell_w + self.pad)
        h = self.pad + self.title_h + self.header_h + self.rows * (self.cell_h + self.caption_h + self.pad)
        return w + w % 2, h + h % 2

    def cell_origin(self, r: int, c: int) -> tuple[int, int]:
        """Top-left corner of cell (r, c)'s frame area."""
        x = self.pad + self.label_w + c * (self.cell_w + self.pad)
        y = self.pad + self.title_h + self.header_h + r * (self.cell_h + self.caption_h + self.pad)
        return x, y


FRAME_GAP = 2  # between the frames inside one PNG cell


def frame_scale(height: int, min_height: int = MIN_CELL_HEIGHT, max_height: int = PNG_MAX_FRAME_HEIGHT) -> float:
    """Scale for frames `height` px tall: an integer upscale to reach `min_height`, or a downscale to `max_height`."""
    if height < min_height:
        return float(math.ceil(min_height / height))
    if height > max_height:
        return max_height / height
    return 1.0


def scaled_size(w: int, h: int, scale: float) -> tuple[int, int]:
    return max(2, round(w * scale)), max(2, round(h * scale))


def sheet_layout(rows: int, cols: int, frame_w: int, frame_h: int, frames_per_cell: int, seed_label_chars: int = 6) -> SheetLayout:
    """The layout for cells of `frames_per_cell` frames of (already scaled) size frame_w x frame_h."""
    cell_w = frames_per_cell * frame_w + (frames_per_cell - 1) * FRAME_GAP
    return SheetLayout(rows=rows, cols=cols, cell_w=cell_w, cell_h=frame_h, label_w=max(72, 12 + 7 * (5 + seed_label_chars)))


# ----------------------------------------------------------------------------------------------- drawing helpers
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, max_w: int) -> str:
    """`text` cut (with '...') to fit `max_w` pixels."""
    if draw.textlength(text, font=font) <= max_w:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "...", font=font) <= max_w:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, max_w: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `max_w` pixels (long words are cut); the last line gets '...' if text remains."""
    words, lines, line = text.split(), [], ""
    while words and len(lines) < max_lines:
        candidate = f"{line} {words[0]}".strip()
        if draw.textlength(candidate, font=font) <= max_w:
            line = candidate
            words.pop(0)
        elif line:
            lines.append(line)
            line = ""
        else:  # one word wider than the box
            lines.append(_fit(draw, words.pop(0), font, max_w))
    if line and len(lines) < max_lines:
        lines.append(line)
    if words and lines:
        lines[-1] = _fit(draw, lines[-1] + " " + " ".join(words), font, max_w)
    return lines


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [F, h, w, 3] -> [F, H, W, 3]: nearest for upscales (exact repeats for integer factors), Lanczos down."""
    w, h = size
    f, fh, fw, _ = frames.shape
    if (fw, fh) == (w, h):
        return frames
    if w % fw == 0 and h % fh == 0 and w >= fw and h >= fh:
        return frames.repeat(h // fh, axis=1).repeat(w // fw, axis=2)
    method = Image.Resampling.NEAREST if h > fh else Image.Resampling.LANCZOS
    return np.stack([np.asarray(Image.fromarray(x).resize((w, h), method)) for x in frames])


def pick_frames(n: int, k: int) -> list[int]:
    """k frame indices spread from first to last (first, middle, last for k=3)."""
    if n <= 0:
        return []
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [0]


# ----------------------------------------------------------------------------------------------- the grid
@dataclass
class Cell:
    row: dict  # the index row
    sheet_frames: np.ndarray | None = None  # the few frames of the PNG, scaled
    video_frames: np.ndarray | None = None  # every frame, scaled for the tiled MP4
    problem: str | None = None  # why there is no video to show

    @property
    def caption(self) -> str:
        seed = self.row["seed"] if self.row.get("seed") is not None else self.row["grid_seed"]
        return f"seed {seed} | {self.row['grid_variant_label']}"


@dataclass
class PromptSheet:
    prompt_index: int
    png: str  # relative paths inside OUT
    mp4: str | None
    layout: SheetLayout
    video_layout: SheetLayout | None
    video_frames: int


def is_grid(index_rows: list[dict]) -> bool:
    return bool(index_rows) and all(c in index_rows[0] for c in COORDINATE_COLUMNS)


def _load_cell(store: Store, row: dict, frames_per_cell: int, sheet_scale: float, video_scale: float | None) -> Cell:
    """Decode a cell's MP4 once and keep only what the sheets need, already scaled (big grids stay in memory)."""
    cell = Cell(row=row)
    if row.get("status") != "ok":
        cell.problem = f"{row.get('status') or 'pending'}: {row.get('error') or 'not rendered yet'}"
        return cell
    try:
        frames = decode_mp4(io.BytesIO(store.read_bytes(row["mp4_path"])))
    except Exception as e:  # a missing or corrupt MP4 is shown in the cell, not fatal to the sheet
        cell.problem = f"cannot read MP4 {row.get('mp4_path')}: {type(e).__name__}: {e}"
        return cell
    if frames.shape[0] == 0:
        cell.problem = f"MP4 {row.get('mp4_path')} has no frames"
        return cell
    h, w = frames.shape[1:3]
    cell.sheet_frames = resize_frames(frames[pick_frames(len(frames), frames_per_cell)], scaled_size(w, h, sheet_scale))
    if video_scale is not None:
        cell.video_frames = resize_frames(frames, scaled_size(w, h, video_scale))
    return cell


def _draw_static(layout: SheetLayout, title: str, seeds: list, labels: list[str], cells: dict) -> Image.Image:
    """Everything but the frames: title, headers, captions, cell backgrounds, error texts."""
    img = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    title_font, label_font, caption_font = _font(14), _font(12), _font(11)
    width = layout.size[0]
    draw.text((layout.pad, layout.pad + 4), _fit(draw, title, title_font, width - 2 * layout.pad), font=title_font, fill=TEXT)
    for c, label in enumerate(labels):
        x, _ = layout.cell_origin(0, c)
        y = layout.pad + layout.title_h + 3
        draw.text((x, y), _fit(draw, label, label_font, layout.cell_w), font=label_font, fill=TEXT)
    for r, seed in enumerate(seeds[: layout.rows]):
        _, y = layout.cell_origin(r, 0)
        draw.text((layout.pad, y + 2), _fit(draw, f"seed {seed}", label_font, layout.label_w - 6), font=label_font, fill=TEXT)
        for c in range(len(labels)):
            x, y = layout.cell_origin(r, c)
            cell = cells.get((r, c))
            box = (x, y, x + layout.cell_w - 1, y + layout.cell_h - 1)
            if cell is None:
                draw.rectangle(box, fill=CELL_BACKGROUND)
                draw.text((x + 4, y + 4), "no row", font=caption_font, fill=MUTED)
                continue
            if cell.problem:
                draw.rectangle(box, fill=FAILED_BACKGROUND, outline=ERROR_TEXT)
                line_h = 13
                lines = _wrap(draw, cell.problem, caption_font, layout.cell_w - 8, max(1, (layout.cell_h - 8) // line_h))
                for i, line in enumerate(lines):
                    draw.text((x + 4, y + 4 + i * line_h), line, font=caption_font, fill=ERROR_TEXT)
            else:
                draw.rectangle(box, fill=CELL_BACKGROUND)
            draw.text((x, y + layout.cell_h + 3), _fit(draw, cell.caption, caption_font, layout.cell_w),
                      font=caption_font, fill=ERROR_TEXT if cell.problem else MUTED)
    return img


def _paste(canvas: np.ndarray, frame: np.ndarray, x: int, y: int, slot_w: int, slot_h: int) -> None:
    """Paste `frame` centred in the slot at (x, y); works on [H, W, 3] and [F, H, W, 3] canvases."""
    h, w = min(frame.shape[-3], slot_h), min(frame.shape[-2], slot_w)
    ox, oy = x + (slot_w - w) // 2, y + (slot_h - h) // 2
    canvas[..., oy:oy + h, ox:ox + w, :] = frame[..., :h, :w, :]


def _grid_positions(rows: list[dict]) -> tuple[list, list[str], dict]:
    """Seeds (rows, in first-appearance order), variant labels (columns, by variant index), rows by (r, c)."""
    seeds: list = []
    variants: dict[int, str] = {}
    for row in rows:
        if row["grid_seed"] not in seeds:
            seeds.append(row["grid_seed"])
        variants.setdefault(int(row["grid_variant"]), str(row["grid_variant_label"]))
    order = sorted(variants)
    placed = {(seeds.index(row["grid_seed"]), order.index(int(row["grid_variant"]))): row for row in rows}
    return seeds, [variants[v] for v in order], placed


def fit_layout(rows: int, cols: int, max_w: int, max_h: int, frames_per_cell: int, n_frames: int, seed_chars: int,
               scale: float, max_side: int, max_bytes: int, min_height: int) -> tuple[SheetLayout, float]:
    """The layout at `scale`, shrunk until it fits: frames scale down to `min_height`, then trailing seed rows are
    left out (the layout's `rows` says how many fit). `n_frames` frames of the canvas must fit in `max_bytes`."""
    shown = rows
    while True:
        w, h = scaled_size(max_w, max_h, scale)
        layout = sheet_layout(shown, cols, w + w % 2, h + h % 2, frames_per_cell, seed_chars)
        cw, ch = layout.size
        nbytes = cw * ch * 3 * n_frames
        if (max(cw, ch) <= max_side and nbytes <= max_bytes) or h <= 16:
            return layout, scale
        shrink = min(0.95, max_side / max(cw, ch), math.sqrt(max_bytes / nbytes))
        if h * shrink >= min_height or shown == 1 or cw > max_side:
            scale *= shrink
        elif h > min_height:
            scale = min_height / max_h
        else:
            shown = max(1, min(shown - 1, int(shown * shrink)))


def render_prompt_sheet(store: Store, pi: int, rows: list[dict], frames_per_cell: int = 3, video: bool = True) -> PromptSheet:
    """Write sheets/prompt-{pi:03d}.png (and the tiled .mp4) for the grid rows of prompt `pi`."""
    seeds, labels, placed = _grid_positions(rows)
    sizes = [(int(r["width"]), int(r["height"])) for r in rows if r.get("width") and r.get("height")] or [(64, 32)]
    max_w, max_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    n_frames = max([int(r["frames"]) for r in rows if r.get("status") == "ok" and r.get("frames")] or [1])
    seed_chars = max(len(str(s)) for s in seeds)
    prompt = next((r["prompt"] for r in rows if r.get("prompt")), "")

    layout, scale = fit_layout(len(seeds), len(labels), max_w, max_h, frames_per_cell, 1, seed_chars, frame_scale(max_h),
                               PNG_MAX_SIDE, PNG_MAX_BYTES, PNG_MIN_FRAME_HEIGHT)
    video_layout, video_scale = fit_layout(len(seeds), len(labels), max_w, max_h, 1, n_frames, seed_chars,
                                           frame_scale(max_h, MIN_CELL_HEIGHT, MP4_MAX_FRAME_HEIGHT),
                                           MP4_MAX_SIDE, MP4_MAX_BYTES, MP4_MIN_FRAME_HEIGHT)
    cells = {}
    for (r, c), row in placed.items():
        if r < layout.rows:
            cells[(r, c)] = _load_cell(store, row, frames_per_cell, scale,
                                       video_scale if video and r < video_layout.rows else None)

    slot_w, slot_h = (layout.cell_w - (frames_per_cell - 1) * FRAME_GAP) // frames_per_cell, layout.cell_h
    sheet = np.array(_draw_static(layout, _title(pi, prompt, layout.rows, len(seeds)), seeds, labels, cells))
    for (r, c), cell in cells.items():
        if cell.sheet_frames is not None:
            x, y = layout.cell_origin(r, c)
            for k, frame in enumerate(cell.sheet_frames):
                _paste(sheet, frame, x + k * (slot_w + FRAME_GAP), y, slot_w, slot_h)
    png_rel = f"sheets/prompt-{pi:03d}.png"
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG", optimize=True)
    store.write_bytes(png_rel, buf.getvalue())
    del sheet

    out = PromptSheet(prompt_index=pi, png=png_rel, mp4=None, layout=layout, video_layout=None, video_frames=0)
    if video and any(c.video_frames is not None for c in cells.values()):
        video_cells = {pos: cell for pos, cell in cells.items() if pos[0] < video_layout.rows}
        out.mp4, out.video_frames = _write_tiled_mp4(store, f"sheets/prompt-{pi:03d}.mp4", video_layout,
                                                     _title(pi, prompt, video_layout.rows, len(seeds)), seeds, labels,
                                                     video_cells, int(rows[0].get("fps") or 16))
        out.video_layout = video_layout
    return out


def _title(pi: int, prompt: str, shown: int, total: int) -> str:
    more = f"  [first {shown} of {total} seeds]" if shown < total else ""
    return f"prompt {pi:03d}{more}: {prompt}"


def _write_tiled_mp4(store: Store, rel: str, layout: SheetLayout, title: str, seeds, labels, cells, fps: int) -> tuple[str, int]:
    """All cells side by side, frame by frame; a shorter cell holds its last frame."""
    n_frames = max(c.video_frames.shape[0] for c in cells.values() if c.video_frames is not None)
    background = np.asarray(_draw_static(layout, title, seeds, labels, cells))
    video = np.broadcast_to(background, (n_frames, *background.shape)).copy()
    for (r, c), cell in cells.items():
        if cell.video_frames is None:
            continue
        x, y = layout.cell_origin(r, c)
        frames = cell.video_frames
        _paste(video[: len(frames)], frames, x, y, layout.cell_w, layout.cell_h)
        if len(frames) < n_frames:
            _paste(video[len(frames):], frames[-1], x, y, layout.cell_w, layout.cell_h)
    with tempfile.TemporaryDirectory(prefix="turbo-sheet-") as d:
        path = os.path.join(d, "sheet.mp4")
        encode_mp4(video, path, fps=fps)
        store.upload_file(path, rel)
    return rel, n_frames


def write_sheets(out_uri: str, frames_per_cell: int = 3, video: bool = True) -> list[PromptSheet]:
    """A contact-sheet PNG and a tiled MP4 per prompt of the grid rendered into `out_uri` ([] if it is no grid)."""
    store = Store(out_uri)
    rows = store.read_index().to_pylist()
    if not is_grid(rows):
        return []
    by_prompt: dict[int, list[dict]] = {}
    for row in rows:
        if all(row.get(c) is not None for c in ("grid_prompt", "grid_seed", "grid_variant")):
            by_prompt.setdefault(int(row["grid_prompt"]), []).append(row)
    return [render_prompt_sheet(store, pi, by_prompt[pi], frames_per_cell, video) for pi in sorted(by_prompt)]
