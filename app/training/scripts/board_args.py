# LLaMA Board's saved arguments (its "Save arguments" file, llamaboard_config/NAME, UI element values) turned into
# the training arguments LLaMA Board itself would launch with, by LLaMA Board's own code:
#   board_args.py CONFIG_PATH MODEL_PATH OUTPUT_NAME
# MODEL_PATH "" = what LLaMA Board picks for the saved model name (its user config, else the hub id). Answers
# {"ok": true, "args": {...}, "ignored": [element ids this LLaMA Board does not have]} or {"ok": false, "error"}.
import os
import sys

if "answer" not in globals():  # run as common.py + this file; the import is for reading it alone
    from common import answer, say  # noqa: F401


def main():
    path, model_path, output_name = sys.argv[2], sys.argv[3], sys.argv[4]
    from llamafactory.webui.common import get_model_path, load_args

    saved = load_args(path)
    if not isinstance(saved, dict) or not any(str(k).startswith(("top.", "train.")) for k in saved):
        answer({"ok": False, "error": f"{os.path.basename(path)} is not a LLaMA Board arguments file."})
        return
    import gradio as gr
    from llamafactory.webui.components import create_top, create_train_tab
    from llamafactory.webui.engine import Engine

    engine = Engine(demo_mode=False, pure_chat=False)
    with gr.Blocks():
        engine.manager.add_elems("top", create_top())
        engine.manager.add_elems("train", create_train_tab(engine))
    data = {elem: getattr(elem, "value", None) for _, elem in engine.manager.get_elem_iter()}
    ignored = []
    for elem_id, value in saved.items():
        try:
            data[engine.manager.get_elem_by_id(elem_id)] = value
        except KeyError:  # another tab's element, or one of another LLaMA Board version
            ignored.append(elem_id)
    get = engine.manager.get_elem_by_id
    data[get("top.model_path")] = model_path or get_model_path(saved.get("top.model_name") or "")
    data[get("train.output_dir")] = output_name
    try:
        args = engine.runner._parse_train_args(data)
    except Exception as exc:  # noqa: BLE001 - LLaMA Board's own refusal is the answer
        answer({"ok": False, "error": f"LLaMA Board cannot build arguments from it: {exc}"})
        return
    answer({"ok": True, "args": args, "ignored": ignored})


main()
