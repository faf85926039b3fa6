"""The public door: pull a pretrained encoder and load it as a plain timm model, without
unpickling anything.

    from pretrain.hub import load_encoder
    encoder = load_encoder("models:/invariant-encoder@latest")

``load_encoder`` takes a folder or an MLflow URI (``models:/NAME@ALIAS``, ``models:/NAME/3``,
``runs:/...``) and returns a timm model in eval mode; ``pull`` copies the verified files into a
folder (``timm.create_model("local-dir:DIR", pretrained=True)`` opens it); ``load_model_dir``
loads an exported folder (encoder or finetuned classifier). What is checked, and against what,
is described in ``pretrain.models.loading``, which implements these; this module only names them
so that user code has one stable import path.
"""

from pretrain.models.loading import load_encoder, load_model_dir, pull

__all__ = ["load_encoder", "load_model_dir", "pull"]
