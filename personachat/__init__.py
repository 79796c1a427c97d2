"""personachat: persona-conditioned chatbots on GPT-2 (TransferTransfo).

Drop-in for ``simpletransformers.conv_ai``::

    from personachat import ConvAIModel
    model = ConvAIModel("gpt2", "gpt2", use_cuda=False)
    model.train_model("my_dialogs.json")
    model.interact(personality=["i like cats .", "i work as a nurse ."])
"""

from .args import ConvAIArgs
from .conv_ai_model import ConvAIModel

__all__ = ["ConvAIModel", "ConvAIArgs"]
__version__ = "0.1.0"
