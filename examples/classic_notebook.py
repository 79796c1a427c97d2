"""The classic simpletransformers ConvAI notebook, with only the import changed.

    python examples/classic_notebook.py                 # real GPT-2 + Persona-Chat (online, GPU)
    python examples/classic_notebook.py outputs/quick   # offline: the model the quick config trained

On a machine without a GPU, use_cuda falls back to False.
"""

import sys

import torch

from personachat import ConvAIModel  # was: from simpletransformers.conv_ai import ConvAIModel

model_name = sys.argv[1] if len(sys.argv) > 1 else "gpt2"
offline = model_name != "gpt2"

train_args = {
    "num_train_epochs": 5,
    "train_batch_size": 6,
    "overwrite_output_dir": True,
    "output_dir": "outputs/notebook",
    "best_model_dir": "outputs/notebook/best_model",
    "save_model_every_epoch": False,
}
if offline:  # a short run on the bundled persona dialogs instead of the full Persona-Chat
    train_args.update(num_train_epochs=1, learning_rate=1e-3, max_train_examples=200)

model = ConvAIModel("gpt2", model_name, use_cuda=torch.cuda.is_available(), args=train_args)
model.train_model("data/persona_train.json" if offline else None)
print(model.eval_model("data/persona_valid.json" if offline else None))
model.interact(personality=["i work for greenpeace .", "i love nature ."])
