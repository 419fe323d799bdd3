"""The batch report: a static, self-contained `report.html` and a machine-readable `nightly_report.json`.

The HTML opens from disk with no server and no JavaScript: summary, failures, slowest rows, contact sheets (for
grids) and every row with a thumbnail of its first frame and a link to its MP4 (relative links, so the folder
can be copied or synced anywhere). Thumbnails go to OUT/report/thumbs/<key>.png when OUT is local; for a remote
OUT they are inlined as data URIs so the page still shows them when opened from a download.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math

from PIL import Image

from .driver import INDEX_FIELDS
from .sheets import frame_scale, resize_frames, scaled_size
from .store import Store
from .video import decode_mp4

THUMB_MIN_HEIGHT, THUMB_MAX_HEIGHT = 96, 144
SLOWEST = 10
_INDEX_NAMES = {name for name, _ in INDEX_FIELDS}


# ----------------------------------------------------------------------------------------------- data
def _read_summary(store: Store) -> dict:
    try:
        return json.loads(store.read_bytes("summary.json"))
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _timings(row: dict) -> dict:
    try:
        return json.loads(row["timings"]) if row.get("timings") else {}
    except ValueError:
        return {}


def _params(row: dict) -> dict:
    try:
        return json.loads(row["params"]) if row.get("params") else {}
    except ValueError:
        return {}


def slowest_rows(rows: list[dict], n: int = SLOWEST) -> list[dict]:
    """The n ok rows with the largest render time (from the index, so rows of earlier runs count too)."""
    timed = [r for r in rows if r.get("status") == "ok" and r.get("total_s") is not None]
    out = []
    for r in sorted(timed, key=lambda r: -r["total_s"])[:n]:
        t = _timings(r)
        out.append({"row": r["row"], "id": r["id"], "key": r["key"], "model": r.get("model"), "total_s": round(r["total_s"], 3),
                    "dit_s": _round(t.get("dit_s")), "vae_decode_s": _round(t.get("vae_decode_s")),
                    "encode_write_s": _round(t.get("encode_write_s")), "actor": r.get("actor"), "gpu": r.get("gpu"),
                    "gpu_name": r.get("gpu_name"), "mp4_path": r.get("mp4_path")})
    return out


def failures(rows: list[dict]) -> list[dict]:
    return [{"row": r["row"], "id": r["id"], "status": r.get("status") or "pending",
             "error": r.get("error") or "not rendered yet"} for r in rows if r.get("status") != "ok"]


def _round(x, nd: int = 3):
    return None if x is None else round(float(x), nd)


def nightly_report(out_uri: str) -> dict:
    """Summary, throughput, GPU-hours, slowest rows and failures of the batch in `out_uri`, as one JSON object."""
    store = Store(out_uri)
    rows = store.read_index().to_pylist()
    summary = _read_summary(store)
    fails = failures(rows)
    return {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "out": out_uri, "manifest": summary.get("manifest"),
        "rows": len(rows), "ok": sum(1 for r in rows if r.get("status") == "ok"), "failed": len(fails),
        "throughput": {"videos_per_minute": summary.get("videos_per_minute"), "rendered_this_run": summary.get("rendered_this_run"),
                       "skipped_already_done": summary.get("skipped_already_done"), "wall_s": summary.get("wall_s"),
                       "actors": summary.get("actors")},
        "gpu_hours": summary.get("gpu_hours"), "gpu_seconds": summary.get("gpu_seconds"),
        "runtime": summary.get("runtime"),
        "slowest": slowest_rows(rows), "failures": fails, "summary": summary,
    }


def write_nightly_report(out_uri: str) -> str:
    Store(out_uri).write_json("nightly_report.json", nightly_report(out_uri))
    return "nightly_report.json"


# ----------------------------------------------------------------------------------------------- thumbnails
def _thumbnail_png(store: Store, mp4_path: str) -> bytes:
    with store.fs.open_input_file(store.path(mp4_path)) as f:  # random access: reads the first frame, not the file
        first = decode_mp4(f, max_frames=1)
    h, w = first.shape[1:3]
    scale = frame_scale(h, THUMB_MIN_HEIGHT, THUMB_MAX_HEIGHT)
    buf = io.BytesIO()
    Image.fromarray(resize_frames(first, scaled_size(w, h, scale))[0]).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def thumbnails(store: Store, rows: list[dict]) -> dict[str, str]:
    """key -> img src (a relative path when OUT is local, else a data URI); rows whose MP4 is unreadable get none."""
    local = store.local_path("") is not None
    out: dict[str, str] = {}
    for r in rows:
        key = r.get("key")
        if r.get("status") != "ok" or not r.get("mp4_path") or key in out:
            continue
        rel = f"report/thumbs/{key}.png"
        try:
            if local:
                if not store.exists(rel):  # key-addressed: an existing thumbnail is of the same frames
                    store.write_bytes(rel, _thumbnail_png(store, r["mp4_path"]))
                out[key] = rel
            else:
                out[key] = "data:image/png;base64," + base64.b64encode(_thumbnail_png(store, r["mp4_path"])).decode()
        except Exception:  # a missing or corrupt MP4 shows as "no preview"; `verify` is the tool that reports it
            continue
    return out


# ----------------------------------------------------------------------------------------------- HTML
CSS = """
:root { --fg:#1d1f23; --muted:#6b7079; --line:#e3e5e8; --bg:#f6f7f9; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:20px 32px 16px; }
h1 { margin:0 0 2px; font-size:22px; } h2 { font-size:17px; margin:28px 0 10px; }
.sub { color:var(--muted); margin:0 0 14px; word-break:break-all; }
main { padding:0 32px 40px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; }
.card { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:104px; }
.card .v { font-size:20px; font-weight:600; } .card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.bad .v { color:var(--bad); } .card.ok .v { color:var(--ok); }
.scroll { overflow-x:auto; background:#fff; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:middle; }
th { background:#fafbfc; font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; white-space:nowrap; }
th.num { text-align:right; } td.id, td.nowrap { white-space:nowrap; } td.params { font-size:12px; color:#3d4148; min-width:170px; }
tr:last-child td { border-bottom:none; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.err { color:var(--bad); font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; white-space:pre-wrap; word-break:break-word; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.ok { background:#dafbe1; color:var(--ok); } .badge.failed { background:#ffebe9; color:var(--bad); }
.badge.pending { background:#fff8c5; color:var(--warn); }
img.thumb { height:72px; display:block; image-rendering:pixelated; border-radius:3px; background:#ddd; }
.nothumb { width:72px; height:48px; border-radius:3px; background:repeating-linear-gradient(45deg,#eee,#eee 6px,#e2e2e2 6px,#e2e2e2 12px); }
.sheets { display:grid; grid-template-columns:1fr; gap:14px; }
figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px; }
figure img { max-width:100%; display:block; image-rendering:pixelated; }
figcaption { color:var(--muted); font-size:12px; margin-top:6px; }
.good { color:var(--ok); } .muted { color:var(--muted); }
a { color:#0969da; text-decoration:none; } a:hover { text-decoration:underline; }
.prompt { min-width:200px; max-width:320px; font-size:13px; } footer { color:var(--muted); font-size:12px; padding:0 32px 24px; }
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt_duration(seconds) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _fmt_num(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _card(label: str, value: str, cls: str = "") -> str:
    return f'<div class="card {cls}"><div class="v">{_e(value)}</div><div class="k">{_e(label)}</div></div>'


def _key_params(p: dict) -> str:
    """The parameters a reviewer compares: size, frames, steps, sampler mode, SLA top-k, sigma_max, (CFG)."""
    if not p:
        return ""
    bits = [f"{p.get('width')}x{p.get('height')}", f"{p.get('num_frames')} f", f"{p.get('steps')} steps"]
    if p.get("sampler") == "flow":
        bits += [f"cfg {p.get('guidance')}", f"shift {p.get('shift')}"]
    else:
        bits += ["ode" if p.get("ode") else "sde", f"σmax {p.get('sigma_max'):g}" if p.get("sigma_max") is not None else ""]
    bits.append(f"topk {p.get('sla_topk')}")
    if p.get("task") == "i2v":
        bits.append(f"boundary {p.get('boundary')}")
    return " · ".join(b for b in bits if b)


def _table(headers: list[str], body_rows: list[str], numeric: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="num">{_e(h)}</th>' if h in numeric else f"<th>{_e(h)}</th>" for h in headers)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table></div>'


def render_html(out_uri: str, rows: list[dict], summary: dict, thumbs: dict[str, str], sheets: list[str]) -> str:
    n_ok = sum(1 for r in rows if r.get("status") == "ok")
    fails = failures(rows)
    rt = summary.get("runtime") or {}
    device = rt.get("gpu_name") or next((r.get("gpu_name") for r in rows if r.get("gpu_name")), None)
    rt_id = next((r.get("runtime") for r in rows if r.get("runtime")), None)
    actors = summary.get("actors")
    where = " · ".join(x for x in (
        f'runtime <span class="mono">{_e(rt_id)}</span>' if rt_id else "", f"on {_e(device)}" if device else "",
        f"{_e(actors)} actor{'s' if actors != 1 else ''}" if actors is not None else "") if x)
    cards = [
        _card("rows", str(len(rows))), _card("ok", str(n_ok), "ok" if n_ok == len(rows) else ""),
        _card("failed", str(len(fails)), "bad" if fails else "ok"),
        _card("videos / minute", _fmt_num(summary.get("videos_per_minute"))),
        _card("GPU-hours", _fmt_num(summary.get("gpu_hours"), 4)), _card("wall time", _fmt_duration(summary.get("wall_s"))),
        _card("rendered this run", _fmt_num(summary.get("rendered_this_run"))),
        _card("already done", _fmt_num(summary.get("skipped_already_done"))),
    ]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>turbo-batch report · {_e(out_uri)}</title><style>{CSS}</style></head><body>",
        "<header><h1>turbo-batch report</h1>",
        f'<p class="sub">{_e(out_uri)} · manifest {_e(summary.get("manifest") or "–")}{" · " + where if where else ""}'
        f" · generated {generated}</p>",
        f'<div class="cards">{"".join(cards)}</div></header><main>',
    ]

    parts.append(f"<h2>Failures ({len(fails)})</h2>")
    if fails:
        parts.append(_table(["row", "id", "status", "error"], [
            f'<tr><td class="num">{f["row"]}</td><td class="mono id">{_e(f["id"])}</td>'
            f'<td><span class="badge {_e(f["status"])}">{_e(f["status"])}</span></td><td class="err">{_e(f["error"])}</td></tr>'
            for f in fails], numeric=("row",)))
    else:
        parts.append('<p class="good">No failures: every row rendered.</p>')

    slow = slowest_rows(rows)
    parts.append("<h2>Slowest rows</h2>")
    if slow:
        parts.append(_table(["id", "render", "DiT", "VAE decode", "encode + write", "actor", "GPU", "model", "video"], [
            f'<tr><td class="mono id">{_e(s["id"])}</td><td class="num">{_fmt_num(s["total_s"])} s</td>'
            f'<td class="num">{_fmt_num(s["dit_s"])}</td><td class="num">{_fmt_num(s["vae_decode_s"])}</td>'
            f'<td class="num">{_fmt_num(s["encode_write_s"])}</td><td>{_e(s["actor"])}</td>'
            f'<td>{_e(s["gpu"])} {_e(s["gpu_name"] or "")}</td><td>{_e(s["model"])}</td>'
            f'<td><a href="{_e(s["mp4_path"])}">mp4</a></td></tr>' for s in slow],
            numeric=("render", "DiT", "VAE decode", "encode + write")))
    else:
        parts.append('<p class="muted">No rendered rows.</p>')

    if sheets:
        parts.append("<h2>Contact sheets</h2><div class=\"sheets\">")
        for png in sheets:
            mp4 = png[:-4] + ".mp4"
            parts.append(f'<figure><a href="{_e(png)}"><img src="{_e(png)}" alt="{_e(png)}" loading="lazy"></a>'
                         f'<figcaption>{_e(png)} · <a href="{_e(mp4)}">tiled video</a></figcaption></figure>')
        parts.append("</div>")

    passthrough = [c for c in (rows[0].keys() if rows else []) if c not in _INDEX_NAMES]
    headers = ["preview", "status", "id", "seed", "model", "parameters", "render s", "prompt", *passthrough, "video"]
    body = []
    for r in rows:
        status = r.get("status") or "pending"
        src = thumbs.get(r.get("key"))
        thumb = f'<a href="{_e(r.get("mp4_path"))}"><img class="thumb" src="{_e(src)}" alt="{_e(r["id"])}" loading="lazy"></a>' \
            if src else '<div class="nothumb"></div>'
        p = _params(r)
        video = f'<a href="{_e(r["mp4_path"])}">mp4</a>' if status == "ok" and r.get("mp4_path") else ""
        cells = [
            f"<td>{thumb}</td>", f'<td><span class="badge {_e(status)}">{_e(status)}</span></td>',
            f'<td class="mono id" title="key {_e(r.get("key"))}">{_e(r["id"])}</td>', f'<td class="num">{_e(r.get("seed"))}</td>',
            f'<td class="nowrap">{_e(r.get("model"))}</td>',
            f'<td class="params" title="{_e(json.dumps(p, sort_keys=True))}">{_e(_key_params(p))}</td>',
            f'<td class="num">{_fmt_num(r.get("total_s"))}</td>', f'<td class="prompt">{_e(r.get("prompt"))}</td>',
            *(f'<td class="nowrap">{_e(r.get(c))}</td>' for c in passthrough), f"<td>{video}</td>",
        ]
        if status != "ok":
            cells[7] = f'<td class="prompt">{_e(r.get("prompt"))}<div class="err">{_e(r.get("error") or "not rendered yet")}</div></td>'
        body.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(f"<h2>All rows ({len(rows)})</h2>")
    parts.append(_table(headers, body, numeric=("seed", "render s")))
    parts.append("</main><footer>Static report written by <code>turbo-batch report</code>; thumbnails show each "
                 "video's first frame. Frame identity is <code>frames_sha256</code>; check it with "
                 "<code>turbo-batch verify</code>.</footer></body></html>")
    return "\n".join(parts)


def _existing_sheets(store: Store) -> list[str]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(store.path("sheets"), allow_not_found=True)
    names = sorted(info.base_name for info in store.fs.get_file_info(sel) if info.base_name.endswith(".png"))
    return [f"sheets/{n}" for n in names]


def write_report(out_uri: str) -> str:
    """Write OUT/report.html (and the thumbnails it shows); returns its relative path."""
    store = Store(out_uri)
    rows = store.read_index().to_pylist()
    page = render_html(out_uri, rows, _read_summary(store), thumbnails(store, rows), _existing_sheets(store))
    store.write_bytes("report.html", page.encode("utf-8"))
    return "report.html"
