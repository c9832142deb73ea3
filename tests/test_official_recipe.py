"""The official SD3-M recipe, field by field, against the suite's defaults (METHODS.md section 9).

Two tables, one per official config file of the public repository Harahan/RTDMD:
`configs/cold_start/sd3m.yaml` (stage 1, AC-DMD) and `configs/rtdmd/sd3m.yaml` (stage 2). The
field names and values below were transcribed from those two files by hand; the test never reads
them (CI has no copy). Every leaf of each file appears exactly once (lists and mappings such as
`target_modules` or `reward_fn` count as one leaf), as one of:

- `at(official path, value, suite path, convert)`: the suite sets it. The test resolves
  `resolve_config("rtdmd", "sd3")` (defaults + recipe, no weights) and asserts that the value at
  the suite path equals `convert(official value)`. Official timesteps are on a 0..1000 scale, the
  suite's noise levels are sigma in [0, 1], hence `per_1000`.
- `why(official path, value, reason)`: the suite has no field for it; the reason says why (a
  logging name or file path, handled structurally by the code, set by the compute budget, not
  applicable, or a deliberate suite choice and how it differs).

Suite paths start at a section of the resolved config (`run`, `train`, `method`, `base`) or at
one of these roots:
    real.<field>     rtdmd_bench.bases.real_configs.REAL_BASES["sd3"] (official per-GPU batches, ...)
    plan.<i>.<field> rtdmd_bench.plan.RECIPES["rtdmd"][i] (stage cost model: 0 = AC-DMD, 1 = stage 2)
    adamw.eps        torch.optim.AdamW's default eps, which rtdmd_bench.core.optim.adamw leaves as is
    derived.<name>   values computed from several fields, see `derived_values`
Integer path parts index sequences (`method.stage1.betas.0`).

A suite default that differs from an official value the suite claims to follow is marked
`xfail=` (a strict xfail: fixing the default makes the test fail until the mark is removed).
The `acdmd` method's config is the `rtdmd` method's `stage1` config, so the cold-start table also
covers `resolve_config("acdmd", "sd3")` (asserted below).
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Callable, NamedTuple

import pytest
import torch

from rtdmd_bench.bases.diffusers_sd3 import SD3
from rtdmd_bench.bases.real_configs import REAL_BASES
from rtdmd_bench.config import resolve_config
from rtdmd_bench.core import optim
from rtdmd_bench.plan import RECIPES


class Row(NamedTuple):
    official: str  # dotted path of the leaf in the official YAML
    value: Any  # the official value (lists as tuples)
    suite: str | None  # dotted suite path, or None when `note` explains why there is none
    note: str = ""  # the reason (suite is None) or a short explanation of the mapping
    convert: Callable[[Any], Any] | None = None  # official value -> the suite's expected value
    xfail: str = ""  # non-empty: a known mismatch (strict xfail with this reason)


def at(official: str, value: Any, suite: str, convert: Callable[[Any], Any] | None = None,
       note: str = "", xfail: str = "") -> Row:
    return Row(official, value, suite, note, convert, xfail)


def why(official: str, value: Any, reason: str) -> Row:
    return Row(official, value, None, reason)


# ---- converters: official value -> the suite's value ------------------------------------------
SD3_SHIFT = 3.0  # SD3-M scheduler_config.json "shift"


def per_1000(timestep: float) -> float:
    """Official timesteps (0..1000) -> the suite's sigma scale (0..1)."""
    return timestep / 1000


def shifted_sigmas(step_list: tuple[int, ...]) -> list[float]:
    """Official denoising_step_list -> sigmas: t/1000 with SD3's constant shift 3."""
    return [SD3_SHIFT * (t / 1000) / (1 + (SD3_SHIFT - 1) * (t / 1000)) for t in step_list]


def weighting_of(clamp_max: float) -> str:
    """clamp(1/b^2, max=10) on the scale-out target equals the suite's 'official' min(1, 10 b^2)."""
    return "official" if clamp_max == 10.0 else f"no suite weighting clamps 1/b^2 at {clamp_max}"


def scale_out(move_scale_out: bool) -> str:
    """Scale-out target b v* with weight clamp(1/b^2): 'official'; unscaled target, weight 1: 'none'."""
    return "official" if move_scale_out else "none"


def is_bf16(dtype: str) -> bool:
    return dtype == "bf16"


def normalization(on: bool) -> str:
    return "mean_abs" if on else "none"


# Official reward name -> the suite's reward that computes the same score.
SUITE_REWARD = {"clipscore": "clipscore", "hpsv2": "hpsv21", "pickscore": "pickscore", "geneval": "geneval-partial"}


# ---- shared reasons ---------------------------------------------------------------------------
LOGGING = ("experiment-tracker setting: the suite writes metrics.jsonl in the run folder (means every train.log_every "
           "steps) and sends the same to train.log_with (off by default; wandb as the official runs, tensorboard or "
           "mlflow) under train.tracker_project / train.tracker_run_name, with sample grids every train.sample_every")
EVAL = ("in-training evaluation setting: the suite evaluates with its benchmark suites "
        "(rtdmd-bench evaluate, train.curve_points), not from the training config")
