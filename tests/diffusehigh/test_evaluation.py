"""The paper preset's DemoFusion-style evaluation (diffusehigh.evaluation) on tiny inputs, against the definitions.

The definitions are written out here (FID: Frechet distance of Gaussians fitted to the features; KID: the unbiased
squared MMD of the cubic polynomial kernel, ``diffusehigh.metrics.kid``; IS: exp E[KL(p(y|x) || p(y))]; CLIP score:
max(100 cos(E_I, E_C), 0)) and checked on closed forms without any optional library; the torchmetrics-backed code
is compared with them when the [eval] extra (torchmetrics, torch-fidelity) is installed, and skipped otherwise.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy import linalg

from common.cli import main
from common.results import load_record
from diffusehigh import config, evaluation, metrics, reproduce

from .tiny_metric_nets import TinyInception, save_tiny_clip


def _has_extra() -> bool:
    try:
        evaluation.require_extra()
    except evaluation.MissingEvalExtra:
        return False
    return True


needs_extra = pytest.mark.skipif(not _has_extra(), reason="the [eval] extra (torchmetrics, torch-fidelity) is absent")


# ----------------------------------------------------------------------------------------------------
# The definitions, hand-written


def fid_definition(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), unbiased covariances (Heusel et al. 2017)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def is_definition(logits: np.ndarray) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) with p(y) the mean prediction (Salimans et al. 2016), one split."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + shift


def test_definitions_on_closed_forms():
    """Runs without the extra: a shifted copy has FID = ||shift||^2 (equal covariances cancel the trace term); a set
    against itself has FID 0; IS of K confident, distinct, equally frequent classes is K, of identical predictions 1."""
    a = _features(50, 6, 0).numpy()
    shift = np.linspace(-1, 1, 6)
    assert fid_definition(a + shift, a) == pytest.approx(float((shift**2).sum()), rel=1e-9, abs=1e-9)
    assert abs(fid_definition(a, a)) < 1e-9
    confident = 50.0 * np.eye(4).repeat(3, 0)  # 12 images, 3 per class, softmax ~ one-hot (e^-50)
    assert is_definition(confident) == pytest.approx(4.0, rel=1e-9)
    assert is_definition(np.tile(np.array([[0.3, -1.0, 2.0]]), (5, 1))) == pytest.approx(1.0, abs=1e-12)


@needs_extra
def test_fid_is_the_frechet_distance_of_the_features():
    """torchmetrics' FID (eigenvalues of S_a S_b) vs scipy's matrix square root, float64 on 8-d features: the two
    roots agree to ~1e-10 relative at this size and conditioning; 1e-7 leaves room for other LAPACK builds."""
    fake, real = _features(40, 8, 1, shift=0.3), _features(60, 8, 2)
    expected = fid_definition(fake.numpy(), real.numpy())
    assert evaluation.frechet_distance(fake, real) == pytest.approx(expected, rel=1e-7)


@needs_extra
def test_kid_is_the_unbiased_polynomial_mmd():
    """With subsets as large as the sets, every subset is a permutation of the whole set, so each equals the unbiased
    MMD of the sets (diffusehigh.metrics.kid, written from Binkowski et al.) and their spread is 0 (float64 sums in
    another order: 1e-9 relative)."""
    fake, real = _features(30, 5, 3, shift=0.5), _features(30, 5, 4)
    mean, std = evaluation.kernel_distance(fake, real, subsets=3, subset_size=30)
    assert mean == pytest.approx(metrics.kid(fake, real), rel=1e-9) and std < 1e-9 * abs(mean)
    # subsets: seeded, so repeatable, and the global random state is left alone
    state = torch.random.get_rng_state()
    first = evaluation.kernel_distance(fake, real, subsets=5, subset_size=10)
    assert evaluation.kernel_distance(fake, real, subsets=5, subset_size=10) == first
    assert torch.equal(torch.random.get_rng_state(), state)


@needs_extra
def test_inception_score_is_its_definition():
    logits = _features(24, 7, 5)
    mean, _ = evaluation.inception_score(logits, splits=1)
    assert mean == pytest.approx(is_definition(logits.numpy()), rel=1e-9)
    assert evaluation.inception_score(logits, splits=4) == evaluation.inception_score(logits, splits=4)  # seeded


@needs_extra
def test_clip_score_from_a_local_clip_is_its_definition(tmp_path):
    """torchmetrics' functional CLIP score with a CLIP loaded from a local folder (random weights, saved here) equals
    max(100 cos, 0) of the embeddings of CLIPModel's own forward pass; float32 embeddings of size 8: 1e-4 absolute on
    a score of tens."""
    model, processor = evaluation.load_clip(str(save_tiny_clip(tmp_path)))
    g = torch.Generator().manual_seed(0)
    definitions = []
    for prompt in ["Cinematic photo of delicious chocolate icecream.", "a cat", "Ünïcode ☃ 42"]:
        image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.model(**inputs)
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        definitions.append(max(100 * cosine, 0.0))
        assert evaluation.clip_score(image, prompt, (model, processor)) == pytest.approx(definitions[-1], abs=1e-4)
    assert max(definitions) > 0  # not only clipped zeros


# ----------------------------------------------------------------------------------------------------
# Images, crops, features


def test_uint8_resize_and_crops():
    x = torch.tensor([0.0, 0.5 / 255, 0.6 / 255, 1.0, 1.2, -0.1]).reshape(1, 3, 1, 2)
    assert evaluation.to_uint8(x).flatten().tolist() == [0, 0, 1, 255, 255, 0]
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert evaluation.resize_square(image, 12).shape == (3, 12, 12)
    square = image[:, :, :30]
    assert torch.equal(evaluation.resize_square(square, 30), square)  # already the size: unchanged
    assert evaluation.enlarge_to(image, 40).shape == (3, 40, 67) and evaluation.enlarge_to(image, 20) is image
    boxes = evaluation.crop_boxes(30, 50, 16, 5, seed=7)
    assert boxes == evaluation.crop_boxes(30, 50, 16, 5, seed=7) != evaluation.crop_boxes(30, 50, 16, 5, seed=8)
    assert all(0 <= t <= 14 and 0 <= left <= 34 for t, left in boxes)
    crops = evaluation.random_crops(image, 16, 5, seed=7)
    t, left = boxes[2]
    assert crops.shape == (5, 3, 16, 16) and torch.equal(crops[2], image[:, t : t + 16, left : left + 16])
    with pytest.raises(ValueError, match="exceeds"):
        evaluation.crop_boxes(30, 50, 31, 1, seed=0)


def test_features_of_an_image_depend_on_its_index_not_its_process():
    """A generated image's features: the resized image and ``crops`` crops drawn from its index (so a process that
    makes image 5 crops it as any other process would), all as 8-bit images; references too small for a crop are
    enlarged first."""
    net = TinyInception()
    fx = evaluation.FeatureExtractor(net, None, resize=12, crop_size=16, crops_per_image=3)
    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))
    f5, f5_again, f6 = fx.generated(5, image, "p"), fx.generated(5, image[None], "p"), fx.generated(6, image, "p")
    assert f5.pool_r.shape == (1, 6) and f5.logits_r.shape == (1, 5) and f5.pool_c.shape == (3, 6) and f5.clip is None
    assert torch.equal(f5.pool_c, f5_again.pool_c) and not torch.equal(f5.pool_c, f6.pool_c)
    assert torch.equal(f5.pool_r, f6.pool_r)  # the whole image does not depend on the index
    u8 = evaluation.to_uint8(image[None])[0]
    expected = net(evaluation.resize_square(u8, 12)[None])[0]
    assert torch.equal(f5.pool_r, expected)
    assert set(net.seen) == {(1, 3, 12, 12), (3, 3, 12, 12)}
    small = torch.randint(0, 256, (3, 10, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ref = fx.reference(0, small)
    assert ref.pool_c.shape == (3, 6)  # enlarged to 16 x 22, then cropped
    without_crops = evaluation.FeatureExtractor(net, None, resize=12, crop_size=16, crops_per_image=0)
    assert without_crops.generated(0, image, "p").pool_c is None


@needs_extra
def test_compute_metrics_names_what_the_features_allow():
    def feats(seed, n, crops=True, clip=None):
        g = torch.Generator().manual_seed(seed)
        return [evaluation.ImageFeatures(pool_r=torch.randn(1, 4, generator=g), logits_r=torch.randn(1, 3, generator=g),
                                         pool_c=torch.randn(2, 4, generator=g) if crops else None,
                                         logits_c=torch.randn(2, 3, generator=g) if crops else None,
                                         clip=clip) for _ in range(n)]  # fmt: skip

    fake, real = feats(0, 6, clip=30.0), feats(1, 5)
    kw = dict(kid_subsets=4, kid_subset_size=1000, is_splits=10)
    out = evaluation.compute_metrics(fake, real, **kw)
    assert list(out) == list(evaluation.METRICS) and out[evaluation.CLIP] == 30.0
    pool = torch.cat([f.pool_r for f in fake])
    assert out[evaluation.FID_R] == evaluation.frechet_distance(pool, torch.cat([f.pool_r for f in real]))
    assert out == evaluation.compute_metrics(fake, real, **kw)  # seeded: the same numbers again
    assert set(evaluation.compute_metrics(fake, None, **kw)) == {evaluation.IS_R, evaluation.IS_C, evaluation.CLIP}
    no_crops = evaluation.compute_metrics(feats(0, 6, crops=False), feats(1, 5, crops=False), **kw)
    assert set(no_crops) == {evaluation.FID_R, evaluation.KID_R, evaluation.IS_R}


@needs_extra
@pytest.mark.slow  # builds, saves (96 MB) and loads the full Inception-v3: ~6 s idle, a minute on a loaded CPU
def test_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """torch-fidelity's FID Inception from a weights file (random weights saved here: nothing is downloaded) and
    from a directory holding it; its features are the network's own on the resized 8-bit image."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as patch:  # build a random network without any weights to load
        patch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    (tmp_path / "inception").mkdir()
    file = tmp_path / "inception" / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_net.state_dict(), file)
    net = evaluation.load_inception(str(tmp_path / "inception"))
    fx = evaluation.FeatureExtractor(net, None, resize=299, crop_size=64, crops_per_image=0)
    image = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0))
    feats = fx.generated(0, image, "")
    pool, logits = random_net(evaluation.resize_square(evaluation.to_uint8(image[None])[0], 299)[None])
    assert feats.pool_r.shape == (1, 2048) and feats.logits_r.shape == (1, 1008)
    assert torch.equal(feats.pool_r, pool) and torch.equal(feats.logits_r, logits)
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(evaluation.UserError, match="not torch-fidelity's FID Inception"):
        evaluation.load_inception(str(tmp_path / "wrong.pth"))


