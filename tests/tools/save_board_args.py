"""What LLaMA Board's "Save arguments" button writes, written by LLaMA Board's own code (run in the data dir,
its working directory): llamaboard_config/NAME with the UI's values, and its user config remembering MODEL_PATH
for MODEL_NAME (as choosing a model path in the UI does).

Run with the tools venv:  python save_board_args.py DATA_DIR NAME MODEL_NAME MODEL_PATH DATASET TEMPLATE STEPS
"""

import json
import os
import sys


def main() -> None:
    data_dir, name, model_name, model_path, dataset, template, steps = sys.argv[1:8]
    os.chdir(data_dir)
    import gradio as gr
    from llamafactory.webui.common import save_config
    from llamafactory.webui.components import create_top, create_train_tab
    from llamafactory.webui.engine import Engine

    engine = Engine(demo_mode=False, pure_chat=False)
    with gr.Blocks():
        engine.manager.add_elems("top", create_top())
        engine.manager.add_elems("train", create_train_tab(engine))
    get = engine.manager.get_elem_by_id
    data = {elem: getattr(elem, "value", None) for _, elem in engine.manager.get_elem_iter()}
    data.update({get("top.lang"): "en", get("top.model_name"): model_name, get("top.model_path"): model_path,
                 get("top.template"): template, get("top.finetuning_type"): "lora",
                 get("train.dataset_dir"): "data", get("train.dataset"): [dataset],
                 get("train.max_samples"): "1000", get("train.cutoff_len"): 64, get("train.batch_size"): 2,
                 get("train.compute_type"): "fp32", get("train.gradient_accumulation_steps"): 1,
                 get("train.output_dir"): "unused", get("train.config_path"): name,
                 get("train.extra_args"): json.dumps({"max_steps": int(steps), "report_to": "none"})})
    save_config("en", model_name=model_name, model_path=model_path)
    engine.runner.save_args(data)
    saved = os.path.join("llamaboard_config", name)
    assert os.path.isfile(saved), f"LLaMA Board wrote no {saved}"
    print(json.dumps({"saved": os.path.abspath(saved)}))


if __name__ == "__main__":
    main()