PATH = "a file path on the official machine: the suite takes paths on the command line"
BUDGET = "run length: the suite stops at the compute budget (train.budget), not at a step count"
NO_CFG_FAKE = "structural: the fake score is always evaluated without CFG (acdmd_terms.fake_velocity passes no cfg)"
CPS_ONLY = "structural: the suite's only few-step sampler is CPS (core/sampling.rollout, cps_mean_std)"
PLAIN_DMD_ONLY = ("read only by plain DMD (ac_dmd.enabled false); with AC-DMD every level is uniform in the "
                  "sub-interval [s + offset, 1]; plain DMD is the suite's dmd2 method, not this recipe")
LS_DMD_ONLY = ("read only by last_step_loss.loss_type 'dmd'; with 'ac_dmd' the levels are uniform in the "
               "sub-interval. The suite's dm_term=dmd ablation draws its last-step DM levels logit-normal(0, 1) "
               "in [t_min, t_max] (dm_t_dist='official'), N(0, 1) fixed")
LS_DMD_FAKE_ONLY = ("plain fake-score loss of last_step_loss.loss_type 'dmd' only (unused with 'ac_dmd'). "
                    "Suite choice in its dm_term=dmd ablation: uniform sigma in [t_min, t_max] = [0.02, 0.98] "
                    "instead of a uniform draw over the 1000 scheduler sigmas (indices 0..999)")
ONE_CONS_STEP = "structural: the suite's consistency term makes one CPS move (core/dmd.consistency_loss)"
TWO_SAMPLE = "structural: core/dmd.consistency_loss is the two-sample product estimator"
STOPGRAD = "structural: both CPS moves of the consistency term use detached velocity and samples"
NO_WARMUP = "the suite's AdamW runs at a constant learning rate (core/optim.adamw, no scheduler) = 0 warm-up steps"
LORA_ON = ("structural: the diffusers bases always train the student and the fake score as LoRA adapters "
           "on one frozen transformer (diffusers_common.AdapterSwitch)")
FSDP_PATCH = ("an FSDP wrapping detail of the official trainer; the suite's FSDP2 (train.parallel=fsdp) "
              "shards every transformer block and has no such switch")
STRATEGY = ("suite default train.parallel='ddp' (SD3-M with one shared frozen transformer fits a GPU); "
            "train.parallel=fsdp gives FSDP2")
SEED = "the suite's training seed is chosen per run (run.seed, default 0; comparisons use several seeds)"
OUTPUT = "run folders are runs/<run.run_id>/"
TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
           "attn.add_k_proj", "attn.add_v_proj", "attn.add_q_proj", "attn.to_add_out")
EVAL_REWARDS = {"imagereward": 1.0, "pickscore": 1.0, "aesthetic": 1.0, "clipscore": 1.0, "hpsv2": 1.0,
                "hpsv3": 1.0, "geneval": 1.0, "geneval2": 1.0, "ocr": 1.0}
EVAL_DATASETS = {"imagereward": "drawbench", "pickscore": "drawbench", "aesthetic": "drawbench",
                 "clipscore": "drawbench", "hpsv2": "drawbench", "hpsv3": "hpsv3", "geneval": "geneval",
                 "ocr": "ocr", "geneval2": "geneval2"}


def model_rows(load: dict[str, str] | None = None) -> list[Row]:
    """`model.*` of either file; `load` = {lora name: load_path} for stage 2 (with merge_before_training)."""
    rows = [
        at("model.pretrained_path", "stabilityai/stable-diffusion-3-medium-diffusers", "base.hub_id"),
        why("model.model_type", "sd35", "the official model-family switch (its SD3/SD3.5 adapter is called "
            "sd35); the suite picks the family by base name (run.base=sd3, bases/diffusers_sd3.SD3)"),
        at("model.gradient_checkpointing", True, "base.gradient_checkpointing"),
        at("model.dtype", "bf16", "base.weights_dtype"),
        at("model.image_resolution", 1024, "base.resolution"),
        why("model.fsdp_patch_embed_linear", True, FSDP_PATCH),
    ]
    for lora in ("generator_lora", "fake_score_lora"):
        p = f"model.{lora}"
        shared = "one LoraSettings (base.lora) serves both adapters"
        rows += [
            why(f"{p}.enabled", True, LORA_ON),
            at(f"{p}.rank", 32, "base.lora.rank", note=shared),
            at(f"{p}.lora_alpha", 64, "base.lora.alpha", note=shared),
            at(f"{p}.target_modules", TARGETS, "base.lora.targets", frozenset, note="order-free (peft suffixes)"),
            at(f"{p}.init_lora_weights", "gaussian", "base.lora.init", note=shared),
        ]
        if load is None:
            rows.append(why(f"{p}.load_path", "", "empty: fresh LoRA (B = 0, so the student starts at the "
                            "teacher); the suite's stage 1 always starts fresh"))
        else:
            rows += [
                why(f"{p}.load_path", load[lora], "the stage-1 checkpoint of a separate official job; the suite "
                    "runs both stages in one run and stage 2 starts from the stage-1 EMA generator and fake "
                    "score in memory (RTDMD._enter_stage2; stage1_fraction splits the budget)"),
                at(f"{p}.merge_before_training", True, "method.stage2_adapters",
                   lambda merge: "restart" if merge else "continue",
                   note="the stage-1 LoRA stays as a frozen adapter (the teacher shares the weights) and a "
                        "fresh Gaussian-init LoRA trains (AdapterSwitch.restart)"),
            ]
    return rows