# ----------------------------------------------------------------------------------------------------
# Configuration and the paper preset


def test_a_missing_extra_is_a_user_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import fails as if not installed
    with pytest.raises(evaluation.MissingEvalExtra, match=r"\[eval\].*pip install -e \"\.\[eval\]\"") as err:
        evaluation.require_extra()
    assert "torchmetrics" in str(err.value) and isinstance(err.value, evaluation.UserError)


def _paper(tmp_path, *sets: str) -> int:
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path / "results"),
            "--device", "cpu", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    return main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv)


@pytest.fixture
def paths(tmp_path):
    """An SDXL folder and metric paths that pass the checks (nothing is loaded from them in these tests)."""
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text("{}")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    refs = tmp_path / "refs"
    refs.mkdir()
    from PIL import Image

    g = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 48), (60, 44)]):
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(refs / f"ref{i}.png")
    (refs / "notes.txt").write_text("not an image")
    return {"sdxl": sdxl, "inception": weights, "clip": clip, "refs": refs}


def test_evaluation_settings_are_checked_before_loading(tmp_path, capsys, monkeypatch, paths):
    from diffusehigh import pipeline as pipeline_lib

    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", lambda *a, **k: pytest.fail("loaded before checking"))
    sdxl = f"sdxl_path={paths['sdxl']}"
    one_ref = tmp_path / "one_ref"
    one_ref.mkdir()
    (one_ref / "a.png").write_bytes((paths["refs"] / "ref0.png").read_bytes())
    cases = [
        ((sdxl, f"reference_images_path={paths['refs']}"), "reference_images_path needs inception_path"),
        ((sdxl, "inception_path=/nonexistent/w.pth"), "inception_path"),
        ((sdxl, f"clip_path={tmp_path}"), "has no config.json"),
        ((sdxl, f"inception_path={paths['inception']}", f"reference_images_path={one_ref}"), "at least 2"),
        ((sdxl, f"inception_path={paths['inception']}", "metrics.patch_size=8192"), "metrics.patch_size"),
        ((sdxl, "metrics.crops_per_image=-1"), "metrics.crops_per_image must be >= 0"),
        ((sdxl, "metrics.kid_subset_size=1"), "metrics.kid_subset_size must be >= 2"),
    ]
    for sets, expected in cases:
        assert _paper(tmp_path, *sets) == 2, sets
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (sets, err)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    assert _paper(tmp_path, sdxl, f"clip_path={paths['clip']}") == 2
    err = capsys.readouterr().err.strip()
    assert "torch-fidelity" in err and "[eval]" in err, err


