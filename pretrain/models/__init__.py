"""Encoders and the models made from them: building a timm encoder, the exported timm-native
folder, its model card and provenance, finetuned classifiers, and the MLflow Model Registry.
``pretrain.hub`` is the public door for loading; these modules are what it stands on."""
