"""What scripts/paper_tables.py knows about each published table besides its numbers: metric
definitions, row facts, caveats. Numbers never appear here: every figure in results/paper/ is
parsed from the fetched source, and every setting read from RTDMD's code is a `Cfg` reference
that the builder reads from the pinned commit (`{cfg:PATH:KEY}` does the same inside a note).

Sources of the definitions: RTDMD's evaluation code at the pinned commit, as mapped column by
column in docs/rtdmd_protocol.md (and ../notes/issue12_spec.md sections 4, 8, 12, 13).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cfg:
    """A value read from a YAML file of the source repository at the pinned commit."""

    path: str
    key: str  # dotted, e.g. "model.image_resolution"


RTDMD_REPO = "Harahan/RTDMD"
RTDMD_README = "README.md"
READ_WITH = "fetch github:Harahan/RTDMD (search/fetch tools), then git show <commit>:<file>"
INFER_SD3M = "configs/inference/sd3m.yaml"
INFER_FLUX2_4B = "configs/inference/flux2_4b.yaml"
TRAIN_FLUX2_4B = "configs/rtdmd/flux2_4b.yaml"
TRAIN_FLUX2_9B = "configs/rtdmd/flux2_9b.yaml"
DISTILLED_LOOP = ("rtdmd/inference.py", "guidance_scale=1.0")  # the literal in _generate_distilled

LINES_NOTE = ("one image per line (a prompt repeated in the file is generated and scored again), mean over images; "
              "RTDMD's released inference script keeps the first {cfg:%s:num_media_images} lines "
              "(num_media_images), its training-time evaluation reads the whole file" % INFER_SD3M)
LINES_UNKNOWN = ("the README does not say whether the table came from the inference script (first lines only) or "
                 "from the training-time evaluation (whole file): both suites are in computed_by")

# One entry per column header of RTDMD's tables (the arrow stripped). `dataset` is the prompt file under
# RTDMD's dataset/ that its evaluation routes the metric to (configs/inference/*.yaml reward_dataset_map);
# `column`/`metric` name this project's protocol suite (suites/rtdmd_protocol.py) and its result key.
RTDMD_COLUMNS: dict[str, dict] = {
    "CLIPScore": dict(
        key="clipscore", dataset="drawbench/test.txt", column="drawbench", metric="clipscore",
        name="CLIPScore (RTDMD's evaluation)", variant="clipscore-vitl14-raw-cosine",
        definition=("cosine similarity of image and text embeddings of transformers' CLIP ViT-L/14 "
                    "(openai/clip-vit-large-patch14), fp32, computed as logits_per_image / 100; image = the uint8 "
                    "decode (rounded in bf16), torchvision bilinear Resize 224 and CenterCrop on the tensor; text "
                    "padded/truncated to 77 tokens"),
        scale="raw cosine; not x100, not torchmetrics' max(100 cos, 0), not DMD2's ViT-g-14 cosine",
        certainty="code", basis="rtdmd/rewards/clip_scorer.py through multi_scorer.clip_score (docs/rtdmd_protocol.md)"),
    "Aesthetic": dict(
        key="aesthetic", dataset="drawbench/test.txt", column="drawbench", metric="aesthetic",
        name="LAION aesthetic predictor v2", variant="laion-aesthetic-v2-vitl14",
        definition=("LAION improved-aesthetic-predictor MLP (sac+logos+ava1-l14-linearMSE.pth) on the L2-normalised "
                    "CLIP ViT-L/14 image embedding, fp32; pixels through CLIPProcessor (PIL bicubic resize, floor "
                    "centre crop)"),
        scale="the predictor's rating scale (LAION's 1-10 ratings)",
        certainty="code", basis="rtdmd/rewards/aesthetic_scorer.py through multi_scorer.aesthetic_score"),
    "PickScore": dict(
        key="pickscore", dataset="drawbench/test.txt", column="drawbench", metric="pickscore",
        name="PickScore v1", variant="pickscore-v1-raw",
        definition=("exp(logit_scale) * cos(text, image) of yuvalkirstain/PickScore_v1 with the "
                    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K processor, fp32"),
        scale=("raw, not /26: RTDMD's published scorer divides by 26 for every caller (its training reward scale), so "
               "the printed values are 26 x what that code prints, or came from other code"),
        certainty="inferred",
        basis=("model and pipeline read in rtdmd/rewards/pickscore_scorer.py; the raw scale is inferred from the "
               "magnitude of the printed values, since the code's output is /26")),
    "HPSv2": dict(
        key="hpsv2", dataset="drawbench/test.txt", column="drawbench", metric="hpsv21",
        name="HPSv2.1 (the column says HPSv2)", variant="hpsv2.1-cosine",
        definition=("cosine of normalised image and text features of open_clip ViT-H-14 with HPS_v2.1_compressed.pt "
                    "(xswu/HPSv2), fp32 without autocast; tensor bicubic resize of the longer side to 224, zero "
                    "padding, no clamp"),
        scale="raw cosine, not the HPSv2 benchmark's x100; v2.0 and v2.1 are not comparable",
        certainty="code", basis="rtdmd/rewards/hpsv2_scorer.py loads the v2.1 checkpoint (docs/rtdmd_protocol.md)"),
    "ImageReward": dict(
        key="imagereward", dataset="drawbench/test.txt", column="drawbench", metric="imagereward",
        name="ImageReward v1.0", variant="imagereward-v1.0",
        definition=("THUDM ImageReward-v1.0 (BLIP + MLP head), the package's normalised reward per (prompt, image) "
                    "pair, PIL transform, prompt truncated to 35 tokens"),
        scale="the package's reward, standardised by its fixed mean and std",
        certainty="code", basis="rtdmd/rewards/imagereward_scorer.py (inference_rank, diagonal kept)"),
    "HPSv3": dict(
        key="hpsv3", dataset="hpsv3/test.txt", column="hpsv3", metric="hpsv3",
        name="HPSv3", variant="hpsv3-mu",
        definition=("mean of mu (output 0 of the reward head at the <|Reward|> token) of MizzenAI/HPSv3 on "
                    "Qwen2-VL-7B-Instruct, bf16 backbone, fp32 head, the package's prompt template, 448 x 448 image "
                    "budget"),
        scale="the reward model's mu, unbounded (no rescaling)",
        certainty="code", basis="rtdmd/rewards/hpsv3_scorer.py with the hpsv3 1.0.0 package (docs/rtdmd_protocol.md)"),
    "GenEval": dict(
        key="geneval", dataset="geneval/test_metadata.jsonl", column="geneval", metric="geneval_rtdmd",
        name="GenEval partial credit (RTDMD's form)", variant="geneval-rtdmd-partial-credit",
        definition=("RTDMD's per-image partial credit on GenEval's rules (exact counts, exclude clauses ignored), "
                    "averaged over images; detector Mask2Former (mmdet 2.28.2) fed RGB where it expects BGR, colour "
                    "CLIP ViT-L-14 'openai' with plain GELU; not GenEval's accuracy"),
        scale="a fraction in [0, 1]",
        certainty="inferred",
        basis=("RTDMD's GenEval scorer reports several keys (geneval = partial credit, accuracy, strict_accuracy, "
               "per-tag); the column is most likely the geneval key (../notes/issue12_spec.md sections 8, 12)"),
        alternatives=("accuracy", "strict_accuracy")),
    "GenEval2": dict(
        key="geneval2", dataset="geneval2/test.jsonl", column="geneval2", metric="geneval2",
        name="GenEval2 Soft-TIFA (RTDMD's form)", variant="geneval2-rtdmd-fp16-fraction",
        definition=("Soft-TIFA: per prompt the geometric mean over its atoms of Qwen3-VL-8B-Instruct's first-token "
                    "probability of the expected answer, judge in fp16, mean over prompts"),
        scale="a fraction in [0, 1] (official GenEval2 reports x100 with a bf16 judge)",
        certainty="code", basis="rtdmd/rewards/geneval2_scorer.py through multi_scorer.geneval2_score"),
    "OCR": dict(
        key="ocr", dataset="ocr/test.txt", column="ocr", metric="ocr",
        name="OCR accuracy (RTDMD's form)", variant="ocr-paddleocr2.9.1-edit-fraction",
        definition=("1 - min(Levenshtein, len) / len between the first quoted span of the prompt and PaddleOCR 2.9.1's "
                    "text (English PP-OCRv3 detector, PP-OCRv4 recogniser, CPU, fed an RGB array where it expects BGR)"),
        scale="a fraction in [0, 1]",
        certainty="code", basis="rtdmd/rewards/ocr_scorer.py through multi_scorer (docs/rtdmd_protocol.md)"),
}

# Literals the builder finds in RTDMD's code at the pinned commit before it writes a column's definition
# (a cheap guard that the definitions above still describe the code).
CODE_FACTS: dict[str, list[tuple[str, str]]] = {
    "CLIPScore": [("rtdmd/rewards/clip_scorer.py", "openai/clip-vit-large-patch14"),
                  ("rtdmd/rewards/clip_scorer.py", "logits_per_image.diagonal() / 100")],
    "Aesthetic": [("rtdmd/rewards/aesthetic_scorer.py", "sac+logos+ava1-l14-linearMSE.pth")],
    "PickScore": [("rtdmd/rewards/pickscore_scorer.py", "scores / 26")],
    "HPSv2": [("rtdmd/rewards/hpsv2_scorer.py", "HPS_v2.1_compressed.pt")],
    "ImageReward": [("rtdmd/rewards/imagereward_scorer.py", '"ImageReward-v1.0"')],
    "HPSv3": [("rtdmd/rewards/hpsv3_scorer.py", "MizzenAI/HPSv3"), ("requirements.txt", "hpsv3==1.0.0")],
    "GenEval": [("rtdmd/rewards/geneval_scorer.py", '"score": score'),
                ("rtdmd/rewards/multi_scorer.py", 'score_details["accuracy"] = rewards')],
    "GenEval2": [("rtdmd/rewards/geneval2_scorer.py", "Qwen/Qwen3-VL-8B-Instruct"),
                 ("rtdmd/rewards/multi_scorer.py", 'dtype=torch.float16, aggregation="gm"')],
    "OCR": [("rtdmd/rewards/multi_scorer.py", "OcrScorer()"), ("requirements.txt", "paddleocr==2.9.1")],
}

THIRD_PARTY_SCORED = ("the README does not say whether RTDMD generated this row's images and scored them with its own "
                      "evaluation, or copied published figures")
SETTINGS_NOT_STATED = "not stated in the README (its teacher and third-party rows' settings are not in RTDMD's code)"
NOT_IN_PROJECT = "not a method of this project"
BASE_ITSELF = "the base itself, not a method: this project evaluates it with `rtdmd-bench eval --base {}`"


def basis(kind: str, note: str) -> dict:
    return {"kind": kind, "note": note}


STATED_NFE = basis("stated", "the table's NFE column")
TABLE_BASE = basis("stated", "the table is RTDMD's table for this base")


def teacher_row(method: str, base: str, base_key: str | None, key_note: str, guidance_note: str) -> dict:
    return dict(method=method, role="teacher", third_party=True, base=base, base_key=base_key, method_key=None,
                guidance=None, resolution=None, scored_with_table_protocol=None,
                basis={"base": basis("stated", "the row's label"), **({"base_key": basis("inferred", key_note)} if base_key else {}),
                       "nfe": STATED_NFE},
                unknown={"method_key": BASE_ITSELF.format(base_key) if base_key else NOT_IN_PROJECT,
                         "guidance": guidance_note, "resolution": SETTINGS_NOT_STATED,
                         "scored_with_table_protocol": THIRD_PARTY_SCORED, **({} if base_key else {"base_key": "no such base in this project"})},
                provenance="teacher (multi-step) row of RTDMD's README table; the README: 'the teacher uses its standard multi-step setting'")


def baseline_row(method: str, base: str, base_key: str | None, key_note: str, method_key: str | None = None,
                 method_note: str = NOT_IN_PROJECT, provenance: str = "third-party few-step model, figures as printed in RTDMD's README") -> dict:
    unknown = {"guidance": SETTINGS_NOT_STATED, "resolution": SETTINGS_NOT_STATED,
               "scored_with_table_protocol": THIRD_PARTY_SCORED}
    row_basis = {"base": basis("stated", "the row's label or the table's base"), "nfe": STATED_NFE}
    if base_key:
        row_basis["base_key"] = basis("inferred", key_note)
    else:
        unknown["base_key"] = "no such base in this project"
    if method_key:
        row_basis["method_key"] = basis("inferred", method_note)
    else:
        unknown["method_key"] = method_note
    return dict(method=method, role="baseline", third_party=True, base=base, base_key=base_key, method_key=method_key,
                guidance=None, resolution=None, scored_with_table_protocol=None, basis=row_basis, unknown=unknown,
                provenance=provenance)


def rtdmd_row(base: str, base_key: str, key_note: str, infer_cfg: str, resolution_basis: dict) -> dict:
    return dict(
        method="RTDMD", role="method", third_party=False, base=base, base_key=base_key, method_key="rtdmd",
        guidance=Cfg(infer_cfg, "guidance_scale"), resolution=Cfg(infer_cfg, "image_resolution"),
        scored_with_table_protocol=True,
        basis={"base": TABLE_BASE, "base_key": basis("code", key_note),
               "method_key": basis("inferred", "this project's implementation of RTDMD from its official code (docs/parity.md)"),
               "nfe": basis("stated", "the table's NFE column; equals num_steps of %s" % infer_cfg),
               "guidance": basis("code", "rtdmd/inference.py's distilled loop passes guidance_scale=1.0 whatever the config; "
                                 "%s guidance_scale; README: 4-step samples without classifier-free guidance" % infer_cfg),
               "resolution": resolution_basis,
               "scored_with_table_protocol": basis("inferred", "README: the pinned environment is 'what the paper numbers "
                                                   "were produced with'; its evaluation is scripts/inference.sh")},
        unknown={}, provenance="the paper's own method, evaluated by RTDMD's code (README)")


SD3_KEY = ("RTDMD's SD3-M configs load stabilityai/stable-diffusion-3-medium-diffusers (%s pretrained_path), "
           "the hub id of this project's sd3 base" % INFER_SD3M)
FLUX4_TEACHER = ("RTDMD's FLUX.2 4B teacher is black-forest-labs/FLUX.2-klein-base-4B (%s model.teacher_init_path), "
                 "this project's flux2-4b teacher; that the row is that checkpoint is inferred" % TRAIN_FLUX2_4B)
FLUX9_TEACHER = ("RTDMD's FLUX.2 9B configs use black-forest-labs/FLUX.2-klein-base-9B as pretrained model (%s), "
                 "this project's flux2-9b teacher; that the row is that checkpoint is inferred" % TRAIN_FLUX2_9B)
FLUX4_FEW = ("the 4-step FLUX.2 [klein] 4B release (black-forest-labs/FLUX.2-klein-4B) is RTDMD's generator "
             "initialisation (%s model.generator_init_path) and this project's flux2-4b generator; inferred" % TRAIN_FLUX2_4B)
FLUX9_FEW = ("the 4-step FLUX.2 [klein] 9B release (black-forest-labs/FLUX.2-klein-9B, %s "
             "model.generator_init_path), this project's flux2-9b generator; inferred" % TRAIN_FLUX2_9B)
FLUX4_RTDMD = ("%s model.generator_init_path black-forest-labs/FLUX.2-klein-4B, teacher FLUX.2-klein-base-4B: "
               "this project's flux2-4b" % TRAIN_FLUX2_4B)

# Row facts by the row's label as printed (markup removed). Every printed row must be here and vice versa.
RTDMD_ROWS: dict[str, dict] = {
    "SD3-M teacher (w/ CFG)": teacher_row(
        "SD3-M", "SD3-M", "sd3", SD3_KEY,
        "with CFG (the label); the scale is not stated, nor whether the 100 NFE count both CFG passes"),
    "GDMD": baseline_row(
        "GDMD", "SD3-M", "sd3", "the table is RTDMD's SD3-M table", "gdmd",
        "this project's gdmd is its own definition from GDMD's abstract (../shared/METHODS.md section 6), not GDMD's code"),
    "R_dm": baseline_row(
        "R_dm", "SD3-M", "sd3", "the table is RTDMD's SD3-M table", None,
        "R_dm has two variants (GNDM, GNDMR: this project's gndm and gndmr); which one this row is, is not stated"),
    "RTDMD (Ours)": rtdmd_row(
        "SD3-M", "sd3", SD3_KEY, INFER_SD3M,
        basis("code", "%s image_resolution; SD3-M also trains and is evaluated during training at that size "
              "(configs/rtdmd/sd3m.yaml)" % INFER_SD3M)),
    "FLUX.2 4B teacher": teacher_row("FLUX.2 4B", "FLUX.2 4B", "flux2-4b", FLUX4_TEACHER, SETTINGS_NOT_STATED),
    "FLUX.2 9B teacher": teacher_row("FLUX.2 9B", "FLUX.2 9B", "flux2-9b", FLUX9_TEACHER, SETTINGS_NOT_STATED),
    "Z-Image 6B": teacher_row("Z-Image", "Z-Image 6B", None, "", SETTINGS_NOT_STATED)
    | {"role": "baseline", "provenance": "third-party multi-step model (50 NFE), figures as printed in RTDMD's README"},
    "Z-Image-Turbo 6B": baseline_row("Z-Image-Turbo", "Z-Image-Turbo 6B", None, ""),
    "FLUX.2 4B": baseline_row("FLUX.2 4B (4-step release)", "FLUX.2 4B", "flux2-4b", FLUX4_FEW),
    "FLUX.2 9B": baseline_row("FLUX.2 9B (4-step release)", "FLUX.2 9B", "flux2-9b", FLUX9_FEW),
    "Z-Image 6B w/ TDM-R1": baseline_row("TDM-R1", "Z-Image 6B", None, ""),
    "FLUX.2 4B w/ RTDMD (Ours)": rtdmd_row(
        "FLUX.2 4B", "flux2-4b", FLUX4_RTDMD, INFER_FLUX2_4B,
        basis("inferred", "%s image_resolution (the README's evaluation command); RTDMD's training-time evaluation "
              "renders at the training size, {cfg:%s:model.image_resolution} px for FLUX.2 4B: if the table came from "
              "it, that size" % (INFER_FLUX2_4B, TRAIN_FLUX2_4B))),
}

COMMON_CAVEATS = [
    "The README names this the paper's table; the paper itself was not read (not available here), so whether its "
    "table has the same numbers or more rows is unverified.",
    "Only RTDMD's own row is known to come from RTDMD's evaluation code. For every other row the README does not say "
    "whether RTDMD generated and scored the images itself or copied published figures, nor the sampler, steps, "
    "guidance scale or resolution (scored_with_table_protocol and those settings are null).",
    "Column definitions are those of RTDMD's evaluation code at the pinned commit (docs/rtdmd_protocol.md): HPSv2 is "
    "HPSv2.1 as a raw cosine, CLIPScore a raw cosine, PickScore raw although RTDMD's published scorer prints /26.",
    "Lines: the first {cfg:%s:num_media_images} lines of each prompt file (released inference script) or whole files "
    "(training-time evaluation)? Not stated; both suites are in computed_by. With the short prefix a column's "
    "standard error is several times larger." % INFER_SD3M,
    "RTDMD's images come from one CUDA noise stream per rank (seed + rank), so they depend on the GPU count and batch "
    "size; this project's protocol suites draw each line's noise from (seed, line, image): numbers agree in "
    "distribution, not image by image.",
]

RTDMD_TABLES: dict[str, dict] = {
    "rtdmd-sd3m-table1": dict(
        title="RTDMD, SD3-M (README 'SD3-M (paper Table 1)')", heading="SD3-M (paper Table 1)", paper_table="Table 1",
        infer_cfg=INFER_SD3M,
        caveats=COMMON_CAVEATS + [
            "The README says the paper has the full baseline table; this README table is a subset.",
            "The teacher row's 100 NFE 'w/ CFG': CFG scale, steps and whether both CFG passes are counted are not stated.",
            "R_dm: the variant (GNDM or GNDMR) is not stated. Its HPSv2 here is a raw HPSv2.1 cosine; the R_dm "
            "abstract's 'peak HPS' (rdm-gndm-abstract.json) is on a x100 scale with unstated version and protocol, "
            "and differs from this value even after x100: do not compare them.",
            "Emphasis (bold = best, underline = second) is as printed; here the teacher row is not ranked (R_dm's "
            "CLIPScore is underlined although the teacher ties it).",
        ]),
    "rtdmd-flux2-4b-table2": dict(
        title="RTDMD, FLUX.2 4B (README 'FLUX.2 4B (paper Table 2)')", heading="FLUX.2 4B (paper Table 2)",
        paper_table="Table 2", infer_cfg=INFER_FLUX2_4B,
        caveats=COMMON_CAVEATS + [
            "The GenEval column is RTDMD's partial credit (most likely; `accuracy` is listed as an alternative), not "
            "GenEval's accuracy; if any third-party row were copied from another paper it would be a different metric. "
            "The project's suite uses transformers' Mask2Former, not RTDMD's mmdet 2.28.2 checkpoint.",
            "GenEval2 is a fraction from an fp16 judge (official GenEval2: x100, bf16); OCR is PaddleOCR 2.9.1 run as "
            "RTDMD runs it.",
            "RTDMD's row: 1024 px per the inference config; RTDMD's training-time evaluation renders FLUX.2 4B at "
            "{cfg:%s:model.image_resolution} px, and the README does not say which produced the table." % TRAIN_FLUX2_4B,
            "Teacher rows (50 NFE) and the Z-Image rows: steps, guidance, sampler and resolution are not stated.",
            "Emphasis is as printed; here teacher rows are ranked too (the FLUX.2 9B teacher's CLIPScore is underlined).",
        ]),
}

# Abstract-level sources: figures parsed from the abstract paragraph of a copy in ../shared/seeds/.
# `figures`: metric key or claim id -> regex whose group 1 is the printed figure; the builder also
# checks that the abstract states no other number than `expected_numbers` lists by role.
ABSTRACT_UNKNOWN = "not stated in the abstract (the paper body was not read for this file)"
ABSTRACT_ROW_UNKNOWN = {"base": ABSTRACT_UNKNOWN, "base_key": ABSTRACT_UNKNOWN, "nfe": ABSTRACT_UNKNOWN,
                        "guidance": ABSTRACT_UNKNOWN, "resolution": ABSTRACT_UNKNOWN,
                        "scored_with_table_protocol": "the abstract states no evaluation protocol"}


def abstract_metric(column: str, name: str, higher: bool | None, higher_note: str, definition: str, scale: str,
                    computed_note: str) -> dict:
    unknown = {"variant": "the definition and scale are not stated in the abstract", "prompts": ABSTRACT_UNKNOWN,
               "images_per_prompt": ABSTRACT_UNKNOWN, "seed": ABSTRACT_UNKNOWN, "computed_by": computed_note}
    if higher is None:
        unknown["higher_is_better"] = higher_note
    return dict(column=column, name=name, variant=None, higher_is_better=higher, definition=definition, scale=scale,
                certainty="unknown", basis=f"abstract only; direction: {higher_note}", prompts=None, images_per_prompt=None, seed=None,
                computed_by=None, alternatives=[], unknown=unknown)


NO_SUITE = "no suite of this project is known to compute it under this paper's (unstated) protocol"

ABSTRACTS: dict[str, dict] = {
    "rdm-gndm-abstract": dict(
        seed_file="gndm_abstract.txt", url="https://arxiv.org/abs/2603.28460", arxiv="2603.28460",
        title="R_dm: Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation (GNDM, GNDMR)",
        paper_title="R_dm: Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation",
        identified_by=("the seed copy has no title; its abstract (wording and the three figures) matches arXiv "
                       "2603.28460 as listed on arxiv.org/html/2603.28460v2 and paperbrief.ai/paper/2603.28460, "
                       "found with the search tool on the read date"),
        metrics={
            "fid": abstract_metric("FID", "FID (Frechet Inception Distance)", False,
                                   "FID is a distance: lower is better, and the abstract calls the reduction an improvement",
                                   "FID; reference set, image count, prompts, resolution and feature extractor are not stated",
                                   "unknown", NO_SUITE),
            "hps": abstract_metric("HPS", "HPS (Human Preference Score)", True,
                                   "the abstract presents a higher ('peak') HPS as the improvement",
                                   "HPS; whether HPSv2 or HPSv2.1, and the prompt set, are not stated",
                                   "inferred x100: the printed value is far above 1, which a cosine reaches only on the "
                                   "x100 scale of the HPSv2 benchmark's convention",
                                   NO_SUITE + "; this project's hpsv2 suite is the HPSv2 benchmark (x100, v2.1 by default), "
                                   "comparable only once the paper's version and prompts are known"),
            "fid_sd": abstract_metric("FID-SD", "FID-SD", False,
                                      "the abstract calls the value 'low' as an achievement (inferred: lower is better)",
                                      "not defined in the abstract; the name suggests FID against samples of an SD teacher",
                                      "unknown",
                                      NO_SUITE + "; this project's fid-t suite is its own definition of FID against the "
                                      "teacher's samples (../shared/PROTOCOLS.md, FID)"),
        },
        rows={"GNDMR": dict(method="GNDMR", role="method", third_party=False, base=None, base_key=None,
                            method_key="gndmr", nfe=None, guidance=None, resolution=None,
                            scored_with_table_protocol=None, figures={"hps": r"peak HPS of ([0-9.]+)",
                                                                      "fid_sd": r"FID-SD of ([0-9.]+)"},
                            basis={"method_key": basis("inferred", "this project's gndmr is its own definition from the "
                                                       "abstract (../shared/METHODS.md section 7), not R_dm's code")},
                            unknown=ABSTRACT_ROW_UNKNOWN,
                            provenance="figures stated in the abstract; 'peak' HPS may be the best over checkpoints or "
                                       "settings (not stated)")},
        claims=[
            dict(id="gndm-fid-vs-dmd", kind="difference", figure=r"reducing the FID by ([0-9.]+)", sign=-1,
                 statement="GNDM's FID is lower than vanilla DMD's by the printed amount (value = GNDM - DMD)",
                 method="GNDM", relative_to=["vanilla DMD"], metrics=["fid"], checkable=False),
            dict(id="gndmr-balance", kind="qualitative", figure=None,
                 statement="GNDMR balances aesthetic quality and fidelity better than existing baselines",
                 method="GNDMR", relative_to=["existing baselines"], metrics=["hps", "fid_sd"], checkable=False),
        ],
        caveats=[
            "Abstract-level: base model, steps, resolution, prompt sets, the FID reference set and the HPS version are "
            "not stated in the abstract; the paper body was not read for this file.",
            "'Peak HPS' may be the best value over training checkpoints or settings; 'FID-SD' is not defined in the abstract.",
            "The seed copy (../shared/seeds/gndm_abstract.txt) has a third-party 'AI summary' before the abstract with "
            "the same figures; only the abstract paragraph is parsed. Some symbols in the copy are mis-decoded; figures "
            "are unaffected.",
            "RTDMD's SD3-M table has an R_dm row on RTDMD's own scales (rtdmd-sd3m-table1.json); not comparable with "
            "these figures.",
        ]),
    "gdmd-abstract": dict(
        seed_file="gdmd_abstract.txt", url="https://arxiv.org/abs/2604.19009", arxiv="2604.19009",
        title="GDMD: Guiding Distribution Matching Distillation with Gradient-Based Reinforcement Learning (abstract)",
        paper_title="Guiding Distribution Matching Distillation with Gradient-Based Reinforcement Learning",
        identified_by=("the seed copy is a pith.science page with this title; pith.science/paper/2604.19009 (found with "
                       "the search tool on the read date) gives arXiv 2604.19009 for it"),
        metrics={
            "geneval": abstract_metric("GenEval", "GenEval (variant not stated)", True,
                                       "the abstract presents exceeding DMDR on GenEval as an improvement",
                                       "GenEval; whether official accuracy or another form, and the detector, are not stated",
                                       "unknown", NO_SUITE),
            "human_preference": abstract_metric("human-preference metrics", "human-preference metrics (unnamed)", True,
                                                "the abstract presents exceeding DMDR on them as an improvement",
                                                "which human-preference metrics is not stated", "unknown", NO_SUITE),
        },
        rows={},
        claims=[
            dict(id="gdmd-beats-teacher", kind="qualitative", figure=None,
                 statement="GDMD's 4-step models exceed the quality of their multi-step teacher",
                 method="GDMD (4-step)", relative_to=["its multi-step teacher"], metrics=[], checkable=False),
            dict(id="gdmd-beats-dmdr", kind="qualitative", figure=None,
                 statement="GDMD substantially exceeds earlier DMDR results on GenEval and human-preference metrics",
                 method="GDMD", relative_to=["DMDR"], metrics=["geneval", "human_preference"], checkable=False),
            dict(id="gdmd-sota", kind="qualitative", figure=None,
                 statement="GDMD sets a new state of the art for few-step generation",
                 method="GDMD", relative_to=["earlier few-step methods"], metrics=[], checkable=False),
        ],
        expected_numbers=["4"],  # "4-step": the abstract states no figure
        caveats=[
            "The abstract states no figure, only claims; nothing here can be compared numerically.",
            "The only GDMD numbers in results/paper/ are the GDMD row of RTDMD's SD3-M table (rtdmd-sd3m-table1.json), "
            "as printed by RTDMD.",
            "The seed copy (../shared/seeds/gdmd_abstract.txt) is a pith.science page; the arXiv id comes from that site.",
        ]),
}
