"""Fine-tune on your own dialogs: a Persona-Chat JSON file (see data/minimal_train.json).

python examples/custom_dialogs.py MODEL_DIR_OR_HUB_ID my_dialogs.json
"""

import sys

from personachat import ConvAIModel

model_name, train_file = sys.argv[1], sys.argv[2]
model = ConvAIModel(
    "gpt2",
    model_name,
    use_cuda=False,
    args={
        "num_train_epochs": 2,
        "output_dir": "outputs/custom",
        "overwrite_output_dir": True,
        "save_model_every_epoch": False,
    },
)
model.train_model(train_file)
reply, history = model.interact_single(
    "hi , what do you do for work ?", [], personality=["i work as a nurse .", "i have a cat ."]
)
print(reply)
