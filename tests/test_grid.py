"""A/B grids: prompts x seeds x crossed variants become a typed manifest with coordinates (no rendering here)."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from turbo_batch.cli import main
from turbo_batch.config import load_config
from turbo_batch.demo import demo_image
from turbo_batch.grid import GridError, build_grid, grid_table, parse_seeds, parse_set, parse_vary, read_prompts
from turbo_batch.manifest import validate


def test_seed_specs_accept_lists_inclusive_ranges_and_mixes_in_the_given_order():
    assert parse_seeds("0,7,42") == [0, 7, 42]
    assert parse_seeds("0-99") == list(range(100))
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert parse_seeds(" 42, 0-1 ") == [42, 0, 1]


@pytest.mark.parametrize("spec, message", [("3-1", "backwards"), ("a", "not a seed"), ("0-2,1", "more than once"),
                                           ("", "no seeds"), ("-1", "not a seed")])
def test_bad_seed_specs_say_what_is_wrong(spec, message):
    with pytest.raises(GridError, match=message):
        parse_seeds(spec)


def test_two_prompts_three_seeds_and_two_crossed_variants_make_24_rows_with_coordinates():
    vary = parse_vary(["steps=2,4", "ode=true,false"])
    grid = build_grid(["a red mug", "a blue bag"], parse_seeds("0-2"), vary, parse_set(["num_frames=5"], vary))
    table = grid_table(grid)
    assert grid.describe() == "2 prompts x 3 seeds x 4 variants = 24 rows"
    assert table.num_rows == 24
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == 24
    expected = [(pi, seed, vi) for pi in range(2) for seed in range(3) for vi in range(4)]
    assert [(r["grid_prompt"], r["grid_seed"], r["grid_variant"]) for r in rows] == expected
    assert rows[0]["id"] == "p000-s0-v00" and rows[-1]["id"] == "p001-s2-v03"
    # the first --vary changes slowest; labels name the varied values only
    by_variant = {r["grid_variant"]: (r["steps"], r["ode"], r["grid_variant_label"]) for r in rows}
    assert by_variant == {0: (2, True, "steps=2 ode=true"), 1: (2, False, "steps=2 ode=false"),
                          2: (4, True, "steps=4 ode=true"), 3: (4, False, "steps=4 ode=false")}
    for r in rows:
        assert r["seed"] == r["grid_seed"] and r["num_frames"] == 5
        assert r["prompt"] == ["a red mug", "a blue bag"][r["grid_prompt"]]
        assert r["id"] == f"p{r['grid_prompt']:03d}-s{r['seed']}-v{r['grid_variant']:02d}"


def test_columns_carry_the_manifest_types_and_the_grid_is_a_valid_manifest():
    vary = parse_vary(["sla_topk=0.1,1", "ode=1,0", "steps=2,4"])
    fixed = parse_set(["model=tiny-t2v", "num_frames=5", "aspect_ratio=1:1"], vary)
    table = grid_table(build_grid(["x"], [0], vary, fixed))
    types = {f.name: f.type for f in table.schema}
    assert types["seed"] == pa.int64() and types["steps"] == pa.int64() and types["num_frames"] == pa.int64()
    assert types["sla_topk"] == pa.float64() and types["ode"] == pa.bool_()
    assert types["model"] == pa.string() and types["aspect_ratio"] == pa.string()
    assert types["grid_prompt"] == types["grid_seed"] == types["grid_variant"] == pa.int64()
    assert table.column("sla_topk").to_pylist()[:4] == [0.1] * 4 and table.num_rows == 8
    assert table.column("grid_variant_label")[0].as_py() == "sla_topk=0.1 ode=true steps=2"
    assert "image" not in table.column_names
    assert all(r.ok for r in validate(table, load_config()))


def test_unknown_or_misused_keys_fail_with_a_clear_error():
    with pytest.raises(GridError, match="--vary stepz: unknown parameter; known parameters: model, num_frames"):
        parse_vary(["stepz=1,2"])
    with pytest.raises(GridError, match="use --seeds"):
        parse_vary(["seed=1,2"])
    with pytest.raises(GridError, match="takes integers"):
        parse_vary(["steps=2,2.5"])
    with pytest.raises(GridError, match="takes true or false"):
        parse_vary(["ode=maybe"])
    with pytest.raises(GridError, match="given twice"):
        parse_vary(["steps=2", "steps=4"])
    with pytest.raises(GridError, match="either fixed or varied"):
        parse_set(["steps=2"], parse_vary(["steps=2,4"]))
    with pytest.raises(GridError, match="expected key=value"):
        parse_set(["model"], {})


def test_the_cli_writes_the_grid_and_prints_a_one_line_summary(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a red mug\n\na blue bag\n")
    out = tmp_path / "grids" / "grid.parquet"
    code = main(["grid", str(tmp_path / "prompts.txt"), "--prompt", "a green lamp", "--seeds", "0-2",
                 "--vary", "steps=2,4", "--vary", "ode=true,false", "--set", "num_frames=5", "--out", str(out)])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"3 prompts x 3 seeds x 4 variants = 36 rows -> {out}"
    table = pq.read_table(out)
    assert table.num_rows == 36 and table.column("prompt")[-1].as_py() == "a green lamp"


def test_the_cli_rejects_a_bad_vary_key_and_invalid_values_without_writing(tmp_path, capsys):
    out = tmp_path / "grid.parquet"
    assert main(["grid", "--prompt", "x", "--seeds", "0", "--vary", "colour=red", "--out", str(out)]) == 2
    assert "--vary colour: unknown parameter" in capsys.readouterr().err
    assert main(["grid", "--prompt", "x", "--seeds", "0", "--vary", "steps=2,9", "--out", str(out)]) == 2
    assert "would fail validation" in capsys.readouterr().err and not out.exists()


def test_images_from_a_csv_or_the_command_line_resolve_from_the_written_manifest(tmp_path):
    (tmp_path / "inputs").mkdir()
    Image.fromarray(demo_image()).save(tmp_path / "inputs" / "mug.png")
    (tmp_path / "inputs" / "prompts.csv").write_text('prompt,image\n"a mug, turning",mug.png\n')
    prompts, images = read_prompts(str(tmp_path / "inputs" / "prompts.csv"))
    assert prompts == ["a mug, turning"]
    out = tmp_path / "grids" / "grid.parquet"
    table = grid_table(build_grid(prompts, [1, 2], {}, {"model": "tiny-i2v", "num_frames": 5}, images), str(out))
    assert table.column("image").to_pylist() == [os.path.join("..", "inputs", "mug.png")] * 2
    assert table.column("grid_variant_label").to_pylist() == ["default"] * 2
    assert all(r.ok for r in validate(table, load_config(), str(out)))
    assert main(["grid", "--prompt", "a", "--prompt", "b", "--image", str(tmp_path / "inputs" / "mug.png"),
                 "--seeds", "0", "--out", str(out)]) == 2  # one --image per --prompt


def test_prompts_can_come_from_parquet(tmp_path):
    pq.write_table(pa.table({"prompt": ["one", None, "two"], "sku": ["a", "b", "c"]}), tmp_path / "p.parquet")
    assert read_prompts(str(tmp_path / "p.parquet")) == (["one", "two"], [None, None])
    pq.write_table(pa.table({"text": ["one"]}), tmp_path / "bad.parquet")
    with pytest.raises(GridError, match="no `prompt` column"):
        read_prompts(str(tmp_path / "bad.parquet"))
