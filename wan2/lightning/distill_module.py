"""Step distillation: guidance distillation, then progressive halving N -> N/2 -> ... -> student_steps.

Phases run back to back in one Trainer run (``global_step`` decides the phase):
1. ``cfg``: the student (initialised from the base) learns the base's guided velocity at weight w on the
   teacher's N-step grid, so it needs no CFG afterwards (one pass per step instead of two);
2. ``pd N->N/2`` rounds: the teacher is a frozen copy of the student at the end of the previous phase; one
   student Euler step on the stock diffusers N/2-step grid must land where two teacher steps land.
3. ``dm`` (optional, ``dm_steps > 0``): distribution matching (DMD2, Yin et al. 2024) on the student's own
   few-step samples: the real denoiser is the guided teacher, the fake one (a trainable copy) keeps learning
   the student's outputs, and their difference is the student's gradient. Regression rounds copy the teacher
   path by path and average what they cannot fit (blur); this term pulls the sample distribution back.
The student's final grid is exactly ``FlowMatchEulerDiscreteScheduler.set_timesteps(student_steps)`` of the
exported scheduler, so stock ``WanPipeline(num_inference_steps=4, guidance_scale=1.0)`` reproduces it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan2.diffusion import (
    add_noise,
    draw_per_sample,
    inference_sigmas,
    rand_per_sample,
    randn_per_sample,
    velocity_target,
)
from wan2.diffusion.distill import (
    distribution_matching_loss,
    guided_velocity,
    halving_schedule,
    two_step_target,
    x0_from_velocity,
)
from wan2.lightning.distill_config import DistillConfig
from wan2.lightning.flow_module import FlowMatchingModule


@dataclass(frozen=True)
class Phase:
    kind: str  # "cfg" | "pd" | "dm"
    teacher_steps: int
    student_steps: int
    start: int  # first global step of the phase
    end: int  # one past its last step


class DistillModule(FlowMatchingModule):
    """Guidance + progressive distillation of the transformer; the text encoder and VAE stay frozen."""

    Config = DistillConfig

    def __init__(self, backbone, cfg: DistillConfig | None = None, **settings):
        if backbone.transformer_2 is not None:
            raise ValueError(
                "objective=distill: two-expert models (Wan2.2 A14B) are not supported; distil a "
                "one-transformer model (wan_tiny, wan22_ti2v_5b)"
            )
        cfg = dataclasses.replace(self.Config.build(cfg, settings), train_text_encoder=False)
        super().__init__(backbone, cfg)
        teacher_steps, student_steps, guidance_scale = (
            cfg.teacher_steps,
            cfg.student_steps,
            cfg.guidance_scale,
        )
        cfg_steps, round_steps, dm_steps, dm_teacher = (
            cfg.cfg_steps,
            cfg.round_steps,
            cfg.dm_steps,
            cfg.dm_teacher,
        )
        self.rounds = halving_schedule(teacher_steps, student_steps)
        phases, start = [], 0
        if cfg_steps > 0 and guidance_scale > 1.0:
            phases.append(Phase("cfg", teacher_steps, teacher_steps, 0, cfg_steps))
            start = cfg_steps
        for n in self.rounds[1:]:
            phases.append(Phase("pd", 2 * n, n, start, start + round_steps))
            start += round_steps
        if dm_steps > 0:
            phases.append(Phase("dm", student_steps, student_steps, start, start + dm_steps))
            start += dm_steps
        if not phases:
            raise ValueError(
                f"objective: nothing to distil (teacher_steps == student_steps == {student_steps}, "
                "cfg_steps=0 or guidance_scale<=1, dm_steps=0)"
            )
        self.phases = phases
        self.total_steps = start
        self.shift = float(backbone.scheduler.config.shift)
        self.teacher = None  # the guided base, then the previous round's student (cfg and pd phases only)
        if any(p.kind != "dm" for p in phases):
            self.teacher = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        self.real = self.fake = None
        if dm_steps > 0:
            # real denoiser: the guided base (another export with objective.dm_teacher, e.g. when
            # model.pretrained is already a student); fake: a trainable copy of it that follows the student
            real = self._load_teacher(dm_teacher) if dm_teacher else self.transformer
            self.real = copy.deepcopy(real).requires_grad_(False).eval()
            self.fake = copy.deepcopy(real).requires_grad_(True).train()
        self._teacher_phase = 0
        self._uncond = None

    @staticmethod
    def _load_teacher(path: str) -> torch.nn.Module:
        from wan2.backbones.stack import load_backbone

        try:
            bb = load_backbone(path)
        except ValueError as e:
            raise ValueError(f"objective.dm_teacher: {e}".replace("model.pretrained: ", "")) from None
        if bb.transformer_2 is not None:
            raise ValueError(
                f"objective.dm_teacher: {path!r} has two experts; distillation needs one transformer"
            )
        return bb.transformer

    def phase_at(self, step: int) -> Phase:
        for p in self.phases:
            if step < p.end:
                return p
        return self.phases[-1]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        max_steps = getattr(self.trainer, "max_steps", -1)
        if 0 < max_steps < self.total_steps:
            self.print(
                f"warning: trainer.max_steps={max_steps} stops before the schedule ends "
                f"(objective.cfg_steps + {len(self.rounds) - 1} rounds x objective.round_steps = "
                f"{self.total_steps}); the export will be the {self.phase_at(max_steps - 1).student_steps}-step "
                "student reached by then"
            )

    def on_train_batch_start(self, batch, batch_idx):
        idx = self.phases.index(self.phase_at(self.global_step))
        if idx != self._teacher_phase and self.phases[idx].kind == "pd":
            # new round: the teacher is the student as it stands at the end of the previous phase
            self.teacher.load_state_dict(self.transformer.state_dict())
            self._teacher_phase = idx

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["distill"] = {"teacher_phase": self._teacher_phase}  # teacher weights: in state_dict

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if "distill" in checkpoint:
            self._teacher_phase = checkpoint["distill"]["teacher_phase"]

    def _uncond_emb(self, like: torch.Tensor) -> torch.Tensor:
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.backbone.encode_prompts([""]).to(like)
        return self._uncond.expand(like.shape[0], -1, -1)

    def _v(self, model, z, sigma, emb):
        return self.compiled(model)(
            hidden_states=z, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False
        )[0].float()

    def distill_loss(self, batch) -> tuple[torch.Tensor, Phase]:
        phase = self.phase_at(self.global_step)
        x0 = self.latents_of(batch).float()  # (B, C, F', H', W')
        cond = self.text_condition_frozen(batch)
        B = x0.shape[0]
        grid = inference_sigmas(phase.student_steps, self.shift).to(x0.device)  # (n + 1,)
        step_rng, noise_rng = self.sample_rng(batch, "step"), self.sample_rng(batch, "noise")
        if step_rng is None:
            i = torch.randint(0, phase.student_steps, (B,))
            noise = torch.randn_like(x0)
        else:  # per sample, by dataset index: the same draws at any world size (as FlowMatchingModule)
            i = draw_per_sample(lambda g: torch.randint(0, phase.student_steps, (1,), generator=g), step_rng)
            noise = randn_per_sample(x0.shape[1:], noise_rng).to(x0.device)  # (B, C, F', H', W')
        i = i.to(x0.device)
        t, t_next = grid[i], grid[i + 1]  # (B,)
        z = add_noise(x0, noise, t)
        with torch.no_grad():
            if phase.kind == "cfg":
                uncond = self._uncond_emb(cond)
                target = guided_velocity(
                    self._v(self.teacher, z, t, cond),
                    self._v(self.teacher, z, t, uncond),
                    self.hparams.guidance_scale,
                )
            else:
                target = two_step_target(
                    z, t, (t + t_next) / 2, t_next, lambda zz, s: self._v(self.teacher, zz, s, cond)
                )
        pred = self._v(self.transformer, z, t, cond)
        return F.mse_loss(pred, target), phase

    def dm_loss(self, batch) -> tuple[torch.Tensor, dict]:
        """Distribution matching on the student's samples (DMD2 with backward simulation).

        Each sample runs k ~ U{0..n-1} student steps from noise without gradient, then one step with
        gradient gives x0_s (the final sample when k = n-1). The generator loss moves x0_s along fake - real
        denoiser at a random noise level; the fake denoiser learns x0_s by flow matching (disjoint weights,
        so one backward serves both losses).
        """
        x0_shape = self.latents_of(batch).shape  # (B, C, F', H', W'): only the shape is used
        cond = self.text_condition_frozen(batch)
        B, n = x0_shape[0], self.phases[-1].student_steps
        grid = inference_sigmas(n, self.shift)  # (n + 1,)
        gens = {
            k: self.sample_rng(batch, f"dm_{k}") for k in ("start", "k", "t", "noise", "t_fake", "noise_fake")
        }
        if gens["start"] is None:
            gens = {
                k: [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)))) for _ in range(B)]
                for k in gens
            }
        dev = cond.device
        z = randn_per_sample(x0_shape[1:], gens["start"]).to(dev)  # (B, C, F', H', W') at sigma 1
        k = (rand_per_sample(gens["k"]) * n).long().clamp_max(n - 1)  # (B,) steps taken without gradient
        with torch.no_grad():
            # always n - 1 steps (masked per sample), not k.max(): under FSDP every rank must run the same
            # forwards, and the last step is never taken without gradient
            for j in range(n - 1):
                s, s_next = grid[j].expand(B).to(dev), grid[j + 1]
                z_next = z + (s_next - grid[j]) * self._v(self.transformer, z, s, cond)
                z = torch.where((j < k).to(dev).view(-1, 1, 1, 1, 1), z_next, z)
        sig = grid[k].to(dev)  # (B,)
        x0_s = x0_from_velocity(z, sig, self._v(self.transformer, z, sig, cond))  # (B, ...) with gradient
        lo, hi = self.hparams.dm_sigma_range
        t = (lo + (hi - lo) * rand_per_sample(gens["t"])).to(dev)  # (B,)
        zt = add_noise(x0_s.detach(), randn_per_sample(x0_shape[1:], gens["noise"]).to(dev), t)
        with torch.no_grad():
            uncond = self._uncond_emb(cond)
            u_real = guided_velocity(
                self._v(self.real, zt, t, cond),
                self._v(self.real, zt, t, uncond),
                self.hparams.guidance_scale,
            )
            x0_real = x0_from_velocity(zt, t, u_real)
            x0_fake = x0_from_velocity(zt, t, self._v(self.fake, zt, t, cond))
        loss_gen = distribution_matching_loss(x0_s, x0_real, x0_fake)
        # the fake denoiser learns the student's current samples (flow matching, fresh noise level)
        t2 = (lo + (hi - lo) * rand_per_sample(gens["t_fake"])).to(dev)
        noise2 = randn_per_sample(x0_shape[1:], gens["noise_fake"]).to(dev)
        x_s = x0_s.detach()
        loss_fake = F.mse_loss(
            self._v(self.fake, add_noise(x_s, noise2, t2), t2, cond), velocity_target(x_s, noise2)
        )
        return loss_gen + loss_fake, {"train/dm_gen": loss_gen.detach(), "train/dm_fake": loss_fake.detach()}

    def text_condition_frozen(self, batch) -> torch.Tensor:
        if "text_emb" in batch:
            return batch["text_emb"]
        with torch.no_grad():
            return self.backbone.encode_prompts(list(batch["caption"]))

    def training_step(self, batch, batch_idx):
        phase = self.phase_at(self.global_step)
        if phase.kind == "dm":
            loss, parts = self.dm_loss(batch)
            self.log_dict(parts, batch_size=len(batch["caption"]))
        else:
            loss, phase = self.distill_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        self.log(
            "train/student_steps", float(phase.student_steps), prog_bar=True, batch_size=len(batch["caption"])
        )
        return loss

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if (
            self.fake is not None
        ):  # the fake denoiser trains beside the student (dm phase only: no grads before)
            groups.append(
                {
                    "params": list(self.fake.parameters()),
                    "lr": self.hparams.lr * self.hparams.dm_fake_lr_scale,
                }
            )
        return groups

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.fake is None or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        from wan2.lightning.distributed import clip_grad_norm

        # student and fake denoiser each by their own norm: one's large gradient must not shrink the other's
        for m in (self.transformer, self.fake):
            clip_grad_norm(m.parameters(), gradient_clip_val)

    def sharded_modules(self) -> list[torch.nn.Module]:
        """The student, and the teacher / real / fake copies (frozen ones too: each is a whole transformer)."""
        return super().sharded_modules() + [m for m in (self.teacher, self.real, self.fake) if m is not None]

    @torch.no_grad()
    def generate(self, captions, meta0, seed):
        """Validation samples at the current student's step count, without guidance (after the cfg phase)."""
        from wan2.sampling import sample_videos

        phase = self.phase_at(max(0, self.global_step - 1))
        guided = phase.kind == "cfg" and self.global_step == 0
        return sample_videos(
            self.backbone,
            captions,
            num_frames=meta0["num_frames"],
            height=meta0["height"],
            width=meta0["width"],
            num_inference_steps=phase.student_steps,
            guidance_scale=self.hparams.guidance_scale if guided else 1.0,
            seed=seed,
        )

    def export(self, out_dir, datamodule=None) -> dict:
        """The student as a full pipeline whose wan2.json says: the step count reached, guidance 1.0."""
        reached = self.phase_at(max(0, self.global_step - 1))
        guided = reached.kind == "cfg" and self.global_step == 0
        self.sample_cfg = {
            **self.sample_cfg,
            "num_inference_steps": reached.student_steps,
            "guidance_scale": self.hparams.guidance_scale if guided else 1.0,
        }
        return super().export(out_dir, datamodule)
