"""`mperturb evaluate`: loaders on generated files in the standard formats, each protocol end to
end with a tiny model whose gradient saliency is known (values checked by hand), resume,
streaming, and the errors."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import eval_data as d
from meaningful_perturbation.cli import main
from meaningful_perturbation.datasets import iter_coco, iter_imagenet, iter_voc
from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.evaluation.evaluate import _rle_string, segments_mask, write_manifest
from meaningful_perturbation.evaluation.protocols import resolve_protocol


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("evaldata")
    d.write_imagenet(r / "in_xml", "xml")
    d.write_imagenet(r / "in_csv", "csv")
    d.write_voc(r / "voc")
    d.write_coco(r / "coco")
    d.write_model(r)
    return r


def model(r: Path, n: int) -> list[str]:
    return ["--model", f"python:{r / 'tiny_model.py'}:build{n}", "--trust-code", "--method", "gradient",
            "--device", "cpu", "-q"]


def results(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    res.pop("setup")
    return res


# ------------------------------------------------------------------------------ loaders
def test_imagenet_xml_and_csv_forms_give_the_same_pairs(root):
    xml = list(iter_imagenet(root / "in_xml"))
    csv = list(iter_imagenet(root / "in_csv"))
    assert [r["image"] for r in xml] == [f"ILSVRC2012_val_0000000{k}" for k in range(1, 6)]  # sorted files
    assert [r["image"] for r in csv] == [r["image"] for r in reversed(xml)]  # CSV row order
    strip = lambda r: {k: (Path(v).name if k == "path" else v) for k, v in r.items() if k != "size"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, xml))) == sorted(map(json.dumps, map(strip, csv)))
    # Inclusive 0-based xmin..xmax -> half-open: the file says 4..23, the box is [4, 24).
    assert xml[0]["boxes"] == [[4.0, 4.0, 24.0, 24.0]] and xml[0]["target"] == 0 and xml[0]["size"] == [64, 64]
    assert len(xml[2]["boxes"]) == 2 and xml[2]["class"] == d.WNIDS[2]
    assert Path(xml[1]["path"]).is_file()


def test_voc_loader_pairs_difficult_and_one_based_boxes(root):
    recs = list(iter_voc(root / "voc"))
    assert [(r["image"], r["class"]) for r in recs] == [
        ("000001", "aeroplane"), ("000002", "aeroplane"), ("000002", "bicycle"), ("000003", "bicycle"),
        ("000003", "bird")]
    # 1-based inclusive 5..24 -> [4, 24); the difficult-flagged aeroplane is still a present class.
    assert recs[0]["boxes"] == [[4.0, 4.0, 24.0, 24.0]]
    assert recs[1]["boxes"] == [[36.0, 36.0, 64.0, 64.0]] and recs[1]["classes_in_image"] == 2
    assert len(recs[4]["boxes"]) == 2


def test_coco_loader_categories_crowd_and_empty_images(root):
    recs = list(iter_coco(root / "coco"))
    # categories 1, 3, 7 -> indices 0, 1, 2 (sorted ids, whatever the JSON order); image 30 has none.
    assert [(r["image"], r["target"], r["class"]) for r in recs] == [("10", 0, "c1"), ("20", 1, "c3"), ("20", 2, "c7")]
    assert recs[1]["crowd"] == [1] and recs[1]["boxes"] == [[50.0, 0.0, 64.0, 10.0]]


def test_segment_masks_polygon_rle_and_compressed_rle():
    poly = [[[4, 4, 24, 4, 24, 24, 4, 24]]]
    m = segments_mask(poly, [[4, 4, 24, 24]], (64, 64), (64, 64))
    assert m[10, 10] and m[4, 4] and not m[30, 30] and not m[10, 30]
    counts = [2, 3, 4 * 5 - 5]  # 4 x 5 image (h=4, w=5): column-major, pixels 2..4 set
    rle = segments_mask([{"counts": counts, "size": [4, 5]}], [[0, 0, 1, 1]], (4, 5), (4, 5))
    expected = np.zeros((4, 5), dtype=bool)
    expected[2:4, 0] = True
    expected[0, 1] = True
    assert (rle == expected).all()
    assert _rle_string("32") == [3, 2]
    assert _rle_string("1233") == [1, 2, 3, 5]  # the 4th count is a delta from the 2nd
    assert _rle_string("123O") == [1, 2, 3, 1]  # 'O' = 31: -1 (sign bit), 2 + (-1)


def test_manifest_is_written_from_a_stream_without_holding_it(tmp_path):
    made = {"n": 0}

    def records():
        for k in range(50_000):
            made["n"] += 1
            yield {"path": f"/data/val/{k:08d}.JPEG", "target": k % 1000, "image": str(k),
                   "boxes": [[1.0, 2.0, 30.0, 40.0]]}

    tracemalloc.start()
    n = write_manifest(records(), tmp_path / "m.jsonl", check_images=False)  # the paths are made up
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 50_000 == made["n"]
    assert peak < 2_000_000  # ~5 MB of manifest; a list of 50,000 dicts alone would be > 20 MB
    with open(tmp_path / "m.jsonl") as f:
        first = json.loads(f.readline())
    assert first == {"path": "/data/val/00000000.JPEG", "target": 0,
                     "eval": {"image": "0", "boxes": [[1.0, 2.0, 30.0, 40.0]]}}
    assert write_manifest(records(), tmp_path / "m2.jsonl", limit=3, check_images=False) == 3
    with pytest.raises(InputError, match=r"--images: none of the image files the annotations name exists \(the first: "
                                         r"/data/val/00000000.JPEG\)"):
        write_manifest(records(), tmp_path / "m3.jsonl", limit=5)
    (tmp_path / "real.JPEG").write_bytes(b"")
    mixed = [{"path": "/data/val/x.JPEG", "target": 0}, {"path": str(tmp_path / "real.JPEG"), "target": 1}]
    assert write_manifest(iter(mixed), tmp_path / "m4.jsonl") == 2  # one image found: the rest fail per pair


# --------------------------------------------------------------------------- protocols
def test_imagenet_loc_end_to_end_checked_by_hand(root, tmp_path):
    # heldout_every=2: pairs 1, 3, 5 choose alpha (all correct: the saliency is the class's
    # rectangle, and val_3 has one box on it), pairs 2 (correct) and 4 (box elsewhere) are scored.
    for form in ("xml", "csv"):
        out = tmp_path / form
        assert main(["evaluate", "imagenet-loc", "--data", str(root / f"in_{form}"), "--out", str(out),
                     "--param", "heldout_every=2", *model(root, 3)]) == 0
        res = results(out)
        assert (res["heldout_pairs"], res["test_pairs"], res["pairs_failed"]) == (3, 2, 0)  # grey, CMYK read
        for rule, alpha in (("value", 0.05), ("energy", 0.05), ("mean", 0.5)):
            assert res["rules"][rule] == {"alpha": alpha, "heldout_error": 0.0, "error": 0.5}
        proto = json.loads((out / "protocol.json").read_text())
        assert proto["params"]["heldout_every"] == 2 and "2017" in proto["sources"]["alphas"]
        assert "| value | 0.05 | 0.0 % | 50.0 % |" in (out / "results.md").read_text()


def test_pointing_voc_end_to_end_checked_by_hand(root, tmp_path):
    out = tmp_path / "voc"
    assert main(["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]) == 0
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    # peak of class c: centre of eval_data.RECTS[c] (original px 14,14 / 48,48 / 48,16)
    assert [(s["image"], s["class"], s["hit"], s["difficult"]) for s in scores] == [
        ("000001", "aeroplane", True, False),   # on the box
        ("000002", "aeroplane", False, True),   # box far away; small + another class -> difficult
        ("000002", "bicycle", False, True),
        ("000003", "bicycle", True, True),
        ("000003", "bird", True, False)]        # two boxes cover >= 1/4 of the image: not difficult
    res = results(out)
    assert res["all"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert res["difficult"] == pytest.approx((0.0 + 0.5) / 2)
    assert res["per_class"]["bird"] == {"all": 1.0, "pairs": 1, "difficult": None, "pairs_difficult": 0}
    assert json.loads((out / "run" / "settings.json").read_text())["compared"]["settings"]["head"] == "sigmoid"


def test_pointing_coco_end_to_end_with_crowd_masks(root, tmp_path):
    out = tmp_path / "coco"
    assert main(["evaluate", "pointing", "--dataset", "coco14", "--data", str(root / "coco"), "--out", str(out),
                 *model(root, 3)]) == 0
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [(s["class"], s["hit"]) for s in scores] == [("c1", True), ("c3", False), ("c7", True)]
    assert scores[1]["gt_fraction"] == pytest.approx(140 / 4096, abs=1e-6)  # the crowd RLE region, 10 x 14 px
    assert results(out)["all"] == pytest.approx(2 / 3)


def test_deletion_game_end_to_end_and_resume_gives_the_same_numbers(root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # relative-to-blur (explicit, not the paper's): the whole-image box always reaches every level
    args = ["evaluate", "deletion-game", "--data", str(root / "in_xml"), "--param", "suppression=relative-to-blur",
            *model(root, 3)]
    assert main([*args, "--out", str(a)]) == 0
    res = results(a)
    scores = [json.loads(x) for x in (a / "scores.jsonl").read_text().splitlines()]
    finite = [s["areas"]["0.99"] for s in scores if isinstance(s["areas"]["0.99"], float)]
    assert all(0 <= s["p_fully_perturbed"] <= 1 and 0 < s["p_clean"] <= 1 for s in scores)
    assert res["levels"]["0.99"]["images"] == len(finite) > 0
    assert res["levels"]["0.99"]["mean_area_px2"] == pytest.approx(sum(finite) / len(finite))
    assert all(0 < v <= 32 * 32 for v in finite)
    # An interrupted run: 2 of 5 items explained, 1 scored; --resume finishes it.
    assert main([*args, "--out", str(b)]) == 0
    lines = (b / "run" / "results.jsonl").read_text().splitlines(keepends=True)
    (b / "run" / "results.jsonl").write_text("".join(lines[:2]))
    slines = (b / "scores.jsonl").read_text().splitlines(keepends=True)
    (b / "scores.jsonl").write_text(slines[0] + slines[1][:20])  # a torn last line too
    for n in ("results.json", "results.md"):
        (b / n).unlink()
    assert main([*args, "--out", str(b)]) == 2  # an earlier evaluation: not without --resume
    assert main([*args, "--out", str(b), "--resume"]) == 0
    assert results(b) == res
    assert (b / "scores.jsonl").read_text() == (a / "scores.jsonl").read_text()


# ------------------------------------------------------------------------------ errors
def test_errors_are_one_clear_line(root, tmp_path, capsys):
    def err(*argv: str) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mperturb: error: "), lines
        return lines[0]

    assert "invalid choice: 'nope'" in (main(["evaluate", "nope", "--data", "x", "--out", "y"]) == 2
                                        and capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    e = err("evaluate", "pointing", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o1"), *model(root, 20))
    assert "no VOC 2007 annotations in" in e
    e = err("evaluate", "imagenet-loc", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o1"),
            *model(root, 3))
    assert "no ImageNet validation boxes in" in e and "--annotations" in e
    e = err("evaluate", "pointing", "--data", str(root / "voc"), "--out", str(tmp_path / "o1"), *model(root, 3))
    assert "the model has 3 output classes but the PASCAL VOC 2007 test has 20" in e
    assert not (tmp_path / "o1").exists()  # refused before anything was written
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    e = err("evaluate", "pointing", "--data", str(root / "voc"), "--out", str(tmp_path / "foreign"), *model(root, 20))
    assert "did not write (notes.txt)" in e
    e = err("evaluate", "pointing", "--data", str(root / "voc"), "--out", str(tmp_path / "o2"), "--param",
            "tolerance_px=-1", *model(root, 20))
    assert "--param tolerance_px: expected a finite number >= 0, got -1" in e
    e = err("evaluate", "pointing", "--dataset", "imagenet", "--data", str(root / "voc"), "--out",
            str(tmp_path / "o2"), *model(root, 20))
    assert "protocol 'pointing' runs on voc07, coco14, got 'imagenet'" in e


def test_protocol_parameters_are_checked():
    with pytest.raises(ConfigError, match="has no parameter 'alpha'"):
        resolve_protocol("imagenet-loc", {"alpha": 0.5})
    with pytest.raises(ConfigError, match="expected some of value, energy, mean"):
        resolve_protocol("imagenet-loc", {"rules": ["peak"]})
    with pytest.raises(ConfigError, match=r"levels: expected numbers in \(0, 1\]"):
        resolve_protocol("deletion-game", {"levels": [1.5]})
    p = resolve_protocol("pointing", {"tolerance_px": 10})
    assert p["params"]["tolerance_px"] == 10.0 and "set by --param" in p["sources"]["tolerance_px"]
    with pytest.raises(InputError, match="WordNet id"):
        from meaningful_perturbation.datasets import read_synsets

        tmp = Path(__file__).parent  # any file that is not a synset list
        read_synsets(tmp / "eval_data.py")


def test_crop_none_and_top5_reach_the_runner(root, tmp_path):
    out = tmp_path / "o"
    assert main(["evaluate", "imagenet-loc", "--data", str(root / "in_xml"), "--out", str(out), "--limit", "2",
                 "--param", "crop=none", "--target", "top5", *model(root, 3)]) == 0
    compared = json.loads((out / "run" / "settings.json").read_text())["compared"]
    assert compared["preprocessing"]["crop"] == "none" and compared["settings"]["target"] == "top5"
    assert results(out)["pairs_scored"] == 2
    with pytest.raises(ConfigError, match="--param crop: expected 'model' or 'none', got 'centre'"):
        resolve_protocol("pointing", {"crop": "centre"})


def test_resume_with_other_settings_is_refused_and_force_rescores(root, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--resume", "--param", "tolerance_px=100"]) == 2
    err = capsys.readouterr().err
    assert "was made with other settings (params.tolerance_px: 15.0 -> 100.0)" in err
    assert "scoring-only settings: pass --resume --force to re-score the saved explanations" in err
    # --force: the saved explanations are kept, the scores recomputed with the new tolerance
    # (100 px reaches every object of these 64 px images).
    assert main([*base, "--resume", "--force", "--param", "tolerance_px=100"]) == 0
    assert results(out)["all"] == 1.0
    assert main([*base, "--batch-size", "0", "--force"]) == 2
    assert "--batch-size: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_give_the_numbers_of_one(root, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["evaluate", "pointing", "--data", str(root / "voc"), "--batch-size", "1", *model(root, 20)]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "meaningful_perturbation", *args, "--out", str(two)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert results(two) == results(one)
    ranks = sorted(json.loads(x)["rank"] for x in (two / "run" / "results.jsonl").read_text().splitlines())
    assert ranks == [0, 0, 0, 1, 1]


def test_a_damaged_saved_item_fails_only_its_pair(root, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]
    assert main(base) == 0
    npz = sorted((out / "run" / "items").glob("*.npz"))[0]
    npz.write_bytes(b"not a zip")
    (out / "scores.jsonl").write_text("")
    assert main([*base, "--resume"]) == 1
    res = results(out)
    assert (res["pairs_scored"], res["pairs_failed"], res["pairs_unscored"]) == (4, 1, 1)


def test_boxes_per_alpha_equal_saliency_to_box_for_every_alpha():
    import torch

    from meaningful_perturbation.evaluation.evaluate import boxes_per_alpha
    from meaningful_perturbation.metrics import DEFAULT_ALPHAS, saliency_to_box

    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(37, 53, generator=g), torch.randn(20, 30, generator=g),  # negative values
            torch.zeros(8, 9), -torch.ones(5, 6),                                 # constant maps
            torch.randint(0, 3, (16, 16), generator=g).float()]                   # many ties
    for s in maps:
        for rule, grid in DEFAULT_ALPHAS.items():
            expected = torch.cat([saliency_to_box(s[None], rule, a) for a in grid])
            assert torch.equal(boxes_per_alpha(s, rule, list(grid)), expected), rule