def solver_rows(net: str, lr_path: str, clip_path: str) -> list[Row]:
    p = f"solver.{net}"
    return [
        at(f"{p}.lr", 3.0e-5, lr_path),
        why(f"{p}.warmup_steps", 0, NO_WARMUP),
        at(f"{p}.beta1", 0.9, "method.stage1.betas.0"),
        at(f"{p}.beta2", 0.999, "method.stage1.betas.1"),
        at(f"{p}.eps", 1.0e-8, "adamw.eps", note="torch AdamW's default, not a suite field"),
        at(f"{p}.weight_decay", 0.0, "method.stage1.weight_decay"),
        at(f"{p}.max_grad_norm", 1.0, clip_path),
    ]


def logging_rows(run_name: str, tags: tuple[str, ...]) -> list[Row]:
    return [why("logging.project", "rtdmd", LOGGING), why("logging.run_name", run_name, LOGGING),
            why("logging.entity", "", LOGGING), why("logging.tags", tags, LOGGING),
            why("logging.enabled", True, LOGGING)]


# ---- configs/cold_start/sd3m.yaml -------------------------------------------------------------
COLD_START: list[Row] = [
    *model_rows(),
    at("dmd.num_inference_steps", 4, "method.stage1.num_steps"),
    at("dmd.min_step", 20, "method.stage1.t_min", per_1000, note="AC bounds: max(min_step, min_renoise_step)"),
    at("dmd.max_step", 980, "method.stage1.t_max", per_1000, note="AC bounds: min(max_step, max_renoise_step)"),
    why("dmd.num_train_timesteps", 1000, "the suite works in continuous sigma in [0, 1]; the SD3 transformer "
        "sees sigma * 1000 (SD3._forward), the same 1000-timestep scale"),
    at("dmd.real_guidance_scale_min", 7.0, "derived.stage1_teacher_cfg"),
    at("dmd.real_guidance_scale_max", 7.0, "derived.stage1_teacher_cfg"),
    why("dmd.fake_guidance_scale", 1.0, NO_CFG_FAKE),
    at("dmd.fake_update_ratio", 10, "method.stage1.num_fake_per_gen"),
    at("dmd.gradient_normalization", True, "method.stage1.dm_normalize", normalization),
    why("dmd.fake_timestep_sampling", "logit_normal", PLAIN_DMD_ONLY),
    why("dmd.logit_mean", 0.0, PLAIN_DMD_ONLY),
    why("dmd.logit_std", 1.0, PLAIN_DMD_ONLY),
    at("dmd.random_stop_idx", True, "method.stage1.random_stop"),
    at("dmd.denoising_step_list", (1000, 750, 500, 250), "derived.student_sigmas", shifted_sigmas,
       note="the base's sigmas for stage1.num_steps, without the final 0"),
    why("dmd.generator_scheduler", "cps", CPS_ONLY),
    at("dmd.cps_eta", 0.9, "method.stage1.eta"),
    why("dmd.fake_min_step", 0, PLAIN_DMD_ONLY),
    why("dmd.fake_max_step", 999, PLAIN_DMD_ONLY),
    why("dmd.dmd_timestep_sampling", "uniform", PLAIN_DMD_ONLY + " (the suite's AC-DMD generator levels are "
        "uniform, fixed in acdmd_terms.stage1_generator_loss)"),
    why("dmd.dmd_logit_mean", 0.0, PLAIN_DMD_ONLY),
    why("dmd.dmd_logit_std", 1.0, PLAIN_DMD_ONLY),
    at("ac_dmd.enabled", True, "method.stage1.fake_t_dist", lambda on: "uniform" if on else "logit_normal",
       note="AC-DMD on: fake-score levels uniform in the sub-interval (the method itself is AC-DMD)"),
    why("ac_dmd.start_mode", "next_sigma", "structural: x_s is the output of the last executed step at its "
        "next sigma (acdmd_terms.random_stop_rollout returns s = sigmas[k])"),
    why("ac_dmd.boundary_sigma_index", 2, "read only by start_mode 'fixed_boundary': not applicable"),
    why("ac_dmd.end_timestep", 1000.0, "structural: re-noising levels are drawn up to sigma 1 "
        "(acdmd_terms.renoise_level's interval [s + offset, 1]) before the [t_min, t_max] clamp"),
    at("ac_dmd.timestep_offset", 10.0, "method.stage1.renoise_offset", per_1000),
    why("ac_dmd.all_include_terminal_when_no_random_stop", True, "only moves the interval end, to 1000 = "
        "end_timestep, when random_stop_idx is false: the suite's interval always ends at 1"),
    at("ac_dmd.min_renoise_step", 20, "method.stage1.t_min", per_1000),
    at("ac_dmd.max_renoise_step", 980, "method.stage1.t_max", per_1000),
    at("ac_dmd.target_formula_move_scale_out", True, "method.stage1.fake_weighting", scale_out),
    why("ac_dmd.fake_loss_weight_clamp_min", 0.0, "never acts: the weight 1/b^2 >= 1 since the re-noising "
        "std b <= 1"),
    at("ac_dmd.fake_loss_weight_clamp_max", 10.0, "method.stage1.fake_weighting", weighting_of),
    at("ac_dmd.consistency_enabled", True, "method.stage1.consistency"),
    at("ac_dmd.consistency_weight", 1.0e-2, "method.stage1.consistency_weight"),
    at("ac_dmd.consistency_epsilon_timestep", 200.0, "method.stage1.consistency_max_delta", per_1000),
    why("ac_dmd.consistency_num_steps", 1, ONE_CONS_STEP),
    why("ac_dmd.consistency_use_two_sample_unbiased", True, TWO_SAMPLE),
    why("ac_dmd.consistency_stopgrad_transitions", True, STOPGRAD),
    *solver_rows("generator", "method.stage1.lr_generator", "method.stage1.grad_clip"),
    *solver_rows("fake_score", "method.stage1.lr_fake", "method.stage1.grad_clip"),
    why("train.total_steps", 100000, BUDGET + "; plan.RECIPES records 15000 AC-DMD steps, the checkpoint "
        "the official stage 2 loads"),
    why("train.save_interval", 5000, "checkpoint frequency is a suite setting (train.checkpoint_every)"),
    why("train.log_interval", 1, "logging frequency is a suite setting (train.log_every)"),
    why("train.seed", 42, SEED),
    at("train.batch_size", 9, "train.batch_size", lambda per_gpu: per_gpu * 8,
       note="per-GPU batch x the official 8 GPUs: train.batch_size is samples per step over all processes "
            "(also real.cold_start_batch for plan)"),
    why("train.gradient_accumulation_steps", 1, "structural: one optimiser step per batch, no accumulation"),
    at("train.autocast_dtype", "bf16", "base.autocast_bf16", is_bf16),
    why("train.resume_from", "", PATH + " (empty: no resume; the suite resumes a run folder with --resume)"),
    why("train.use_ema", True, "structural: acdmd_terms.stage1_state always keeps the generator EMA and the "
        "method samples from it"),
    at("train.ema_decay", 0.99, "method.stage1.ema_decay"),
    why("train.ema_every", 1, "structural: acdmd_terms.stage1_step updates the EMA every iteration"),
    why("distributed.strategy", "fsdp", STRATEGY),
    why("distributed.fsdp_sharding", "full_shard", "FSDP sharding mode; the suite's FSDP2 always shards "
        "fully over all processes (what full_shard does)"),
    *logging_rows("sd3m-ac-dmd", ("sd3m", "cold_start")),
    why("eval.enabled", True, EVAL),
    why("eval.eval_interval", 1000, EVAL),
    why("eval.eval_prompt_source", "dataset", EVAL),
    why("eval.dataset", "drawbench", EVAL),
    why("eval.dataset_path", "dataset", PATH),
    why("eval.reward_fn", EVAL_REWARDS, EVAL),
    why("eval.reward_dataset_map", EVAL_DATASETS, EVAL),
    why("eval.reward_ckpt_path", "/path/to/reward_ckpts", PATH),
    why("eval.eval_num_steps", 4, EVAL + "; student samples use 4-step CPS (evaluate.SamplerSpec)"),
    why("eval.eval_guidance_scale", 1.0, EVAL + "; the student samples without CFG (evaluate.generate_prompt)"),
    why("eval.eval_batch_size", 16, EVAL),
    why("eval.num_media_images", 8, LOGGING),
    why("eval.eval_seed", 42, EVAL),
    at("prompt_path", "dataset/pickscore", "base.prompt_file", lambda d: f"rtdmd:{d.split('/', 1)[1]}/train.txt",
       note="the official folder's train.txt, a verified download (rtdmd_bench/prompt_files.py)"),
    why("output_dir", "./outputs/sd3m_cold_start", OUTPUT),
]

