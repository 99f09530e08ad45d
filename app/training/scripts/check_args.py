# A training config checked by LLaMA-Factory's own argument parser, as `llamafactory-cli train` reads it:
#   check_args.py CONFIG_JSON
# Answers {"ok": true, "stage", "finetuning_type", "template", "resume_from_checkpoint"} or
# {"ok": false, "error": "<the parser's own message>"}.
import json
import sys

if "answer" not in globals():  # run as common.py + this file; the import is for reading it alone
    from common import answer, say  # noqa: F401


def main():
    config = json.loads(sys.argv[2])
    try:
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.create(config))  # what `llamafactory-cli train x.yaml` reads
        from llamafactory.hparams import get_train_args

        model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    except Exception as exc:  # noqa: BLE001 - the parser's refusal is the answer
        message = str(exc).strip().splitlines()
        answer({"ok": False, "error": (message[-1] if message else type(exc).__name__)[:600]})
        return
    except SystemExit as exc:  # argparse exits on some errors
        answer({"ok": False, "error": f"LLaMA-Factory's parser stopped ({exc.code})."})
        return
    answer({"ok": True, "stage": finetuning_args.stage, "finetuning_type": finetuning_args.finetuning_type,
            "template": data_args.template, "resume_from_checkpoint": training_args.resume_from_checkpoint})


main()
