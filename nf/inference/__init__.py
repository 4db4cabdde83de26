"""Using trained or imported models: self-describing workdirs (card + checkpoint), evaluation,
prediction and export.

    from nf.inference import load_model, save_model, ModelCard, Preprocessing
    model, card = load_model("runs/quickstart")           # EMA weights of the latest step
    logits = model(images, train=False)
"""

from nf.data.card import CARD_FILE, ModelCard, card_from_config
from nf.data.preprocessing import ModelCardError, Preprocessing, nf_preprocessing
from nf.inference.checkpoint import WEIGHTS, load_model, model_trees, read_card, save_model, state_dir

__all__ = [
    "CARD_FILE",
    "WEIGHTS",
    "ModelCard",
    "ModelCardError",
    "Preprocessing",
    "card_from_config",
    "load_model",
    "model_trees",
    "nf_preprocessing",
    "read_card",
    "save_model",
    "state_dir",
]