# ---- configs/rtdmd/sd3m.yaml ------------------------------------------------------------------
CKPT = "/path/to/sd3m_cold_start_ckpt/checkpoint-15000"
LS = "grpo.last_step_loss"
RTDMD: list[Row] = [
    *model_rows({"generator_lora": f"{CKPT}/generator_ema.pt", "fake_score_lora": f"{CKPT}/fake_score_net.pt"}),
    why("grpo.sampling_mode", "dmd", "structural: stage-2 rollouts are the student's few-step CPS sampler "
        "(RTDMD.group_rollout)"),
    at("grpo.num_steps", 4, "method.stage1.num_steps", note="stage1.num_steps also defines the stage-2 rollouts"),
    at("grpo.denoising_step_list", (1000, 750, 500, 250), "derived.student_sigmas", shifted_sigmas),
    at("grpo.noise_level", 0.9, "method.stage1.eta", note="stage1.eta also defines the stage-2 rollouts"),
    why("grpo.sde_type", "cps", CPS_ONLY),
    why("grpo.guidance_scale", 1.0, "structural: the student samples without CFG (group_rollout's velocity "
        "has no cfg)"),
    why("grpo.same_latent", False, "structural: every sample draws its own initial noise (group_rollout); "
        "only the CPS noise of the steps outside the SubGRPO subset is shared within a group"),
    why("grpo.eval_num_steps", 4, EVAL + "; student samples use 4-step CPS (evaluate.SamplerSpec)"),
    why("grpo.eval_guidance_scale", 1.0, EVAL + "; the student samples without CFG (evaluate.generate_prompt)"),
    why("grpo.eval_noise_level", 0.9, EVAL + "; evaluate.SamplerSpec.eta defaults to 0.9"),
    why("grpo.eval_sde_type", "cps", EVAL),
    why("grpo.eval_freq", 50, EVAL),
    why("grpo.save_freq", 100, "checkpoint frequency is a suite setting (train.checkpoint_every)"),
    at("grpo.clip_range", 1.0e-5, "method.clip_eps"),
    at("grpo.clip_range_lt", 1.0e-5, "method.clip_eps", note="the suite clips symmetrically"),
    at("grpo.clip_range_gt", 1.0e-5, "method.clip_eps", note="the suite clips symmetrically"),
    why("grpo.beta", 0.0, "KL penalty to the reference policy, 0 = off; the suite's PPO term has none "
        "(rl.ppo_clip_loss). Not run.beta, which is the reward-tilt temperature"),
    at("grpo.adv_clip_max", 5.0, "method.adv_clip"),
    why("grpo.timestep_fraction", 0.99, "ignored by the official trainer while step_selection is enabled; "
        "the suite's SubGRPO subset (method.subset_size) plays that role"),
    why("grpo.num_inner_epochs", 1, "structural: one generator optimiser step per epoch on fresh rollouts "
        "(RTDMD._stage2_step)"),
    why("grpo.cfg_in_training", False, "structural: the student's training forwards never use CFG"),
    at("grpo.max_grad_norm", 1.0, "method.grad_clip"),
    at("grpo.learning_rate", 3.0e-6, "method.lr"),
    at("grpo.adam_beta1", 0.9, "method.betas.0"),
    at("grpo.adam_beta2", 0.999, "method.betas.1"),
    at("grpo.adam_weight_decay", 1.0e-4, "method.weight_decay"),
    at("grpo.adam_epsilon", 1.0e-8, "adamw.eps", note="torch AdamW's default, not a suite field"),
    why("grpo.weight_advantages", True, "structural: per-reward advantages, weighted by the run's reward "
        "weights, summed and re-standardised (core/advantages.weighted_advantages)"),
    at("grpo.reward_fn", {"clipscore": 1.0, "hpsv2": 1.0, "pickscore": 1.0, "geneval": 1.0}, "run.rewards",
       convert=lambda fn: tuple(f"{SUITE_REWARD[k]}={v}" for k, v in fn.items()),
       note="recipes/sd3.yaml; the official hpsv2 scorer loads HPS_v2.1 (suite: hpsv21), geneval is the "
            "partial-credit GRPO reward (geneval-partial)"),
    why("grpo.reward_ckpt_path", "/path/to/reward_ckpts", PATH),
    why("grpo.per_prompt_stat_tracking", True, "structural: advantages are centred by the mean of the samples "
        "sharing a prompt (core/advantages.per_prompt_advantages)"),
    why("grpo.per_prompt_global_std", True, "structural: per_prompt_advantages divides by the std over the "
        "whole batch (numpy's population std + 1e-4: method.adv_std, method.adv_eps)"),
    at("grpo.num_batches_per_epoch", 16, "method.num_batches_per_epoch",
       note="sets the official EMA repeats and the padding of the kept samples; also plan.1.batches_per_step"),
    at("grpo.sample_batch_size", 2, "real.stage2_batch", note="plan's stage-2 micro-batch: samples per step = "
       "stage2_batch x batches_per_step x GPUs"),
    at("grpo.num_image_per_prompt", 16, "method.group_size"),
    why("grpo.test_batch_size", 8, EVAL),
    why("grpo.vae_decode_batch_size", 2, "memory micro-batching: the suite decodes a step's samples in one call"),
    at("grpo.train_batch_size", 2, "real.stage2_batch"),
    why("grpo.gradient_accumulation_steps", 16, "one optimiser step per epoch, as the suite's stage-2 step of "
        "method.stage2_batch_size samples (256 = 16 x sample_batch_size 2 x 8 GPUs); how a process splits it "
        "for memory is train.micro_batches, which does not change the update"),
    why("grpo.num_epochs", 100000, BUDGET),
    why("grpo.use_ema", True, "structural: RTDMD._enter_stage2 starts a fresh generator EMA and the method "
        "samples from it"),
    at("grpo.ema_decay", 0.9, "method.ema_decay"),
    at("grpo.ema_update_interval", 8, "method.ema_interval"),
    why("grpo.log_num_groups", 0, LOGGING),
    why("grpo.step_selection.enabled", True, "structural: SubGRPO (rl.choose_subset) whenever "
        "method.reward_term uses PPO"),
    why("grpo.step_selection.range_start", 0, "structural: rl.choose_subset draws from the stochastic steps "
        "starting at step 0"),
    at("grpo.step_selection.range_end", 2, "method.stage1.num_steps", lambda last: last + 2,
       note="inclusive: the last stochastic step, N - 2 (the suite draws from all N - 1 stochastic steps)"),
    at("grpo.step_selection.num_train_steps", 2, "method.subset_size"),
    why(f"{LS}.enabled", True, "structural: stage 2 always has the last-step DM term (weight method.lambda_dm)"),
    at(f"{LS}.loss_type", "ac_dmd", "method.dm_term", lambda t: t.replace("_", "")),
    why(f"{LS}.train_steps", (-1,), "structural: the DM and reward-backprop terms act on the deterministic "
        "last step (j = N - 1 in RTDMD._stage2_step)"),
    at(f"{LS}.weight", 0.001, "method.lambda_dm"),
    at(f"{LS}.real_guidance_scale_min", 7.0, "derived.last_step_teacher_cfg"),
    at(f"{LS}.real_guidance_scale_max", 7.0, "derived.last_step_teacher_cfg"),
    why(f"{LS}.fake_guidance_scale", 1.0, NO_CFG_FAKE),
    at(f"{LS}.gradient_normalization", True, "method.stage1.dm_normalize", normalization),
    at(f"{LS}.min_step", 20, "method.stage1.t_min", per_1000),
    at(f"{LS}.max_step", 980, "method.stage1.t_max", per_1000),
    why(f"{LS}.timestep_sampling", "logit_normal", LS_DMD_ONLY),
    why(f"{LS}.logit_mean", 0.0, LS_DMD_ONLY),
    why(f"{LS}.logit_std", 1.0, LS_DMD_ONLY),
    why(f"{LS}.fake_min_step", 0, LS_DMD_FAKE_ONLY),
    why(f"{LS}.fake_max_step", 999, LS_DMD_FAKE_ONLY),
    why(f"{LS}.fake_timestep_sampling", "uniform", LS_DMD_FAKE_ONLY),
    why(f"{LS}.fake_logit_mean", 0.0, LS_DMD_FAKE_ONLY),
    why(f"{LS}.fake_logit_std", 1.0, LS_DMD_FAKE_ONLY),
    why(f"{LS}.fake_score_batch_size", 2, "memory micro-batching of the fake-score step: the suite takes the "
        "step's samples in one call"),
    why(f"{LS}.ac_start_mode", "next_sigma", "structural: the last step's next sigma is 0, so the stage-2 AC "
        "terms start at s = 0 (acdmd_terms.final_sample_fake_loss / final_sample_dm_loss)"),
    why(f"{LS}.ac_end_timestep", 1000.0, "structural: re-noising levels are drawn up to sigma 1 "
        "(acdmd_terms.renoise_level) before the [t_min, t_max] clamp"),
    at(f"{LS}.ac_timestep_offset", 10.0, "method.stage1.renoise_offset", per_1000),
    at(f"{LS}.ac_min_step", 20, "method.stage1.t_min", per_1000),
    at(f"{LS}.ac_max_step", 980, "method.stage1.t_max", per_1000),
    at(f"{LS}.ac_target_formula_move_scale_out", True, "method.stage1.fake_weighting", scale_out),
    why(f"{LS}.ac_fake_loss_weight_clamp_min", 0.0, "never acts: the weight 1/b^2 >= 1 since b <= 1"),
    at(f"{LS}.ac_fake_loss_weight_clamp_max", 10.0, "method.stage1.fake_weighting", weighting_of),
    why(f"{LS}.ac_fake_train_guidance_scale", 1.0, NO_CFG_FAKE),
    at(f"{LS}.ac_consistency_enabled", True, "method.consistency", note="stage 2's own switch"),
    at(f"{LS}.ac_consistency_weight", 0.01, "method.stage1.consistency_weight"),
    at(f"{LS}.ac_consistency_epsilon_timestep", 200.0, "method.stage1.consistency_max_delta", per_1000),
    why(f"{LS}.ac_consistency_num_steps", 1, ONE_CONS_STEP),
    why(f"{LS}.ac_consistency_use_two_sample_unbiased", True, TWO_SAMPLE),
    why(f"{LS}.ac_consistency_stopgrad_transitions", True, STOPGRAD),
    at(f"{LS}.bp_enabled", True, "method.reward_term", lambda on: "hybrid" if on else "grpo",
       note="PPO on the subset + reward backprop on the last step"),
    why(f"{LS}.bp_use_training_reward_fn", True, "structural: the backprop term uses the run's own rewards, "
        "their differentiable ones (RewardSet.total(differentiable_only=True))"),
    at(f"{LS}.bp_reward_margin", 3.0, "method.tau"),
    at(f"{LS}.bp_grad_scale", 1.0e-4, "derived.reward_backprop_weight"),
    why(f"{LS}.bp_only_deterministic", True, "structural: reward backprop only through the deterministic "
        "last step's x0 prediction"),
    at("dmd.num_inference_steps", 4, "method.stage1.num_steps"),
    at("dmd.denoising_step_list", (1000, 750, 500, 250), "derived.student_sigmas", shifted_sigmas),
    why("dmd.generator_scheduler", "cps", CPS_ONLY),
    at("dmd.cps_eta", 0.9, "method.stage1.eta"),
    at("solver.fake_score.lr", 3.0e-5, "method.lr_fake"),
    why("solver.fake_score.warmup_steps", 0, NO_WARMUP),
    at("solver.fake_score.beta1", 0.9, "method.stage1.betas.0", note="the stage-2 fake optimiser reuses "
       "stage 1's betas and decay (RTDMD._enter_stage2)"),
    at("solver.fake_score.beta2", 0.999, "method.stage1.betas.1"),
    at("solver.fake_score.eps", 1.0e-8, "adamw.eps", note="torch AdamW's default, not a suite field"),
    at("solver.fake_score.weight_decay", 0.0, "method.stage1.weight_decay"),
    at("solver.fake_score.max_grad_norm", 1.0, "method.grad_clip", note="one clip for both stage-2 networks"),
    why("train.seed", 42, SEED),
    at("train.autocast_dtype", "bf16", "base.autocast_bf16", is_bf16),
    why("distributed.strategy", "fsdp", STRATEGY),
    why("distributed.fsdp_sharding", "hybrid", "suite choice: its FSDP2 (train.parallel=fsdp) always shards "
        "fully over all processes; no hybrid (shard within a node, replicate across nodes) mode"),
    *logging_rows("sd3m_rtdmd", ("sd3m", "rtdmd")),
    why("eval.enabled", True, EVAL),
    why("eval.eval_prompt_source", "dataset", EVAL),
    why("eval.dataset_path", "dataset", PATH),
    why("eval.dataset", "drawbench", EVAL),
    why("eval.num_media_images", 64, LOGGING),
    why("eval.eval_seed", 42, EVAL),
    why("eval.reward_fn", EVAL_REWARDS, EVAL),
    why("eval.reward_dataset_map", EVAL_DATASETS, EVAL),
    at("prompt_path", "dataset/geneval", "base.reward_prompt_file",
       lambda d: f"rtdmd:{d.split('/', 1)[1]}/train_metadata.jsonl",
       note="stage 2 draws from the base's reward prompt set (Batch.draw); the official folder's "
            "train_metadata.jsonl, a verified download"),
    why("output_dir", "./outputs/sd3m_rtdmd", OUTPUT),
]

