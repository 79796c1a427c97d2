"""personachat: persona-conditioned chatbots on GPT-2 (TransferTransfo).

Drop-in for ``simpletransformers.conv_ai``::

    from personachat import ConvAIModel
    model = ConvAIModel("gpt2", "gpt2", use_cuda=False)
    model.train_model("my_dialogs.json")
    model.interact(personality=["i like cats .", "i work as a nurse ."])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.args import ConvAIArgs

if TYPE_CHECKING:
    from personachat.conv_ai_model import ConvAIModel

__all__ = ["ConvAIModel", "ConvAIArgs"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import the model facade (torch, transformers) on first use only, so commands that
    never touch a model (``convert``, ``validate``) start in a fraction of a second."""
    if name == "ConvAIModel":
        from personachat.conv_ai_model import ConvAIModel

        return ConvAIModel
    raise AttributeError(f"module 'personachat' has no attribute {name!r}")
