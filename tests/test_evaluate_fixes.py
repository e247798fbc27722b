"""`mperturb evaluate` after a fresh user's review (issue 17 follow-up): the paper's deletion-game
suppression, degenerate explanations, validated annotations (and fuzzed RLE decoders), the
results' definitions and counts, damaged saved items, resume of a moved folder, one-line errors
and warnings, the data set's class names."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eval_data as d
from meaningful_perturbation.cli import main
from meaningful_perturbation.datasets._rle import check_segmentation, rle_decode, rle_string
from meaningful_perturbation.errors import InputError
from meaningful_perturbation.evaluation.evaluate import segments_mask
from meaningful_perturbation.metrics import deletion_game_box


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("evalfix")
    d.write_imagenet(r / "in_xml", "xml")
    d.write_voc(r / "voc")
    d.write_coco(r / "coco")
    d.write_model(r)
    return r


def model(r: Path, n: int, quiet: bool = True) -> list[str]:
    return ["--model", f"python:{r / 'tiny_model.py'}:build{n}", "--trust-code", "--method", "gradient",
            "--device", "cpu", *(["-q"] if quiet else [])]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def one_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mperturb: error: "), err
    return err[0]


# ------------------------------------------------------------------- 1. deletion game
class Evidence(torch.nn.Module):
    """Two classes; logit_0 = gain * mean of channel 0 over the region - 5 (logit_1 = 0)."""

    def __init__(self, region: torch.Tensor, gain: float) -> None:
        super().__init__()
        self.register_buffer("region", region.float() / region.sum())
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gain * (x[:, 0] * self.region).sum(dim=(1, 2)) - 5.0
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_deletion_game_default_is_the_papers_probability_drop():
    from meaningful_perturbation.metrics.faithfulness import make_substrate

    region = torch.zeros(12, 12)
    region[2:6, 3:7] = 1.0
    x = region.view(1, 1, 12, 12).clone() * 3.0
    net = Evidence(region, 4.0)
    sal = region[None].clone()
    res, p_clean, p_blur = deletion_game_box(net, x, sal, 0, blur_sigma=2.0, levels=(0.5, 0.99),
                                             thresholds=[0.5], return_probabilities=True)
    prob = lambda img: torch.softmax(net(img), dim=1)[0, 0].item()  # noqa: E731
    blurred = make_substrate(x, "blur", 2.0)
    assert p_clean.item() == pytest.approx(prob(x)) and p_blur.item() == pytest.approx(prob(blurred))
    # the one box (the region, 16 px) blurs the region: reached iff p_box <= (1 - s) p_clean
    p_box = prob(torch.where(region.bool().view(1, 1, 12, 12), blurred, x))
    for s in (0.5, 0.99):
        expected = 16.0 if p_box <= (1 - s) * prob(x) else math.inf
        assert res[s].item() == expected
    assert res[0.5].item() == 16.0 and math.isinf(res[0.99].item())  # p 0.9997 -> 0.15: 85 % suppressed
    # relative-to-blur (explicit): the box equals a whole-image blur for this model -> 100 %
    rel = deletion_game_box(net, x, sal, 0, blur_sigma=2.0, levels=(0.99,), thresholds=[0.5],
                            suppression="relative-to-blur")
    assert rel[0.99].item() == 16.0
    with pytest.raises(InputError, match="suppression: expected one of probability, relative-to-blur"):
        deletion_game_box(net, x, sal, 0, suppression="share")


def test_deletion_game_records_probabilities_and_counts_not_reached(root, tmp_path):
    out = tmp_path / "o"
    assert main(["evaluate", "deletion-game", "--data", str(root / "in_xml"), "--out", str(out),
                 *model(root, 3)]) == 0
    scores = lines(out / "scores.jsonl")
    res = json.loads((out / "results.json").read_text())
    for s in scores:
        assert 0 < s["p_clean"] <= 1 and 0 <= s["p_fully_perturbed"] <= 1
        for key, v in s["areas"].items():  # the tiny linear model barely reacts to blur
            supp = 1 - s["p_fully_perturbed"] / s["p_clean"]
            if supp < float(key) - 1e-9:
                assert v == "not reached"  # not even the whole image suppresses enough
    for key, lv in res["levels"].items():
        assert lv["not_reached"] == sum(1 for s in scores if s["areas"][key] == "not reached")
        assert lv["images"] + lv["not_reached"] + lv["not_scorable"] == len(scores) == 5
    assert res["levels"]["0.99"]["not_reached"] == 5 and res["suppression"] == "probability"
    md = (out / "results.md").read_text()
    assert "| 99 % | n/a | 0 pairs | 5 pairs | 0 pairs |" in md
    assert "lowers the class probability to (1 - s) x p_clean" in md and "**not reached**" in md


# ------------------------------------------------------------------ 2. degenerate
def test_degenerate_explanations_are_counted_and_miss_by_default(root, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]
    assert main(base) == 0
    # mark the first pair (a hit) degenerate, as the runner does when no region changes the score
    res_file = out / "run" / "results.jsonl"
    recs = lines(res_file)
    recs[0]["degenerate"] = True
    res_file.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def rescore(*extra: str) -> tuple[dict, list[dict]]:
        (out / "scores.jsonl").unlink()
        assert main([*base, "--resume", "--force", *extra]) == 0
        return json.loads((out / "results.json").read_text()), lines(out / "scores.jsonl")

    res, scores = rescore()
    assert scores[0]["degenerate"] is True and scores[0]["hit"] is False
    assert [s["degenerate"] for s in scores[1:]] == [False] * 4
    assert res["pairs_degenerate"] == 1 and res["degenerate_policy"] == "miss"
    assert res["per_class"]["aeroplane"]["all"] == 0.0  # 000001 was its only hit
    assert "degenerate explanations (no region found that changes the score): 1 pair, policy `degenerate=miss`" \
        in (out / "results.md").read_text()
    res, scores = rescore("--param", "degenerate=score")
    assert scores[0]["hit"] is True and res["per_class"]["aeroplane"]["all"] == 0.5
    res, scores = rescore("--param", "degenerate=skip")
    assert scores[0]["skipped"] is True and "hit" not in scores[0]
    assert res["pairs_scored"] == 4 and res["pairs_skipped"] == 1 and res["per_class"]["aeroplane"]["pairs"] == 1
    e = one_error(capsys, [*base, "--force", "--param", "degenerate=maybe"])
    assert "--param degenerate: expected 'miss', 'skip' or 'score', got 'maybe'" in e


# ------------------------------------------------------------- 3. COCO annotations
def coco_with(tmp_path: Path, root: Path, edit) -> Path:
    data = tmp_path / "coco"
    shutil.copytree(root / "coco", data)
    f = data / "annotations" / "instances_val2014.json"
    js = json.loads(f.read_text())
    edit(js)
    f.write_text(json.dumps(js))
    return data


def test_malformed_rle_is_refused_while_loading(root, tmp_path, capsys):
    def garbage(js):
        js["annotations"][1]["segmentation"] = {"counts": "garbage!!", "size": [64, 64]}

    data = coco_with(tmp_path, root, garbage)
    out = tmp_path / "o"
    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data", str(data), "--out", str(out),
                           *model(root, 3)])
    assert e == ("mperturb: error: --data: instances_val2014.json: annotation 2: segmentation: compressed RLE "
                 "counts hold 'r' at position 2; expected characters '0' to 'o'")
    assert not out.exists()  # before anything was explained or written

    def short(js):
        js["annotations"][1]["segmentation"] = {"counts": [3, 4], "size": [64, 64]}

    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data",
                           str(coco_with(tmp_path / "b", root, short)), "--out", str(out), *model(root, 3)])
    assert "annotation 2: segmentation: RLE counts cover 7 pixels but size [64, 64] has 4096" in e


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=5) | st.dictionaries(st.sampled_from(["counts", "size", "x"]), c,
                                                                          max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_rle_strings_raise_only_input_error(s):
    try:
        counts = rle_string(s)
    except InputError:
        return
    assert all(isinstance(c, int) and c >= 0 for c in counts)
    try:
        m = rle_decode({"counts": s, "size": [1, sum(counts)]}) if sum(counts) else None
    except InputError:
        return
    assert m is None or int(m.sum()) == sum(counts[1::2])


@settings(max_examples=300, deadline=None)
@given(_json, st.sampled_from([(1, 1), (3, 5), (8, 8)]))
def test_fuzz_segmentations_raise_only_input_error(seg, size):
    try:
        check_segmentation(seg, "seg")
    except InputError:
        return
    m = segments_mask([seg], [[0.0, 0.0, 1.0, 1.0]], size, size)  # a checked one always decodes
    assert m.shape == size


# ------------------------------------------------------------ 4, 5. output and table
def test_quiet_table_on_stdout_with_definitions_counts_and_setup(root, tmp_path, capsys):
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), "--limit", "3",
                 "--param", "tolerance_px=10", "--head", "logits", *model(root, 20)]) == 0
    cap = capsys.readouterr()
    md = (out / "results.md").read_text()
    assert cap.out == md and "| all |" in cap.out  # -q: still on stdout
    assert "3 pairs scored, 0 failed." in md
    assert "| bicycle | 0.0 % | 1 pair | 0.0 % | 1 pair |" in md
    assert "- parameters differing from the protocol defaults: `tolerance_px=10.0`, `head=\"logits\"`" in md
    assert "- `--limit 3`: only the first 3 pairs" in md and "- model output head: logits (--head)" in md
    assert "within 10 px (original image pixels)" in md and "**difficult**" in md and "**n/a**" in md
    setup = json.loads((out / "results.json").read_text())["setup"]
    assert setup["limit"] == 3 and setup["changed_params"] == {"tolerance_px": 10.0, "head": "logits"}
    # 9. protocol.json records what was run: --head overrides the protocol's sigmoid
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["params"]["head"] == "logits" and proto["sources"]["head"].startswith("set by --head logits")
    assert proto["run"]["head"] == "logits" and proto["run"]["head_origin"] == "--head"
    assert proto["run"]["limit"] == 3


# ------------------------------------------------------ 6, 7. failures and missing images
def test_damaged_npz_is_named_counted_once_and_reexplained(root, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]
    assert main(base) == 0
    first = lines(out / "scores.jsonl")[0]
    (out / "run" / "items" / f"{first['id']}.npz").write_bytes(b"not a zip")
    (out / "scores.jsonl").write_text("")
    capsys.readouterr()
    assert main([*base, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "mperturb: cannot score" in err and "000001.jpg (class aeroplane)" in err
    assert "--resume explains it again" in err
    fails = lines(out / "score_failures.jsonl")
    assert [(f["image"], f["class"], f["stage"]) for f in fails] == [("000001", "aeroplane", "score")]
    assert fails[0]["reason"]
    res = json.loads((out / "results.json").read_text())
    assert (res["pairs_scored"], res["pairs_failed"], res["pairs_not_explained"], res["pairs_unscored"]) == (4, 1, 0, 1)
    md = (out / "results.md").read_text()
    assert "4 pairs scored, 1 (0 not explained, 1 explained but not scorable) failed." in md
    assert main([*base, "--resume"]) == 0  # explained again, then scored
    res = json.loads((out / "results.json").read_text())
    assert (res["pairs_scored"], res["pairs_failed"]) == (5, 0)
    assert lines(out / "score_failures.jsonl") == []


def test_missing_voc_image_real_path_and_classes_dropping_out(root, tmp_path, capsys):
    data = tmp_path / "voc"
    shutil.copytree(root / "voc", data)
    (data / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000003.jpg").unlink()
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["evaluate", "pointing", "--data", str(data), "--out", str(out), *model(root, 20)]) == 1
    err = capsys.readouterr().err
    fails = lines(out / "run" / "failures.jsonl")
    assert {Path(f["path"]).name for f in fails} == {"000003.jpg"}  # not 000003.JPEG
    assert "mperturb: warning: 1 class(es) left out of the mean (all their pairs failed): bird" in err
    res = json.loads((out / "results.json").read_text())
    assert res["classes_without_scores"] == ["bird"]
    assert "Classes left out of the means (all their pairs failed or were skipped): bird." in \
        (out / "results.md").read_text()


# ------------------------------------------------------------ 8. synset line count
def test_synset_file_with_wrong_count_blames_the_synset_file(root, tmp_path, capsys):
    for n in (2, 4):
        syn = tmp_path / f"syn{n}.txt"
        syn.write_text("".join(f"{w} x\n" for w in (d.WNIDS + ["n09999999"])[:n]))
        e = one_error(capsys, ["evaluate", "imagenet-loc", "--data", str(root / "in_xml"), "--synsets", str(syn),
                               "--out", str(tmp_path / "o"), *model(root, 3)])
        assert e.startswith(f"mperturb: error: --synsets: {syn} lists {n} WordNet ids (one a line) but the model "
                            "has 3 output classes"), e


# --------------------------------------------------------------- 10, 11. resume
def test_moved_output_folder_resumes_and_changed_settings_are_named(root, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "moved"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), *model(root, 20)]
    assert main([*base, "--out", str(a)]) == 0
    before = (a / "run" / "results.jsonl").read_text()
    want = json.loads((a / "results.json").read_text())
    shutil.move(str(a), str(b))
    (b / "results.json").unlink()
    assert main([*base, "--out", str(b), "--resume"]) == 0
    assert (b / "run" / "results.jsonl").read_text() == before  # nothing explained again
    got = json.loads((b / "results.json").read_text())
    assert {k: v for k, v in got.items() if k != "setup"} == {k: v for k, v in want.items() if k != "setup"}
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "voc"), *model(root, 20)[:-3],
                           "--method", "center", "--device", "cpu", "-q", "--out", str(b), "--resume"])
    assert "explain.method: 'gradient' -> 'center'" in e
    data2 = tmp_path / "voc2"
    shutil.copytree(root / "voc", data2)
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(data2), *model(root, 20), "--out", str(b),
                           "--resume"])
    assert f"data: '{root / 'voc'}' -> '{data2}'" in e and "if the data set only moved" in e
    # --resume on a folder that does not exist: a fresh run
    assert main([*base, "--out", str(tmp_path / "new"), "--resume"]) == 0


# ------------------------------------------------------------------ 12. warnings
def test_questionable_annotations_one_warning_per_kind(root, tmp_path, capsys):
    def edit(js):
        extra = dict(js["annotations"][0], id=9, image_id=999)
        empty = dict(js["annotations"][0], id=10, segmentation=[])
        js["annotations"] += [extra, dict(extra, id=11), empty]

    data = coco_with(tmp_path, root, edit)
    capsys.readouterr()
    assert main(["evaluate", "pointing", "--dataset", "coco14", "--data", str(data), "--out", str(tmp_path / "c"),
                 *model(root, 3)]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mperturb: warning:")]
    assert err == ["mperturb: warning: --data: instances_val2014.json: 2 annotation(s) whose image_id is not in "
                   "images (ignored)",
                   "mperturb: warning: --data: instances_val2014.json: 1 annotation(s) with an empty segmentation "
                   "(their bbox is used)"]
    voc = tmp_path / "voc"
    shutil.copytree(root / "voc", voc)
    ids = voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    ids.write_text(ids.read_text() + "000001\n000002\n")
    xml = voc / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>500</width>"))
    capsys.readouterr()
    out = tmp_path / "v"
    assert main(["evaluate", "pointing", "--data", str(voc), "--out", str(out), *model(root, 20)]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mperturb: warning:")]
    assert err == ["mperturb: warning: --data: test.txt: 2 duplicate id(s) in the image list (each image used once)",
                   "mperturb: warning: --data: test.txt: 1 annotation(s) whose <size> disagrees with the image file "
                   "(the file's size is used)"]
    assert len(lines(out / "scores.jsonl")) == 5
    inn = tmp_path / "in"
    shutil.copytree(root / "in_xml", inn)
    (inn / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 8 8 23 23\n"
                                              "ILSVRC2012_val_00000002,\n")
    from meaningful_perturbation.datasets import iter_imagenet

    with pytest.warns(UserWarning, match=r"1 image\(s\) without any box"):
        assert len(list(iter_imagenet(inn))) == 1


def test_imagenet_boxes_are_clipped_to_the_image(root, tmp_path):
    inn = tmp_path / "in"
    shutil.copytree(root / "in_xml", inn)
    shutil.rmtree(inn / "ILSVRC" / "Annotations")
    # class 0's rectangle is x, y in [4, 24); the same box reaching far outside the 64 px image
    (inn / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                              "ILSVRC2012_val_00000001,n01440764 -400 -400 23 23\n"
                                              "ILSVRC2012_val_00000004,n01440764 -400 -400 23 23\n")
    out = tmp_path / "o"
    assert main(["evaluate", "imagenet-loc", "--data", str(inn), "--out", str(out), "--param", "heldout_every=2",
                 "--param", 'rules=["value"]', *model(root, 3)]) == 0
    # clipped: [0, 24) against the map's box [4, 24) -> IoU 400/576 = 0.69 >= 0.5 (unclipped: ~0)
    assert [s["correct"]["value"][1] for s in lines(out / "scores.jsonl")] == [1, 1]  # alpha = 0.05


# -------------------------------------------------------------- 13. one-line errors
def test_every_error_is_one_line(root, tmp_path, capsys):
    e = one_error(capsys, ["evaluate", "nope", "--data", "x", "--out", "y"])
    assert e.startswith("mperturb: error: evaluate: argument PROTOCOL: invalid choice: 'nope'")
    e = one_error(capsys, ["evaluate", "pointing", "--data", "x", "--out", "y", "--limit", "many"])
    assert e == "mperturb: error: evaluate: argument --limit: invalid int value: 'many'"
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(tmp_path / "o"),
                           *model(root, 20), "--set", "foo=1"])
    assert e.startswith("mperturb: error: --set: 'foo': not a setting of method 'gradient'")
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "coco"), "--out", str(tmp_path / "o"),
                           *model(root, 20)])
    assert e.endswith("this looks like COCO 2014: pass --dataset coco14")
    voc = tmp_path / "voc"
    shutil.copytree(root / "voc", voc)
    xml = voc / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<xmin>5</xmin>", "<xmin>five</xmin>"))
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(voc), "--out", str(tmp_path / "o"),
                           *model(root, 20)])
    assert e.startswith("mperturb: error: --data: ") and "expected a <xmin> number, got 'five'" in e


# -------------------------------------------------------------- 15. class names
def test_results_name_the_data_sets_classes(root, tmp_path):
    out = tmp_path / "o"
    assert main(["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]) == 0
    assert [r["class_name"] for r in lines(out / "run" / "results.jsonl")] == [
        "aeroplane", "aeroplane", "bicycle", "bicycle", "bird"]
    out = tmp_path / "i"
    assert main(["evaluate", "imagenet-loc", "--data", str(root / "in_xml"), "--out", str(out), "--limit", "1",
                 *model(root, 3)]) == 0
    assert lines(out / "run" / "results.jsonl")[0]["class_name"] == "n01440764 class 0"


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["images", "annotations", "categories"]), st.integers(0, 2),
       st.sampled_from(["id", "image_id", "category_id", "bbox", "segmentation", "iscrowd", "file_name", "height",
                        "name"]), _json)
def test_fuzz_coco_annotations_raise_only_input_error(tmp_path_factory, part, k, key, value):
    """Any value in any field of the instances JSON: the loader yields records or raises InputError."""
    from meaningful_perturbation.datasets import iter_coco

    data = tmp_path_factory.mktemp("fz")
    (data / "val2014").mkdir()
    js = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in (1, 2, 3)],
          "annotations": [{"id": i, "image_id": 1 + i % 3, "category_id": 1, "bbox": [0, 0, 2, 2],
                           "segmentation": [[0, 0, 2, 0, 2, 2]], "iscrowd": 0} for i in (1, 2, 3)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}
    js[part][k][key] = value
    (data / "instances_val2014.json").write_text(json.dumps(js))
    try:
        recs = list(iter_coco(data))
    except InputError:
        return
    for r in recs:
        segments_mask(r["segments"], r["boxes"], (8, 8), (8, 8))


# ------------------------------------------- review 16/17: --resume --force, explain changes
def test_resume_force_refuses_changed_explain_settings_but_rescores(root, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out), *model(root, 20)]
    assert main(base) == 0
    state = (out / "evaluate.json").read_text()
    saved = (out / "run" / "results.jsonl").read_text()
    e = one_error(capsys, [*base, "--resume", "--force", "--method", "rise"])
    assert "--resume --force: the explanations saved in" in e and "explain.method: 'gradient' -> 'rise'" in e
    assert "choose a new --out" in e
    e = one_error(capsys, [*base, "--resume", "--method", "rise"])  # without --force: the hint does not send to it
    assert "explain.method: 'gradient' -> 'rise'" in e and "choose a new --out" in e
    assert "--resume --force refuses explain changes" in e
    # nothing was relabelled: the state and the saved explanations are those of the first run
    assert (out / "evaluate.json").read_text() == state
    assert (out / "run" / "results.jsonl").read_text() == saved
    # a scoring-only change is still accepted with --resume --force
    assert main([*base, "--resume", "--force", "--param", "tolerance_px=100"]) == 0
    assert json.loads((out / "results.json").read_text())["all"] == 1.0


BINARY = b"\xff\xfe\x00\x01garbage"


@pytest.mark.parametrize("name, protocol, n, rel, option", [
    ("in_csv", "imagenet-loc", 3, "LOC_val_solution.csv", "--annotations"),
    ("in_csv", "imagenet-loc", 3, "LOC_synset_mapping.txt", "--synsets"),
    ("voc", "pointing", 20, "VOCdevkit/VOC2007/ImageSets/Main/test.txt", "--data"),
    ("voc", "pointing", 20, "VOCdevkit/VOC2007/Annotations/000002.xml", "--data"),
    ("coco", "pointing", 3, "annotations/instances_val2014.json", "--annotations"),
])
def test_undecodable_annotation_files_are_one_line_errors(root, tmp_path, capsys, name, protocol, n, rel, option):
    data = tmp_path / name
    if name == "in_csv":
        d.write_imagenet(data, "csv")
    else:
        shutil.copytree(root / name, data)
    (data / rel).write_bytes(BINARY)
    argv = ["evaluate", protocol, "--data", str(data), "--out", str(tmp_path / "o"), *model(root, n)]
    if name == "coco":
        argv += ["--dataset", "coco14"]
    e = one_error(capsys, argv)
    assert e.startswith(f"mperturb: error: {option}: ") and Path(rel).name in e, e


@pytest.mark.parametrize("edit", ["unknown class", "xmin > xmax", "bad number", "missing xml"])
def test_a_user_error_while_streaming_annotations_leaves_out_as_found(root, tmp_path, capsys, edit):
    voc = tmp_path / "voc"
    shutil.copytree(root / "voc", voc)
    base = voc / "VOCdevkit" / "VOC2007"
    xml = base / "Annotations" / "000003.xml"  # the last image: the first pairs are already streamed
    text = xml.read_text()
    if edit == "unknown class":
        xml.write_text(text.replace("<name>bird</name>", "<name>unicorn</name>", 1))
    elif edit == "xmin > xmax":
        xml.write_text(text.replace("<xmin>", "<xmin>9999", 1))
    elif edit == "bad number":
        xml.write_text(text.replace("<ymax>", "<ymax>x", 1))
    else:
        (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000009\n")
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        one_error(capsys, ["evaluate", "pointing", "--data", str(voc), "--out", str(out), *model(root, 20)])
        if out.name == "new":
            assert not out.exists()
        else:
            assert out.is_dir() and list(out.iterdir()) == []


def test_a_masker_for_another_classifier_is_refused_before_out_is_written(root, tmp_path, capsys):
    out = tmp_path / "o"
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(out),
                           *model(root, 20), "--method", "masker", "--masker", "demo"])
    assert e.startswith("mperturb: error: --masker: ") and "another classifier" in e, e
    assert not out.exists()


def test_an_out_below_a_file_is_an_out_error(root, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "voc"), "--out", str(afile / "x"),
                           *model(root, 20)])
    assert e.startswith("mperturb: error: --out: cannot create folder") and "afile" in e, e
    assert afile.read_text() == "mine"


def test_a_masker_change_is_shown_once_with_its_files():
    from meaningful_perturbation.evaluation.evaluate import _shown

    change = "explain.overrides.masker: 'sha256:aa' -> 'sha256:bb'"
    got = _shown(change, {"masker_file": "/old/m.safetensors"}, {"masker_file": "/new/m.safetensors"})
    assert got == ("explain.overrides.masker: another masker file content ('/old/m.safetensors' -> "
                   "'/new/m.safetensors')")
    assert _shown("explain.method: 'a' -> 'b'", {}, {}) == "explain.method: 'a' -> 'b'"


# ------------------------------------------- options a layout ignores; a folder without images
def test_options_the_data_set_does_not_use_are_refused(root, tmp_path, capsys):
    syn = tmp_path / "syn.txt"
    syn.write_text("n01440764 tench\n")
    for extra, name in ((["--synsets", str(syn)], "synsets"), (["--images", str(tmp_path)], "images"),
                        (["--annotations", str(syn)], "annotations")):
        out = tmp_path / f"o_{name}"
        e = one_error(capsys, ["evaluate", "pointing", "--data", str(root / "voc"), *extra, "--out", str(out),
                               *model(root, 20)])
        assert e.startswith(f"mperturb: error: --{name}: the PASCAL VOC 2007 test layout does not use it"), e
        assert not out.exists()
    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data", str(root / "coco"),
                           "--synsets", str(syn), "--out", str(tmp_path / "o_coco"), *model(root, 3)])
    assert e.startswith("mperturb: error: --synsets: the COCO 2014 val layout does not use it"), e


def test_an_images_folder_holding_none_of_the_images_is_refused_up_front(root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o"
    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data", str(root / "coco"),
                           "--images", str(empty), "--out", str(out), *model(root, 3)])
    assert e.startswith("mperturb: error: --images: none of the "), e
    assert str(empty) in e and "point --data (or --images) at the folder that holds them" in e
    assert not out.exists()  # nothing explained, the fresh --out left as it was


def test_duplicate_coco_category_and_absurd_polygon_coordinates_are_named(root, tmp_path, capsys):
    src = root / "coco" / "annotations" / "instances_val2014.json"
    js = json.loads(src.read_text())
    bad = tmp_path / "dup.json"
    bad.write_text(json.dumps({**js, "categories": js["categories"] + [{"id": 3, "name": "again"}]}))
    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data", str(root / "coco"),
                           "--annotations", str(bad), "--out", str(tmp_path / "o1"), *model(root, 3)])
    assert "category id 3 is listed 2 times in categories; each category needs its own id" in e, e
    anns = [dict(a) for a in js["annotations"]]
    first = next(a for a in anns if isinstance(a.get("segmentation"), list) and a["segmentation"])
    first["segmentation"] = [[1e308, 0.0, 5.0, 5.0, 0.0, 5.0]]
    bad2 = tmp_path / "far.json"
    bad2.write_text(json.dumps({**js, "annotations": anns}))
    e = one_error(capsys, ["evaluate", "pointing", "--dataset", "coco14", "--data", str(root / "coco"),
                           "--annotations", str(bad2), "--out", str(tmp_path / "o2"), *model(root, 3)])
    assert f"annotation {first['id']}: segmentation: polygon 0: expected an even number of finite coordinates" in e, e
    assert "|v| <= 1e+07" in e
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("form", ["xml", "csv"])
def test_imagenet_images_without_an_annotation_are_counted_in_a_warning(tmp_path, form):
    import warnings

    from meaningful_perturbation.datasets import iter_imagenet
    from meaningful_perturbation.errors import MeaningfulPerturbationWarning

    data = d.write_imagenet(tmp_path / "in", form)
    img_dir = data / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for k in range(2):
        shutil.copy(next(img_dir.glob("*.JPEG")), img_dir / f"ILSVRC2012_val_9999999{k}.JPEG")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        recs = list(iter_imagenet(data))
    assert recs and all("9999999" not in r["path"] for r in recs)
    said = [str(w.message) for w in got if issubclass(w.category, MeaningfulPerturbationWarning)]
    assert any(f"2 image(s) in {img_dir} with no annotation (not evaluated)" in m for m in said), said
