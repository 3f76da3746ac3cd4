"""One-off: HF BERT folder (or narlm-trainer MODEL_DIR) -> t5x-readable checkpoint.

usage: python hf_bert_to_t5x.py MODEL_GIN SOURCE OUT_DIR
  MODEL_GIN  the narlm model gin of the t5x run (e.g. narlm/gin/models/minilm_l6.gin)
  SOURCE     a Hugging Face BERT folder (config.json + model.safetensors), or a
             narlm-trainer MODEL_DIR (has checkpoints/)
  OUT_DIR    writes OUT_DIR/checkpoint_0/state = {'target': params}
Needs narlm (+ jax, gin, orbax); t5x is not imported.
"""
import os
import sys

import gin
import jax
import orbax.checkpoint as ocp

from narlm import models
from narlm import train as narlm_train

model_gin, source, out_dir = sys.argv[1:4]
gin.parse_config_files_and_bindings([model_gin], ["OPTIMIZER = None"])
model = gin.get_configurable(models.NagBertModel)()
if os.path.isdir(os.path.join(source, "checkpoints")):
  params = narlm_train.restore_params(source)          # narlm trainer checkpoint
else:
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (1, 8)})["params"]
  params = model.warm_start_from_hf_bert(jax.device_get(params), source)  # HF BERT
with ocp.CheckpointManager(os.path.abspath(out_dir), item_names=("state",),
                           options=ocp.CheckpointManagerOptions(
                               step_prefix="checkpoint", create=True)) as manager:
  manager.save(0, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"target": params})))
  manager.wait_until_finished()
print(os.path.join(os.path.abspath(out_dir), "checkpoint_0"))
