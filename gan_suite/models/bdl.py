"""BDL (Li, Yuan & Vasconcelos, CVPR 2019): bidirectional learning for domain adaptation of
semantic segmentation.

Two models close a loop. The translator F (G_AB: source -> target, with its inverse G_BA) is
CycleGAN plus a perceptual loss through the current segmentation model M (eq. 3):

    L_F = L_GAN + lambda_recon L_cyc + identity + lambda_per ||IN(M(F(S))) - IN(M(S))||^2
          + lambda_per_recon ||IN(M(F^-1(F(S)))) - IN(M(S))||^2

M (DeepLab-v2) learns from the translated source with an output-space adversarial loss
(eq. 6), then from confidence-thresholded pseudo labels of the target (eq. 7):

    L_M = L_seg(M(F(S)), Y_S) + lambda_adv L_adv(M(F(S)), M(T)) [+ L_seg(M(T), Y_T^pseudo)]

The loop is a sequence of *stages*, each a set of declared phases; the
:class:`~gan_suite.callbacks.BDLSchedule` callback decides when each stage runs and writes the
translated source set and the pseudo labels; this module only trains:

    M0   Mmain (segmentation loss on the untranslated source)
    F    Gmain (F, F^-1 with the perceptual loss, M frozen), Dmain (D_A, D_B)
    M    Mmain (seg on F(S) + adversarial), Dout (output-space discriminator)
    SSL  Mmain (seg on F(S) + adversarial + self-supervised on T), Dout

Each stage logs under ``train/<stage>/...``. Learning rates follow each stage's own
iterations: M and its discriminator the poly schedule (power 0.9) from the start of the stage,
F constant for the first half of its stage, then linear to 0 (CycleGAN's rule).

One device:  gan-suite fit --config experiments/bdl.yaml --data.source_dir GTA5 \
                 --data.target_dir CITYSCAPES
Multi-GPU:   ... --config experiments/presets/ddp.yaml (SyncBatchNorm in M on GPUs)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from gan_suite.eval.protocol import SegmentationOutput
from gan_suite.losses import (
    output_adv_loss,
    perceptual_loss,
    poly_lr_factor,
    segmentation_loss,
)
from gan_suite.models.checks import ScheduleHorizon
from gan_suite.models.cyclegan import CycleGAN
from gan_suite.models.phases import Phase
from gan_suite.nets.deeplab import DeepLabV2, OutputDiscriminator, upsample_logits

#: stage -> the phases that run in it
STAGES: dict[str, tuple[str, ...]] = {
    "M0": ("Mmain",),
    "F": ("Gmain", "Dmain"),
    "M": ("Mmain", "Dout"),
    "SSL": ("Mmain", "Dout"),
}
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0  # the output-space discriminator's domains


class BDL(CycleGAN):
    """BDL's translator F (CycleGAN + perceptual loss) and segmentation model M (DeepLab-v2 +
    output-space adversarial + self-supervised losses), trained in stages.

    Every argument of :class:`~gan_suite.models.cyclegan.CycleGAN` is accepted too (F's nets
    and weights; ``lr``/``betas`` are F's Adam).

    Args:
        n_classes: segmentation classes (19: Cityscapes' training classes).
        backbone_layers: Bottleneck blocks per ResNet stage of M ((3, 4, 23, 3) = ResNet-101).
        atrous_rates: ASPP rates (6, 12, 18, 24).
        pretrained_backbone: local file of torchvision's ImageNet ResNet weights for M's
            backbone; None: random initialisation (the run says so).
        seg_lr: M's SGD learning rate (2.5e-4; the classifier's is ``classifier_lr_mult`` x).
        classifier_lr_mult: learning-rate factor of the ASPP classifier (10).
        seg_momentum: SGD momentum (0.9).
        seg_weight_decay: SGD weight decay (5e-4).
        poly_power: power of the poly decay of M's and Dout's learning rates (0.9).
        d_out_lr: Adam learning rate of the output-space discriminator (1e-4).
        d_out_betas: its Adam betas (0.9, 0.99).
        d_out_ndf: its width (64).
        adv_weight: lambda_adv of M's adversarial loss (0.001).
        ssl_weight: weight of the self-supervised segmentation loss (1).
        perceptual_weight: lambda_per, M(F(S)) vs M(S) (0.1).
        perceptual_recon_weight: lambda_per_recon, M(F^-1(F(S))) vs M(S) (10).
        reinit_segmenter: start M and Dout afresh (random or ImageNet init, new optimizer
            state) at every M and SSL stage, as the official code retrains from the initial
            weights each round; False continues from the previous stage's M.
        ignore_index: label of unlabelled pixels (255).
        sync_batchnorm: convert M's BatchNorm to SyncBatchNorm under multi-GPU DDP.
        **kwargs: CycleGAN's arguments (the translator).
    """

    sample_panels_names = ("S | F(S) | F^-1(F(S))", "T | M(T) | ground truth")

    def __init__(
        self,
        n_classes: int = 19,
        backbone_layers: tuple[int, int, int, int] = (3, 4, 23, 3),
        atrous_rates: tuple[int, ...] = (6, 12, 18, 24),
        pretrained_backbone: str | None = None,
        seg_lr: float = 2.5e-4,
        classifier_lr_mult: float = 10.0,
        seg_momentum: float = 0.9,
        seg_weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        d_out_lr: float = 1e-4,
        d_out_betas: tuple[float, float] = (0.9, 0.99),
        d_out_ndf: int = 64,
        adv_weight: float = 0.001,
        ssl_weight: float = 1.0,
        perceptual_weight: float = 0.1,
        perceptual_recon_weight: float = 10.0,
        reinit_segmenter: bool = True,
        ignore_index: int = 255,
        sync_batchnorm: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.M = DeepLabV2(n_classes, backbone_layers, atrous_rates, pretrained_backbone)
        self.D_out = OutputDiscriminator(n_classes, d_out_ndf)
        self.stage = "M0"
        self.round_k, self.round_n = 0, 0
        self.stage_epochs = 1  # epochs of the current stage (its LR schedules span them)
        self.register_buffer("stage_iteration", torch.zeros((), dtype=torch.long))
        self.class_names: list[str] | None = None
        self.set_phases_enabled({p: p in STAGES["M0"] for p in self.phases})

    # -- what the schedule callback uses ----------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Gmain (F, F^-1), Dmain (D_A, D_B), Mmain (M), Dout (output-space D)."""
        return [Phase("Gmain", 0), Phase("Dmain", 1), Phase("Mmain", 2), Phase("Dout", 3)]

    def enter_stage(self, stage: str, k: int = 0, n: int = 0, epochs: int = 1) -> None:
        """Switch to ``stage`` (``M0``, ``F``, ``M``, ``SSL``) of round ``k``, self-training
        round ``n``, lasting ``epochs`` epochs: enables its phases and restarts its LR
        schedules (and M, when ``reinit_segmenter`` and the stage trains M on F's output).

        Raises:
            ValueError: an unknown stage.
        """
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}: expected one of {list(STAGES)}")
        self.stage, self.round_k, self.round_n, self.stage_epochs = stage, k, n, epochs
        self.set_phases_enabled({p: p in STAGES[stage] for p in self.phases})
        self.stage_iteration.zero_()
        if stage in ("M", "SSL") and self.hparams.reinit_segmenter:
            self.reset_segmenter(seed=1000 * k + n)
        self._refresh_learning_rates()

    @property
    def stage_name(self) -> str:
        """``M0``, ``F1``, ``M1``, ``SSL1.2`` (round 1, self-training round 2), ..."""
        if self.stage == "M0":
            return "M0"
        return f"{self.stage}{self.round_k}" + (f".{self.round_n}" if self.stage == "SSL" else "")

    def reset_segmenter(self, seed: int) -> None:
        """Re-initialise M and Dout (deterministically from ``seed``) and clear their
        optimizers' state, as the official code starts each M training from its initial
        weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = DeepLabV2(
                self.hparams.n_classes,
                self.hparams.backbone_layers,
                self.hparams.atrous_rates,
                self.hparams.pretrained_backbone,
            )
            fresh_d = OutputDiscriminator(self.hparams.n_classes, self.hparams.d_out_ndf)
        self.M.load_state_dict(fresh.state_dict())
        self.D_out.load_state_dict(fresh_d.state_dict())
        if self._trainer is not None and self.trainer.optimizers:
            for name in ("Mmain", "Dout"):
                self.phase_optimizer(name).optimizer.state.clear()

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        n_data = getattr(dm, "n_classes", None)
        if n_data is not None and n_data != self.hparams.n_classes:
            raise ValueError(
                f"model.init_args.n_classes={self.hparams.n_classes} but the data has "
                f"{n_data} classes ({', '.join(dm.class_names)})"
            )
        self.class_names = getattr(dm, "class_names", None)
        if stage == "fit" and self.hparams.pretrained_backbone is None:
            rank_zero_info(
                "BDL: M's backbone starts from random initialisation (no pretrained_backbone "
                "given; the paper starts from ImageNet weights)"
            )
        trainer = self._trainer
        if (
            self.hparams.sync_batchnorm
            and trainer is not None
            and trainer.world_size > 1
            and self.device.type == "cuda"
        ):
            self.M = nn.SyncBatchNorm.convert_sync_batchnorm(self.M)

    def input_size_requirements(self) -> list:
        """F's nets (CycleGAN's), M and the output-space discriminator, which sees M's
        softmax upsampled to the image size: source and target images go through all."""
        return [
            *super().input_size_requirements(),
            ("BDL's DeepLab-v2 M", self.M.input_sizes()),
            ("BDL's output-space discriminator with 5 stride-2 convs", self.D_out.input_sizes()),
        ]

    def schedule_horizons(self) -> list[ScheduleHorizon]:
        """With the BDLSchedule callback the learning rates follow each stage and the callback
        checks ``trainer.max_epochs`` against its plan. Without it the run stays in stage M0,
        whose poly schedule spans ``stage_epochs`` epochs: a longer run would train M at 0."""
        callbacks = self.trainer.callbacks if self._trainer is not None else []
        if any(type(cb).__name__ == "BDLSchedule" for cb in callbacks):
            return []
        return [
            ScheduleHorizon(
                f"BDL's poly learning-rate schedule of stage {self.stage_name} (no "
                "gan_suite.callbacks.BDLSchedule in trainer.callbacks to switch stages)",
                "epoch",
                self.stage_epochs,
                "its stage_epochs",
            )
        ]

    # -- the algorithm ----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        if self.stage == "F":
            real_A, real_B = (
                self.prepare_images(batch["source"]),
                self.prepare_images(batch["target"]),
            )
            fake_A, fake_B = self.generator_phase(real_A, real_B)  # Gmain
            if self.runs("Dmain"):
                self._discriminator_step(
                    self.phase_optimizer("Dmain"), real_A, real_B, fake_A, fake_B
                )
            return
        predictions = self._segmenter_step(batch) if self.runs("Mmain") else None
        if predictions is not None and self.runs("Dout"):
            self._output_discriminator_step(*predictions)

    def log_terms(self, prefix: str, terms: dict[str, Tensor], prog_bar: tuple = ()) -> None:
        """Training terms go under ``train/<stage>/``: the dashboard shows the loop."""
        if prefix == "train":
            prefix = f"train/{self.stage}"
        super().log_terms(prefix, terms, prog_bar)

    def extra_generator_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict:
        """The perceptual loss through M (frozen, eval mode): eq. 3's two terms."""
        hp = self.hparams
        was_training = self.M.training
        self.M.eval()  # no BatchNorm statistics from F's images
        with torch.no_grad():
            seg_real = self.M(real_A)
        # F(S) and F^-1(F(S)) through M in one batch: M is in eval mode (no batch statistics),
        # so this equals two forwards and makes larger, faster kernels
        seg_fake, seg_rec = self.M(torch.cat([out["fake_B"], out["rec_A"]])).chunk(2)
        terms = {
            "per": perceptual_loss(seg_fake, seg_real) * hp.perceptual_weight,
            "per_recon": perceptual_loss(seg_rec, seg_real) * hp.perceptual_recon_weight,
        }
        self.M.train(was_training)
        return terms

    def _segmenter_step(self, batch: dict) -> tuple[Tensor, Tensor] | None:
        """Mmain: L_seg on the (translated) source; from stage M on, + lambda_adv L_adv on the
        target (M's target outputs should look like source outputs to Dout); in SSL, + the
        self-supervised L_seg on pseudo-labelled target pixels. Returns the detached
        upsampled (source, target) logits for Dout, or None in M0."""
        hp = self.hparams
        source = self.prepare_images(batch["source"])
        with self.phase("Mmain") as opt:
            pred_s = upsample_logits(self.M(source), source.shape[-2:])
            terms = {"seg": segmentation_loss(pred_s, batch["source_mask"], hp.ignore_index)}
            pred_t = None
            if self.stage != "M0":
                target = self.prepare_images(batch["target"])
                pred_t = upsample_logits(self.M(target), target.shape[-2:])
                d_out = self.D_out(F.softmax(pred_t, dim=1))
                terms["adv"] = output_adv_loss(d_out, SOURCE_LABEL) * hp.adv_weight
                if self.stage == "SSL":
                    if "target_pseudo" not in batch:
                        raise RuntimeError(
                            f"stage {self.stage_name}: the batch has no target_pseudo labels; "
                            "the BDLSchedule callback writes them before an SSL stage"
                        )
                    terms["ssl"] = (
                        segmentation_loss(pred_t, batch["target_pseudo"], hp.ignore_index)
                        * hp.ssl_weight
                    )
            terms["m_loss"] = sum(terms.values())
            self.log_terms("train", terms, prog_bar=("m_loss",))
            self.backward_and_step(opt, terms["m_loss"])
        if pred_t is None:
            return None
        return pred_s.detach(), pred_t.detach()

    def _output_discriminator_step(self, pred_s: Tensor, pred_t: Tensor) -> None:
        """Dout: source outputs -> 0, target outputs -> 1, each half of the loss."""
        with self.phase("Dout") as opt:
            terms = {
                "d_out_source": output_adv_loss(self.D_out(F.softmax(pred_s, 1)), SOURCE_LABEL) / 2,
                "d_out_target": output_adv_loss(self.D_out(F.softmax(pred_t, 1)), TARGET_LABEL) / 2,
            }
            terms["d_out_loss"] = terms["d_out_source"] + terms["d_out_target"]
            self.log_terms("train", terms)
            self.backward_and_step(opt, terms["d_out_loss"])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.stage_iteration += 1
        super().on_train_batch_end(outputs, batch, batch_idx)

    # -- learning rates ---------------------------------------------------------------------
    def _stage_progress(self) -> tuple[int, int]:
        """(iterations done in this stage, iterations the stage lasts)."""
        per_epoch = 0
        if self._trainer is not None:
            per_epoch = self.trainer.num_training_batches
        per_epoch = per_epoch if isinstance(per_epoch, int) else 0
        return int(self.stage_iteration), self.stage_epochs * per_epoch

    def _poly(self, _: int) -> float:
        done, total = self._stage_progress()
        return poly_lr_factor(done, total, self.hparams.poly_power)

    def _translator_factor(self, _: int) -> float:
        done, total = self._stage_progress()
        if total <= 0:
            return 1.0
        half = total // 2
        return 1.0 if done < half else max(0.0, (total - done) / max(total - half, 1))

    def _refresh_learning_rates(self) -> None:
        if self._trainer is None:
            return
        with warnings.catch_warnings():  # a new stage's schedule restarts before its first step
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            for config in self.trainer.lr_scheduler_configs:
                config.scheduler.step()

    def configure_optimizers(self):
        hp = self.hparams
        opt_g, opt_d = self.translator_optimizers()
        opt_m = torch.optim.SGD(
            [
                {"params": self.M.backbone_parameters(), "lr": hp.seg_lr},
                {"params": self.M.classifier_parameters(), "lr": hp.seg_lr * hp.classifier_lr_mult},
            ],
            lr=hp.seg_lr,
            momentum=hp.seg_momentum,
            weight_decay=hp.seg_weight_decay,
        )
        opt_dout = self.adam(self.D_out.parameters(), lr=hp.d_out_lr, betas=tuple(hp.d_out_betas))
        rules = (self._translator_factor, self._translator_factor, self._poly, self._poly)
        scheds = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, r), "interval": "step"}
            for o, r in zip((opt_g, opt_d, opt_m, opt_dout), rules)
        ]
        return [opt_g, opt_d, opt_m, opt_dout], scheds

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["bdl_stage"] = {
            "stage": self.stage,
            "k": self.round_k,
            "n": self.round_n,
            "epochs": self.stage_epochs,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("bdl_stage")
        if state is not None:
            self.stage, self.round_k, self.round_n = state["stage"], state["k"], state["n"]
            self.stage_epochs = state["epochs"]

    # -- inference and evaluation -----------------------------------------------------------
    def forward(self, x: Tensor, direction: str = "segment") -> Tensor:
        """``segment``: (N, C, H, W) logits of M at the input size; ``AtoB``/``BtoA``: F, F^-1."""
        if direction == "segment":
            x = self.prepare_images(x)
            return upsample_logits(self.M(x), x.shape[-2:])
        return super().forward(x, direction)

    def evaluation_outputs(self, batch: dict) -> list[SegmentationOutput]:
        """M on the target validation images, upsampled to the labels' size."""
        logits = upsample_logits(
            self.M(self.prepare_images(batch["target"])), batch["target_mask"].shape[-2:]
        )
        return [
            SegmentationOutput(
                "target",
                logits,
                batch["target_mask"],
                self.hparams.n_classes,
                self.hparams.ignore_index,
                self.class_names,
            )
        ]

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, Tensor]:
        logits = self(batch["target"])
        self.log_terms(
            prefix,
            {"seg": segmentation_loss(logits, batch["target_mask"], self.hparams.ignore_index)},
        )
        return {"logits": logits}

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return {"labels": self(batch["target"]).argmax(1)}

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        if "source" in batch:
            source = self.prepare_images(batch["source"])
            fake = self.G_AB(source)
            return {"F": [source, fake, self.G_BA(fake)]}
        target = self.prepare_images(batch["target"])
        n = self.hparams.n_classes
        pred = self(target).argmax(1)
        return {"M": [target, label_image(pred, n), label_image(batch["target_mask"], n)]}


def label_image(labels: Tensor, n_classes: int) -> Tensor:
    """(N, H, W) labels -> (N, 3, H, W) colours in [-1, 1] (ignored pixels black), to show
    segmentations beside images."""
    g = torch.Generator().manual_seed(0)
    palette = torch.rand(max(n_classes, 1), 3, generator=g).to(labels.device) * 2 - 1
    palette[0] = torch.tensor([-0.6, -0.6, -0.6], device=labels.device)
    valid = labels < n_classes
    out = palette[labels.clamp(0, n_classes - 1)].permute(0, 3, 1, 2)
    return torch.where(valid[:, None], out, torch.full_like(out, -1.0))