TABLES = {"cold_start/sd3m.yaml": COLD_START, "rtdmd/sd3m.yaml": RTDMD}

# Leaves per top-level section of each official file (a row lost or added shows up here).
SECTION_COUNTS = {
    "cold_start/sd3m.yaml": {"model": 18, "dmd": 21, "ac_dmd": 17, "solver": 14, "train": 11,
                             "distributed": 2, "logging": 5, "eval": 13, "prompt_path": 1, "output_dir": 1},
    "rtdmd/sd3m.yaml": {"model": 20, "grpo": 87, "dmd": 4, "solver": 7, "train": 2, "distributed": 2,
                        "logging": 5, "eval": 8, "prompt_path": 1, "output_dir": 1},
}


# ---- the suite side ---------------------------------------------------------------------------
def derived_values(cfg: Any) -> dict[str, Any]:
    m, b = cfg.method, cfg.base
    return {
        # Teacher CFG of the stage-1 DM gradient and of the stage-2 last-step DM term: the method's
        # `cfg`, None = the base's default_cfg.
        "stage1_teacher_cfg": b.default_cfg if m.stage1.cfg is None else m.stage1.cfg,
        "last_step_teacher_cfg": b.default_cfg if m.cfg is None else m.cfg,
        # The SD3 base's student schedule for stage1.num_steps, without the final sigma 0 (SD3.sigmas
        # needs no weights: it is the constant-shift schedule).
        "student_sigmas": SD3.sigmas(object.__new__(SD3), m.stage1.num_steps)[:-1].tolist(),
        # The weight of the hinge reward-backprop term as RTDMD.reward_backprop_weight uses it.
        "reward_backprop_weight": m.lambda_r if m.reward_weighting == "official" else None,
    }


