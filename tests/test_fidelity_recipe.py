"""Recipe values docs/fidelity.md marks "same": the paper's pretraining settings (arXiv 2208.10442 §2.2-2.3:
masking 15% / 50% / 40% block-wise, AdamW (0.9, 0.98), eps 1e-6, peak lr 1e-3, 10k warmup steps then cosine,
weight decay 0.05, drop path 0.1) and the released fine-tuning flags of run_beit3_finetuning.py that the
fidelity table names (timm Mixup: --mixup_prob 1.0, --mixup_switch_prob 0.5, --mixup_mode batch, smoothing 0.1;
--clip_grad None; optimiser defaults (0.9, 0.999), 1e-8)."""

from beit3core.tasks import settings_for
from beit3train.finetune import _mixup
from beit3train.pretrain import parse_args

PRETRAIN_REQUIRED = ["--data", "d", "--text-tokenizer", "t", "--visual-tokens", "v", "--out", "o", "--arch", "a"]


def test_pretraining_defaults_are_the_papers():
    cfg = parse_args(PRETRAIN_REQUIRED + ["--steps", "1000000"])
    assert (cfg.text_mask_ratio, cfg.pair_text_mask_ratio, cfg.image_mask_ratio) == (0.15, 0.5, 0.4)
    assert (cfg.betas, cfg.eps, cfg.lr, cfg.weight_decay, cfg.drop_path) == ((0.9, 0.98), 1e-6, 1e-3, 0.05, 0.1)
    assert cfg.warmup_steps == 10000  # 10k of the paper's 1M steps


def test_classification_mixup_is_timm_with_the_released_flags():
    mixup = _mixup(settings_for("classification"), num_classes=10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob, mixup.mode,
            mixup.label_smoothing) == (0.8, 1.0, 1.0, 0.5, "batch", 0.1)


def test_fine_tuning_optimiser_defaults_and_no_clipping_are_the_released_ones():
    for task in ("classification", "nlvr2", "retrieval", "captioning"):
        s = settings_for(task)
        assert (s.betas, s.eps, s.clip_grad, s.min_lr) == ((0.9, 0.999), 1e-8, 0.0, 1e-6), task
    assert settings_for("vqa").betas == (0.9, 0.98)  # get_started_for_vqav2.md --opt_betas 0.9 0.98