def test_the_paper_preset_runs_the_released_4096_schedule():
    """1024^2 base -> 2048 -> 3072 -> 4096 (x2, x1.5, x1.33 per stage), as released; the 2K setting of the README."""
    cfg = config.paper()
    assert cfg.model.resolution == 1024 and reproduce.stage_targets(cfg) == [2048, 3072, 4096]
    ratios = np.array([2048, 3072, 4096]) / np.array([1024, 2048, 3072])
    assert np.allclose(ratios, [2.0, 1.5, 4 / 3])
    from common.config import override

    assert reproduce.stage_targets(override(cfg, ["stages.scale_factors=(1.5, 2.0)"])) == [1536, 2048]


@needs_extra
@pytest.mark.e2e
def test_paper_preset_evaluates_on_a_tiny_sdxl(tmp_path, monkeypatch, paths):
    """run_sdxl with the evaluation on: a tiny random SDXL (two prompts), the tiny Inception stand-in, a tiny CLIP
    from a local folder, three reference images; one table row per evaluated setting (every stage and bicubic at the
    final size) and the references' own IS."""
    from diffusehigh import pipeline as pipeline_lib

    from .tiny_sdxl import WithEmbeddings

    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", lambda path, dtype, device: WithEmbeddings())
    monkeypatch.setattr(evaluation, "load_inception", lambda path, device: TinyInception())
    clip = save_tiny_clip(tmp_path / "tiny-clip")
    sets = [f"sdxl_path={paths['sdxl']}", "model.resolution=32", "model.num_inference_steps=4", "model.dtype=float32",
            "model.vae_tiling=False", "stages.scale_factors=(1.5, 2.0)", "stages.stage_steps=2", "stages.dwt_steps=1",
            "num_samples=2", "save_images=0", "ablation.baselines=('bicubic',)", "metrics.patch_size=32",
            "metrics.fid_resize=16", "metrics.crops_per_image=2", f"inception_path={paths['inception']}",
            f"clip_path={clip}", f"reference_images_path={paths['refs']}"]  # fmt: skip
    assert _paper(tmp_path, *sets) == 0
    record = load_record(tmp_path / "results" / "diffusehigh" / "paper")
    table = record.tables()[reproduce.eval_table(32, 64)]
    rows = {}
    for m in table:
        rows.setdefault(m.setting, set()).add(m.metric)
    assert set(rows) == {"DiffuseHigh, stage 48", "DiffuseHigh, stage 64", f"{reproduce.BICUBIC}, 64",
                         reproduce.EVAL_REAL}  # fmt: skip
    assert rows["DiffuseHigh, stage 64"] == set(evaluation.METRICS)
    assert rows[reproduce.EVAL_REAL] == {evaluation.IS_R, evaluation.IS_C}
    assert record.extra["evaluation"]["reference_images"] == 3 and record.extra["stage_targets"] == [48, 64]
    assert "measured in" in record.claims[0].our_evidence