@pytest.fixture(scope="module")
def suite() -> dict[str, Any]:
    cfg = resolve_config("rtdmd", "sd3", [])
    # Reading the signature instead of building an optimiser spares torch's 2-3 s lazy imports.
    adamw_eps = inspect.signature(torch.optim.AdamW).parameters["eps"].default
    return {"run": cfg.run, "train": cfg.train, "method": cfg.method, "base": cfg.base,
            "real": REAL_BASES["sd3"], "plan": RECIPES["rtdmd"], "adamw": {"eps": adamw_eps},
            "derived": derived_values(cfg)}


def lookup(roots: dict[str, Any], path: str) -> Any:
    root, *parts = path.split(".")
    obj = roots[root]
    for part in parts:
        if isinstance(obj, dict):
            obj = obj[part]
        elif part.isdigit():
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def same(actual: Any, expected: Any) -> bool:
    """Equality with float tolerance; booleans and strings must also match in type."""
    if isinstance(expected, frozenset):
        return frozenset(actual) == expected
    if isinstance(expected, list):  # a schedule of floats
        return list(actual) == pytest.approx(expected)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return not isinstance(actual, bool) and actual == pytest.approx(expected)
    return type(actual) is type(expected) and actual == expected


def _params(mapped: bool) -> list[Any]:
    out = []
    for name, rows in TABLES.items():
        for r in rows:
            if (r.suite is not None) == mapped:
                marks = [pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail else []
                out.append(pytest.param(r, id=f"{name}:{r.official}", marks=marks))
    return out


@pytest.mark.parametrize("row", _params(mapped=True))
def test_suite_default_matches_official(suite: dict[str, Any], row: Row) -> None:
    expected = row.convert(row.value) if row.convert else row.value
    actual = lookup(suite, row.suite)
    assert same(actual, expected), (f"official {row.official} = {row.value!r} -> expected {expected!r} at "
                                    f"{row.suite}, the suite has {actual!r}")


@pytest.mark.parametrize("row", _params(mapped=False))
def test_unmapped_field_has_a_reason(row: Row) -> None:
    assert row.convert is None and not row.xfail
    assert isinstance(row.note, str) and len(row.note.strip()) > 10, row.official


@pytest.mark.parametrize("name", list(TABLES))
def test_each_official_leaf_listed_once(name: str) -> None:
    paths = [r.official for r in TABLES[name]]
    assert [p for p, n in Counter(paths).items() if n > 1] == []
    assert dict(Counter(p.split(".")[0] for p in paths)) == SECTION_COUNTS[name]


def test_suite_adamw_keeps_torch_eps() -> None:
    """`adamw.eps` rows read torch's default: the suite's optimiser factory must not override it."""
    assert "eps" not in inspect.signature(optim.adamw).parameters
    assert "eps" not in inspect.getsource(optim.adamw)


def test_acdmd_method_is_rtdmd_stage1(suite: dict[str, Any]) -> None:
    """The cold-start rows hold for the `acdmd` method too: its config is rtdmd's stage1."""
    acdmd = resolve_config("acdmd", "sd3", [])
    assert acdmd.method == suite["method"].stage1
    assert acdmd.base == suite["base"]


@pytest.mark.parametrize("base,group,stage1_lr", [("sd3", 16, 3e-5), ("sd35m", 24, 3e-5), ("sd35l", 24, 3e-5),
                                                  ("flux2-4b", 24, 1e-6), ("flux2-9b", 24, 1e-6),
                                                  ("flux1-dev", 24, 3e-5)])
def test_every_real_base_recipe_carries_the_official_stage2_rewards(base, group, stage1_lr):
    # Official configs/rtdmd/*.yaml: the same four rewards everywhere; 16 images per prompt on SD3-M,
    # 24 elsewhere; FLUX.2's cold start at lr 1e-6 (sd35l has no official config: it follows sd35m).
    cfg = resolve_config("rtdmd", base, [])
    assert cfg.run.rewards == ("clipscore=1.0", "hpsv21=1.0", "pickscore=1.0", "geneval-partial=1.0")
    assert cfg.rewards["pickscore"].divide_by == 26.0  # the official training PickScore / 26
    assert cfg.method.group_size == group
    assert cfg.method.stage1.lr_generator == cfg.method.stage1.lr_fake == pytest.approx(stage1_lr)
    assert resolve_config("acdmd", base, []).method == cfg.method.stage1
    for method in ("dmd2", "acdmd", "gndm"):  # methods without external rewards load no reward model
        assert resolve_config(method, base, []).run.rewards == ()


@pytest.mark.parametrize("base", ["sd3", "sd35m", "sd35l", "flux2-4b", "flux2-9b", "flux1-dev"])
def test_real_base_recipes_give_every_method_the_official_budget_and_batches(base):
    """Matched compute: every method gets the same budget and samples per step on a real base;
    rtdmd gets the official global batches (per-GPU batch x the official 8 GPUs; stage 2: 16
    micro-batches of the per-GPU sample batch), whole groups per stage-2 step."""
    from rtdmd_bench.registry import names

    budgets = {m: (resolve_config(m, base, []).train.budget, resolve_config(m, base, []).train.batch_size)
               for m in names("methods")}
    assert len(set(budgets.values())) == 1, budgets
    cfg = resolve_config("rtdmd", base, [])
    facts = REAL_BASES[base]
    assert cfg.train.batch_size == facts.cold_start_batch * 8
    assert cfg.method.stage2_batch_size == facts.stage2_batch * 16 * 8
    assert cfg.method.stage2_batch_size % cfg.method.group_size == 0
    assert 0.0 < cfg.method.stage1_fraction < 1.0
    assert cfg.rewards["geneval-partial"].metadata_path == "rtdmd:geneval/train_metadata.jsonl"


@pytest.mark.slow  # ~15 s: builds SD3-M on the meta device and counts a forward, a LoRA backward, a decode
def test_sd3_recipe_budget_is_the_official_run_as_plan_counts_it():
    from rtdmd_bench.compute import parse_budget
    from rtdmd_bench.plan import compute_plan

    plan = compute_plan("rtdmd", "sd3")
    cfg = resolve_config("rtdmd", "sd3", [])
    stage1, stage2 = plan.stages
    assert (stage1["steps"], stage1["samples_per_step"], stage2["steps"], stage2["samples_per_step"]) == (15000, 72, 1000, 256)
    assert parse_budget(cfg.train.budget).amount == pytest.approx(plan.official_flops, rel=1e-3)
    assert cfg.method.stage1_fraction == pytest.approx(stage1["flops_run"] / plan.official_flops, abs=1e-4)
